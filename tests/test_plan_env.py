"""The planning environment of a login node (envs/plan.txt, `make plan-env`): Snakemake, the SLURM
plugin, PyYAML and jsonschema, no torch. Planning must import nothing else; a run started in it stops
before its first job with one line."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from conftest import REPO, snakemake

PLAN_REQUIREMENTS = REPO / "envs" / "plan.txt"


def plan_packages() -> list[str]:
    return [line.strip() for line in PLAN_REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names: list[str]) -> set[str]:
    """The distributions these need, their dependencies included (extras left out), as far as they are
    installed here: the SLURM plugin is an extra (`.[slurm]`) that `make install` leaves out, so its own
    dependencies are only followed where it is installed."""
    seen: set[str] = set()
    todo = [normalise(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for requirement in requirements:
            req = Requirement(requirement)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalise(req.name))
    return seen


def test_the_plan_requirements_are_pinned_by_the_constraints():
    pins = {normalise(line.split("==")[0]) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    assert set(map(normalise, plan_packages())) == {"snakemake", "snakemake-executor-plugin-slurm", "pyyaml", "jsonschema"}
    missing = closure(plan_packages()) - pins
    assert not missing, f"installed without a pin: {sorted(missing)}"
    assert "torch" not in closure(plan_packages())


BLOCKER = '''
import sys
BLOCKED = set({blocked!r})

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not in the planning environment", name=name)
        return None

sys.meta_path.insert(0, Blocker())
'''


@pytest.mark.parametrize("args", [
    ["--configfile", str(REPO / "config.yaml")],
    # (the dry-run executor: the plugin is an extra, `.[slurm]`, that `make install` leaves out)
    ["--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"), "--executor", "dryrun",
     "--configfile", str(REPO / "configs" / "paper-ucf101.yaml")],
], ids=["default config", "paper config, SLURM profile"])  # fmt: skip
def test_planning_imports_only_what_the_plan_environment_installs(tmp_path, args):
    """Every installed package outside the plan environment (torch, numpy's users, h5py, scikit-learn,
    matplotlib, ...) is made unimportable; the workflow must still be planned."""
    allowed = closure(plan_packages())
    blocked = set()
    for module, dists in md.packages_distributions().items():
        if module != "vididi" and not {normalise(d) for d in dists} & allowed:
            blocked.add(module)
    assert {"torch", "h5py", "sklearn", "matplotlib", "tqdm"} <= blocked
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked)))
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    done = snakemake(workdir, "-n", *args, extra_env={"PYTHONPATH": path})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    probe = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    assert "not in the planning environment" in probe.stderr  # the blocker does block


@pytest.mark.slow
def test_make_plan_env_plans_and_refuses_to_run_jobs(tmp_path):
    """The real thing: `make plan-env` (a venv from envs/plan.txt and constraints.txt, from the package
    index), then a dry run of the paper config under the SLURM profile, then a run without a container."""
    venv = tmp_path / "plan-venv"
    made = subprocess.run(["make", "-C", str(REPO), "plan-env", f"PLAN_VENV={venv}", f"PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if made.returncode != 0 and re.search(r"No matching distribution|Could not find a version|NewConnectionError", made.stderr):
        pytest.skip(f"no package index reachable: {made.stderr.strip().splitlines()[-1]}")
    assert made.returncode == 0, made.stderr[-3000:]
    installed = {normalise(p.name.split("-")[0]) for p in (venv / "lib").glob("python*/site-packages/*.dist-info")}
    assert "torch" not in installed and "h5py" not in installed and "snakemake" in installed

    tool = [str(venv / "bin" / "snakemake"), "-s", str(REPO / "workflow" / "Snakefile")]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    work = tmp_path / "work"
    work.mkdir()
    plan = subprocess.run([*tool, "--directory", str(work), "-n", "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
                           "--configfile", str(REPO / "configs" / "paper-ucf101.yaml")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert plan.returncode == 0, (plan.stdout + plan.stderr)[-3000:]
    assert re.search(r"^total\s+\d+", plan.stdout + plan.stderr, flags=re.M)

    (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
    run = subprocess.run([*tool, "--directory", str(work), "--cores", "1"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"vididi: {venv / 'bin' / 'python'}") and "has no torch (a planning environment, make plan-env)" in last, last
    assert not list(work.glob("data/raw/*")), "no job may have run"
