"""What re-runs when (docs/design.md "What re-runs when"), with real Snakemake runs of a micro pipeline.

Nothing spurious: on a finished run, another interpreter path, another venv path, the image, a
changed GPU count or a raised bad-video tolerance plan no job; a forced re-extraction that rewrites
identical shards re-trains nothing; a deleted shard or features file is rebuilt by a plain
`snakemake`, without re-training. Nothing stale: an output made by hand with other settings is never
taken for current (the next job that reads it stops with one line naming it and what differs), and a
changed thread count re-trains.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, job_counts, snakemake, tool_env

MICRO_RUN = {
    "threads": 1,
    "datasets": {"synthetic": {
        "source": "synthetic",
        "synthetic": {"classes": ["LinearMotion", "Pulsing"], "groups": 3, "clips_per_group": 2, "test_groups": 1,
                      "val_groups": 0, "frames": 16, "size": 32, "fps": 8, "untrimmed": {"train": 0, "test": 0}},
        "extract": {"short_side": 32, "shard_size": 5},
        "clips": {"frames": 4, "stride": 2, "size": 28, "eval_clips": 2, "sigma_clips": 8}}},
    "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": "vididi", "backbone": "small3d", "seed": 0}],
    "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1, "num_workers": 0},
    "backbones": {"small3d": {"widths": [4, 8, 8, 16]}},
    "frameworks": {"vicreg": {"projector": [32, 32, 32]}},
    "evaluation": {"bn_recalibration_clips": 4, "batch_size": 4, "num_workers": 0},
}  # fmt: skip
RUN = "results/synthetic/runs/vicreg-vididi-small3d-s0"
FINAL = f"{RUN}/checkpoints/final.pt"
SHARDS = "data/shards/synthetic"


def plan(workdir: Path, *args: str, snakemake_cmd: list[str] | None = None, env: dict | None = None) -> dict[str, int]:
    """The jobs a dry run plans (rule -> count); {} when there is nothing to be done."""
    if snakemake_cmd:
        command = [*snakemake_cmd, "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir), "-n", *args]
        done = subprocess.run(command, cwd=workdir, env=tool_env(**(env or {})), capture_output=True, text=True, timeout=120)
    else:
        done = snakemake(workdir, "-n", *args, extra_env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return {} if "Nothing to be done" in output else job_counts(output)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A working directory whose micro pipeline (data, one pretraining, evaluation, figures) has run."""
    workdir = tmp_path_factory.mktemp("finished")
    (workdir / "config.yaml").write_text(yaml.safe_dump(MICRO_RUN))
    done = snakemake(workdir, "--cores", "2", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert plan(workdir) == {}
    return workdir


@pytest.fixture
def copy_of(finished, tmp_path) -> Path:
    """A copy of the finished working directory (dates kept) that a test may change."""
    workdir = tmp_path / "work"
    shutil.copytree(finished, workdir, symlinks=True)
    return workdir


def fake_apptainer(workdir: Path) -> str:
    fake = workdir / "fakebin" / "apptainer"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    fake.chmod(0o755)
    (workdir / "vididi.sif").write_bytes(b"")
    return f"{fake.parent}{os.pathsep}{os.environ['PATH']}"


# --------------------------------------------------------------------------------------------------
# Nothing spurious


@pytest.mark.slow
def test_another_interpreter_path_plans_nothing(finished, tmp_path):
    """`python -m snakemake`, and the venv reached through another path (a symlink), run the same jobs
    (before 0.2.0 the interpreter was a rule parameter and every job re-ran)."""
    assert plan(finished, snakemake_cmd=[str(BIN / "python"), "-m", "snakemake"]) == {}
    elsewhere = tmp_path / "venv-elsewhere"
    elsewhere.symlink_to(BIN.parent)
    assert plan(finished, snakemake_cmd=[str(elsewhere / "bin" / "python"), "-m", "snakemake"]) == {}


@pytest.mark.slow
def test_the_image_after_a_host_run_plans_nothing(finished):
    """--use-singularity (a stand-in `apptainer`) after a host run, and back (the software-env trigger
    is off in the profile; the commands carry no interpreter)."""
    env = {"PATH": fake_apptainer(finished)}
    assert plan(finished, "--use-singularity", env=env) == {}
    assert plan(finished, env=env) == {}


@pytest.mark.slow
@pytest.mark.parametrize("override", [
    "pretrain={gpus: 2}",  # the GPU count does not change the weights
    "datasets={synthetic: {extract: {max_bad_fraction: 0.5}}}",  # a tolerance, not a setting of the shards
    "pretrain={log_every: 2, checkpoint_every: 2, num_workers: 1}",
])  # fmt: skip
def test_settings_that_do_not_change_results_plan_nothing(finished, override):
    assert plan(finished, "--config", override) == {}


@pytest.mark.slow
def test_a_forced_re_extraction_of_identical_shards_retrains_nothing(copy_of):
    final = copy_of / FINAL
    before = (final.stat().st_mtime_ns, final.read_bytes())
    shards = {p.name: p.read_bytes() for p in (copy_of / SHARDS).glob("shard-*.h5")}
    done = snakemake(copy_of, "--cores", "2", "--forcerun", "extract", timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ran = set(re.findall(r"(?:rule|checkpoint) (\w+):", done.stdout + done.stderr))
    assert ran <= {"extract", "index", "all"}, ran
    assert (final.stat().st_mtime_ns, final.read_bytes()) == before
    assert {p.name: p.read_bytes() for p in (copy_of / SHARDS).glob("shard-*.h5")} == shards  # bit-identical rebuild
    assert plan(copy_of) == {}


@pytest.mark.slow
def test_a_deleted_shard_and_a_deleted_features_file_are_rebuilt_without_retraining(copy_of):
    final = copy_of / FINAL
    before = final.stat().st_mtime_ns
    shard = copy_of / SHARDS / "shard-00001.h5"
    features = copy_of / RUN / "features" / "synthetic.h5"
    content = shard.read_bytes()
    shard.unlink()
    features.unlink()
    planned = plan(copy_of)
    assert planned.get("extract") == 1 and planned.get("features") == 1 and "pretrain" not in planned, planned
    done = snakemake(copy_of, "--cores", "2", timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert shard.read_bytes() == content and features.is_file() and final.stat().st_mtime_ns == before
    assert plan(copy_of) == {}


# --------------------------------------------------------------------------------------------------
# Nothing stale


@pytest.mark.slow
def test_a_stage_run_by_hand_with_other_settings_is_not_taken_for_current(copy_of):
    """`vididi pretrain --set pretrain.steps=1` replaces final.pt: Snakemake re-runs what reads it, and
    that stops with one line naming the file and the setting (before 0.2.0 the summary reported the
    1-step model under the 2-step config, then `snakemake -n` said "Nothing to be done")."""
    env = tool_env(PATH=f"{REPO / 'workflow' / 'bin'}{os.pathsep}{os.environ['PATH']}", VIDIDI_PYTHON=sys.executable)
    hand = subprocess.run(["vididi", "pretrain", "--config", "config.yaml", "--dataset", "synthetic", "--run", "vicreg-vididi-small3d-s0",
                           "--set", "pretrain.steps=1"], cwd=copy_of, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert hand.returncode == 0, hand.stderr[-2000:]
    done = snakemake(copy_of, "--cores", "2", timeout=600)
    assert done.returncode != 0
    log = (copy_of / RUN / "logs" / "features-synthetic.log").read_text().strip().splitlines()
    assert log[-1] == (f"vididi features: error: {FINAL} was made with other settings than this config's "
                       f"(pretrain.steps: 1 → 2): remake it with `snakemake --forcerun {FINAL}`, or delete it")  # fmt: skip
    # what the line says to do remakes it (the hand run's checkpoint, other settings, moved aside)
    fixed = snakemake(copy_of, "--cores", "2", "--forcerun", FINAL, timeout=900)
    assert fixed.returncode == 0, (fixed.stdout + fixed.stderr)[-3000:]
    assert list((copy_of / RUN).glob("checkpoints.stale-*")) and plan(copy_of) == {}


@pytest.mark.slow
def test_another_thread_count_retrains(finished):
    """On a CPU the thread count changes the weights' rounding: it is part of the settings."""
    planned = plan(finished, "--config", "threads=2")
    assert planned.get("pretrain") == 1 and "extract" not in planned and "index" not in planned, planned
