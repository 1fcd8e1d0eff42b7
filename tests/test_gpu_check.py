"""benchmarks/gpu_check.sh runs end to end (`--cpu-smoke`: tiny sizes on the CPU, jsonschema hidden as
on a bare GPU host) and writes its one table with every part run and none failed."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert "modules missing: jsonschema" in table  # the bare-host path was the one exercised
    for part in ("train", "data", "probe", "retrieval"):
        assert f"| {part} | part | ok (" in table, table
    assert "FAILED" not in table and "TIMED OUT" not in table
    assert "| ranks on cpu = ranks on the CPU (2000 gallery) | identical | identical | PASS |" in table
    for key in ("bare step", "trainer step", "raw shards: loader path", "jpeg shards: loader path", "torch probe"):
        assert key in table
