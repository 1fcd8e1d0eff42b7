"""The Snakemake workflow: dry run on the default config, lint, a real run of the data stage, config errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, job_counts, snakemake
from vididi.config import load_config

MICRO = {  # 10 videos in 2 shards: the smallest dataset that still has train/test, untrimmed videos and >1 shard
    "threads": 2,
    "datasets": {
        "synthetic": {
            "source": "synthetic",
            "synthetic": {
                "classes": ["LinearMotion", "Pulsing"], "groups": 2, "clips_per_group": 2, "test_groups": 1, "val_groups": 0,
                "frames": 16, "size": 32, "fps": 8,
                "untrimmed": {"train": 1, "test": 1, "frames": 32, "segments": [1, 1], "segment_frames": [8, 10], "min_gap": 2},
            },
            "extract": {"short_side": 32, "shard_size": 5},
            "clips": {"frames": 4, "stride": 2, "size": 28, "eval_clips": 2, "sigma_clips": 8},
        }
    },
}  # fmt: skip
DATA_TARGETS = [f"data/shards/synthetic/{name}" for name in ("index.tsv", "dataset.json", "bad_videos.tsv")]




def stderr_lines(done: subprocess.CompletedProcess) -> list[str]:
    """Non-empty stderr lines, without Snakemake's notice that it read the workflow's default profile."""
    return [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("Using workflow specific profile")]




def test_dry_run_on_the_default_config(tmp_path):
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    counts = job_counts(output)
    assert counts.get("generate") == 1 and counts.get("manifest") == 1 and counts.get("index") == 1, counts
    assert counts.get("pretrain") == 2, counts  # the config's two runs
    # every rule is a thin call of the CLI (workflow/bin/vididi), which reads the validated config of
    # this invocation through $VIDIDI_CONFIG; neither the interpreter nor a path of this machine is on
    # the command line (they would re-run everything when they change: common.smk)
    commands = re.findall(r"Shell command: (.*)", output)
    assert commands and all(c.startswith("vididi ") and str(BIN) not in c and "python" not in c for c in commands if c != "None"), commands
    stages = set(re.findall(r"Shell command: vididi (\w+) --dataset", output))
    assert {"generate", "manifest", "index", "pretrain"} <= stages, stages
    resolved = json.loads((tmp_path / "results" / "config.resolved.yaml").read_text())
    assert resolved == load_config([REPO / "config.yaml"])


def test_out_of_context_datasets_reuse_the_data_of_their_in_context_twin(tmp_path):
    """configs/scene-bias.yaml: each sbNN_ooc dataset differs from sbNN only in its split, so the data
    stage runs once per pair (config.data_owner) and the _ooc features read sbNN's shards."""
    done = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config.yaml"), str(REPO / "configs" / "scene-bias.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    counts = job_counts(done.stdout + done.stderr)
    assert counts.get("generate") == counts.get("manifest") == counts.get("index") == 3, counts
    data_stages = re.findall(r"vididi (?:generate|manifest|index) --dataset (\w+)", done.stdout + done.stderr)
    assert sorted(data_stages) == ["sb0"] * 3 + ["sb50"] * 3 + ["sb90"] * 3, data_stages


def test_workflow_is_planned_without_torch(tmp_path):
    """vididi.config promises the Snakefile needs only PyYAML + jsonschema (a Snakemake host without the
    training stack, e.g. with --use-singularity): planning the DAG must not import torch."""
    blocker = tmp_path / "blocker" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is not installed on this host')\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env_path = f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    done = snakemake(workdir, "-n", "--configfile", str(REPO / "config.yaml"), extra_env={"PYTHONPATH": env_path})
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]


def test_lint_reports_nothing(tmp_path):
    done = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"))
    output = done.stdout + done.stderr
    complaints = [line.strip() for line in output.splitlines() if line.startswith("Lints for")]
    findings = [line.strip() for line in output.splitlines() if line.lstrip().startswith("* ")]
    assert complaints == [] and done.returncode == 0, "\n".join(f"{c} {f}" for c, f in zip(complaints, findings))


def test_wrong_config_key_stops_snakemake_with_one_line(tmp_path):
    wrong = {"datasets": {"synthetic": {"source": "synthetic", "extract": {"short_sid": 64}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(wrong))
    done = snakemake(tmp_path, "-n")
    assert done.returncode != 0
    assert stderr_lines(done) == [
        "vididi: config: datasets.synthetic.extract: unknown key 'short_sid' "
        "(allowed: encoding, fps, jpeg_quality, max_bad_fraction, shard_size, short_side)"
    ], done.stderr
    assert not (tmp_path / "results").exists()  # nothing written for an invalid config


def test_wrong_value_on_the_command_line_is_caught_too(tmp_path):
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), "--config", "threads=0")
    assert done.returncode != 0
    assert stderr_lines(done) == ["vididi: config: threads: 0 is less than the minimum of 1"]


@pytest.mark.slow
def test_real_run_of_the_data_stage(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(MICRO))
    # the venv's snakemake called by path, its bin/ NOT on PATH (no `source .venv/bin/activate`): the
    # rules must still find the project's CLI
    bare_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != BIN)
    done = snakemake(tmp_path, "--cores", "2", *DATA_TARGETS, timeout=600, extra_env={"PATH": bare_path})
    assert done.returncode == 0, done.stderr[-4000:]
    shards = tmp_path / "data" / "shards" / "synthetic"
    assert sorted(p.name for p in shards.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    header, *rows = (shards / "index.tsv").read_text().splitlines()
    assert header.split("\t")[0] == "video_id" and len(rows) == 10  # 2 classes x 2 groups x 2 clips + 2 untrimmed
    info = json.loads((shards / "dataset.json").read_text())
    assert info["classes"] == ["LinearMotion", "Pulsing"] and info["n_bad"] == 0
    assert len(info["stats"]["1"]["sigma"]) == 3 and all(s > 0 for s in info["stats"]["1"]["sigma"])
    assert (shards / "bad_videos.tsv").read_text() == "video_id\tpath\treason\n"
    logs = tmp_path / "data" / "logs" / "synthetic"
    expected_logs = {"generate.log", "manifest.log", "extract-00000.log", "extract-00001.log", "index.log"}
    assert {p.name for p in logs.iterdir()} >= expected_logs
    # nothing hidden left behind by the atomic writes
    assert not [p for p in (tmp_path / "data").rglob(".*tmp*")]

    again = snakemake(tmp_path, "-n", *DATA_TARGETS)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # another results_dir (configs/validation.yaml, configs/synthetic-full.yaml) shares the data stage
    elsewhere = snakemake(tmp_path, "-n", *DATA_TARGETS, "--config", "results_dir=results/other")
    assert elsewhere.returncode == 0 and "Nothing to be done" in elsewhere.stdout + elsewhere.stderr, elsewhere.stdout[-3000:]

    # a changed extraction setting re-extracts, but must not regenerate (or re-download) the raw videos
    (tmp_path / "jpeg80.yaml").write_text(yaml.safe_dump({"datasets": {"synthetic": {"extract": {"jpeg_quality": 80}}}}))
    changed = snakemake(tmp_path, "-n", *DATA_TARGETS, "--configfile", "config.yaml", "jpeg80.yaml")
    assert changed.returncode == 0, changed.stderr[-3000:]
    planned = job_counts(changed.stdout + changed.stderr)
    assert planned.get("manifest") == 1, planned
    assert "generate" not in planned, f"a jpeg_quality change regenerates the raw videos: {planned}"

    # a user folder with too many broken videos: the index job fails, and the list of bad videos that
    # its message names is still there to read afterwards (Snakemake deletes a failed job's outputs)
    folder = tmp_path / "mine"
    shutil.copytree(tmp_path / "data" / "raw" / "synthetic", folder, ignore=shutil.ignore_patterns("untrimmed"))
    broken = sorted(folder.glob("*/*.mp4"))[:3]
    for path in broken:
        path.write_bytes(b"")
    mine = {"datasets": {"mine": {"source": "folder", "root": str(folder), "extract": {"short_side": 32, "shard_size": 5}}}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    targets = [f"data/shards/mine/{name}" for name in ("index.tsv", "dataset.json", "bad_videos.tsv")]
    failed = snakemake(tmp_path, "--cores", "2", *targets, "--configfile", "config.yaml", "mine.yaml", timeout=600)
    assert failed.returncode != 0
    log = (tmp_path / "data" / "logs" / "mine" / "index.log").read_text()
    message = next(line for line in log.splitlines() if "max_bad_fraction" in line)
    assert f"3 of {len(list(folder.glob('*/*.mp4')))} videos" in message
    report = Path(message.rsplit("see ", 1)[-1])
    report = report if report.is_absolute() else tmp_path / report
    assert sorted(line.split("\t")[1] for line in report.read_text().splitlines()[1:]) == sorted(
        p.relative_to(folder).as_posix() for p in broken)


@pytest.mark.slow
def test_a_budget_restated_in_epochs_does_not_train_again(tmp_path):
    """pretrain.epochs is resolved to steps with the training videos of the manifest (a checkpoint):
    before the manifest exists the run is planned anyway; once trained with `steps`, the same budget
    in epochs changes no settings hash, and another budget re-trains."""
    from vididi import layout as L
    from vididi.config import find_run

    tiny = {**MICRO, "runs": [{"dataset": "synthetic", "framework": "vicreg", "variant": "base", "backbone": "small3d"}],
            "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1, "num_workers": 0},
            "backbones": {"small3d": {"widths": [4, 4, 8, 8]}}, "frameworks": {"vicreg": {"projector": [16, 16]}}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny))
    config = load_config([tmp_path / "config.yaml"])
    final = str(L.final_checkpoint(config, find_run(config, "synthetic", "vicreg-base-small3d-s0")))
    in_epochs = ["--config", "pretrain={steps: null, epochs: 2}"]  # 2 classes x 1 training group x 2 clips = 4 videos: 2 steps

    planned = snakemake(tmp_path, "-n", final, *in_epochs)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert job_counts(planned.stdout + planned.stderr).get("pretrain") == 1
    trained = snakemake(tmp_path, "--cores", "2", final, timeout=600)
    assert trained.returncode == 0, trained.stderr[-4000:]
    info = json.loads((tmp_path / L.train_info(config, find_run(config, "synthetic", "vicreg-base-small3d-s0"))).read_text())
    assert (info["steps"], info["epochs"]) == (2, 2.0)
    again = snakemake(tmp_path, "-n", final, *in_epochs)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    longer = snakemake(tmp_path, "-n", final, "--config", "pretrain={steps: null, epochs: 3}")
    assert longer.returncode == 0 and job_counts(longer.stdout + longer.stderr).get("pretrain") == 1, longer.stdout[-3000:]


def test_each_invocation_has_its_own_config_file_for_its_jobs(tmp_path):
    """A dry run (or any invocation) with other settings must not change the config that the jobs of a
    run still in progress read ($VIDIDI_CONFIG): each distinct config gets its own file."""
    first = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"))
    assert first.returncode == 0, first.stderr[-2000:]
    (job_config,) = (tmp_path / "results" / ".configs").glob("config-*.yaml")
    text = job_config.read_text()
    second = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), "--config", "pretrain={steps: 7}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert job_config.read_text() == text and json.loads(text)["pretrain"]["steps"] == 300
    other = [p for p in (tmp_path / "results" / ".configs").glob("config-*.yaml") if p != job_config]
    assert len(other) == 1 and json.loads(other[0].read_text())["pretrain"]["steps"] == 7
    # the human-readable copy follows the last invocation
    assert (tmp_path / "results" / "config.resolved.yaml").read_text() == other[0].read_text()


def test_nested_override_on_the_command_line_takes_the_schema_type(tmp_path):
    # Snakemake hands nested --config values over as strings ({"steps": "1000"})
    done = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config.yaml"), "--config", "pretrain={steps: 1000}")
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = json.loads((tmp_path / "results" / "config.resolved.yaml").read_text())
    assert resolved["pretrain"]["steps"] == 1000 and resolved["pretrain"]["batch_size"] == 32


def test_the_workflow_config_is_read_with_file_and_line_in_its_errors(tmp_path):
    """config.yaml is read by the workflow itself (Snakemake's `configfile:` directive says only "Config
    file is not valid JSON or YAML"), so an error in it names the file and the line."""
    (tmp_path / "config.yaml").write_text("threads: 2\npretrain:\n  steps: 3\n   lr: 0.1\n")
    done = snakemake(tmp_path, "-n")
    assert done.returncode != 0
    (line,) = stderr_lines(done)
    assert line.startswith("vididi: config.yaml:4:") and "not valid YAML" in line, line
    # YAML 1.1 literals take the schema's types: `1e-3` (a string in YAML 1.1) and `2026` (an integer)
    (tmp_path / "config.yaml").write_text("results_dir: 2026\npretrain:\n  lr: 1e-3\n")
    done = snakemake(tmp_path, "-n")
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = json.loads((tmp_path / "2026" / "config.resolved.yaml").read_text())
    assert resolved["pretrain"]["lr"] == 0.001 and resolved["results_dir"] == "2026"
    # an empty run list is a mistake, not a request for nothing
    done = snakemake(tmp_path, "-n", "--config", "runs=[]")
    assert done.returncode != 0
    assert stderr_lines(done) == ["vididi: config: runs: the list is empty (it needs at least 1 entry)"]
    # no config.yaml and no --configfile: one line saying where it looked
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    done = snakemake(empty, "-n")
    assert stderr_lines(done) == [f"vididi: no config.yaml in {empty}: run from the repository root, or name a config with --configfile"]
