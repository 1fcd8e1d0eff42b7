"""Static checks of the code base: pyflakes / pycodestyle / import order / bugbear rules (ruff, settings
in pyproject.toml)."""

from __future__ import annotations

import subprocess

from conftest import BIN, REPO


def test_ruff_reports_nothing():
    done = subprocess.run([str(BIN / "ruff"), "check", "vididi", "tests", "benchmarks"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
