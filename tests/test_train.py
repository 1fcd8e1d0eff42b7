"""`vididi pretrain` (vididi/ssl/trainer.py) end to end on the tiny synthetic dataset, on CPU.

What is checked, and against what:
- every framework x variant lowers its loss (first vs last schedule cycle of train_log.csv);
- train_log.csv: one row per step, the documented columns, the loss equal to its terms, the order
  pairs of `BalancedSchedule`, the learning rate of a hand-written warm-up + cosine formula;
- resuming (in-process interruption, and a real `vididi pretrain` killed with SIGKILL) reproduces an
  uninterrupted run bit for bit, log included;
- checkpoints load with weights_only=True; a checkpoint of other settings (or an unreadable one) is
  moved aside, never deleted, and training starts over;
- a NaN / inf loss stops the run naming the step and the order pair, and keeps the last good checkpoint;
- 2 gloo processes (torchrun) with global batch B reach the weights of 1 process with batch B;
- `lr_factor` against hand-worked values; AdamW excludes 1-d parameters from weight decay.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vididi.config import expand_runs, pretrain_settings
from vididi.layout import run_dir
from vididi.ssl.frameworks import VICReg
from vididi.ssl.models import build_backbone
from vididi.ssl.schedule import BalancedSchedule
from vididi.ssl.trainer import build_model, lr_factor, make_optimizer, pretrain
from vididi.utils import VididiError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
DS = "synthetic"
ALL9 = {f"{a}{b}" for a in range(3) for b in range(3)}
TERMS = {  # the loss terms each framework logs, in its column order
    "simclr": ["nt_xent"],
    "byol": ["byol"],
    "vicreg": ["invariance", "variance", "covariance"],
    "supervised": ["cross_entropy", "accuracy"],
}
# Augmentation light enough that 27 steps visibly fit 16 videos; the loader's augmentation has its own tests.
LIGHT_AUGMENT = {"crop_scale": [0.9, 1.0], "flip": 0.0, "color_jitter": {"p": 0.0}, "grayscale": 0.0}




def make_config(workdir: Path, tiny_data, framework: str, variant: str, seed: int = 0, augment: dict | None = None,
                **pretrain_opts) -> dict:  # fmt: skip
    """The tiny config training one run, on CPU, in a fresh results dir over the shared tiny data."""
    from conftest import tiny_config

    overrides = {
        "data_dir": tiny_data[0]["data_dir"],
        "device": "cpu",
        "threads": 1,
        "runs": [{"dataset": DS, "framework": framework, "variant": variant, "backbone": "small3d", "seed": seed}],
        "pretrain": {"num_workers": 0, "log_every": 1, **pretrain_opts},
    }
    if augment is not None:
        overrides["augment"] = augment
    return tiny_config(workdir, **overrides)


def only_run(config: dict):
    (run,) = expand_runs(config)
    return run


def settings_of(config: dict) -> dict:
    return pretrain_settings(config, only_run(config))


def read_log(config: dict) -> list[dict]:
    path = run_dir(config, only_run(config)) / "train_log.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def log_header(config: dict) -> list[str]:
    with (run_dir(config, only_run(config)) / "train_log.csv").open(newline="") as f:
        return next(csv.reader(f))


def final_encoder(config: dict) -> dict[str, torch.Tensor]:
    path = run_dir(config, only_run(config)) / "checkpoints" / "final.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["encoder"]


def last_checkpoint(config: dict) -> dict:
    path = run_dir(config, only_run(config)) / "checkpoints" / "last.pt"
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]} (max |diff| {max_abs_diff(a, b):.3g})"


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()), default=0.0)


def hand_lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Reference schedule written independently: linear ramp (step+1)/warmup, then half a cosine
    period from 1 down to min_ratio over the remaining total - warmup steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = np.clip((step - warmup) / (total - warmup), 0.0, 1.0)
    return float(min_ratio + (1.0 - min_ratio) * (np.cos(np.pi * t) + 1.0) / 2.0)


def cli_env() -> dict:
    return {**os.environ, "VIDIDI_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def write_config(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------------
# Every framework x variant trains: the loss goes down, and train_log.csv says what happened

COMBOS = [
    ("simclr", "base"), ("simclr", "vididi"),
    ("byol", "base"), ("byol", "vididi"),
    ("vicreg", "base"), ("vicreg", "vididi"),
    ("supervised", "base"),
]  # fmt: skip
LOSS_RUN = {"steps": 27, "batch_size": 16, "lr": 0.03, "warmup_steps": 3, "checkpoint_every": 100}
CYCLE = 9  # one all9 cycle: every order pair exactly once, so cycle means compare like with like


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """combo -> config of a finished 27-step run (trained once per module, on first use)."""
    done: dict[tuple[str, str], dict] = {}

    def get(framework: str, variant: str) -> dict:
        if (framework, variant) not in done:
            workdir = tmp_path_factory.mktemp(f"{framework}-{variant}")
            config = make_config(workdir, tiny_data, framework, variant, augment=LIGHT_AUGMENT, **LOSS_RUN)
            pretrain(config, only_run(config))
            done[framework, variant] = config
        return done[framework, variant]

    return get


@pytest.mark.parametrize("framework,variant", COMBOS)
def test_training_lowers_the_loss(trained, framework, variant):
    # Batch 16 = every training video, so step-to-step noise comes only from clip starts (and, for
    # vididi, the order pair: hence whole-cycle means). last/first over seeds 0-3 was <= 0.95 for
    # every combination (seed 0: <= 0.92; VICReg-ViDiDi is the slowest, as the orders disagree most).
    losses = np.array([float(r["loss"]) for r in read_log(trained(framework, variant))])
    first, last = losses[:CYCLE].mean(), losses[-CYCLE:].mean()
    assert np.isfinite(losses).all()
    assert last < 0.97 * first, f"{framework}/{variant}: mean loss {first:.4f} over the first cycle, {last:.4f} over the last"


@pytest.mark.parametrize("framework,variant", COMBOS)
def test_train_log_rows_columns_pairs_and_lr(trained, tiny_data, framework, variant):
    config = trained(framework, variant)
    rows = read_log(config)
    steps = LOSS_RUN["steps"]
    assert log_header(config) == ["step", "epoch", "loss", *TERMS[framework], "pair", "lr", "clips_per_s"]
    assert [int(r["step"]) for r in rows] == list(range(steps))
    n_train = len(tiny_data[1].select("train"))
    min_ratio = config["pretrain"]["min_lr_ratio"]
    assert [int(r["epoch"]) for r in rows] == [s * LOSS_RUN["batch_size"] // n_train for s in range(steps)]
    for r in rows:
        assert float(r["clips_per_s"]) > 0 and math.isfinite(float(r["clips_per_s"]))
        expected_lr = LOSS_RUN["lr"] * hand_lr_factor(int(r["step"]), steps, LOSS_RUN["warmup_steps"], min_ratio)
        assert float(r["lr"]) == pytest.approx(expected_lr, rel=1e-9), f"lr of step {r['step']}"

    # the loss is what its logged terms add up to (framework defaults: VICReg 25 / 25 / 1)
    for r in rows:
        if framework == "vicreg":
            expected = 25 * float(r["invariance"]) + 25 * float(r["variance"]) + float(r["covariance"])
        else:  # the loss is its one term (supervised: cross-entropy; accuracy is a metric)
            expected = float(r[TERMS[framework][0]])
        assert float(r["loss"]) == pytest.approx(expected, rel=1e-5, abs=1e-5)

    pairs = [r["pair"] for r in rows]
    if variant == "base":
        assert set(pairs) == {"00"}
    else:
        for start in range(0, steps, CYCLE):  # every pair once per cycle ...
            assert sorted(pairs[start : start + CYCLE]) == sorted(ALL9), f"cycle from step {start}: {pairs[start:start + CYCLE]}"
        schedule = BalancedSchedule("all9", seed=0)  # ... in the schedule's seeded order
        assert pairs == [f"{a}{b}" for a, b in map(schedule.pair, range(steps))]
        assert pairs[:CYCLE] != pairs[CYCLE : 2 * CYCLE]  # a fresh permutation per cycle


@pytest.mark.parametrize("framework,variant", [("vicreg", "vididi"), ("supervised", "base")])
def test_final_checkpoint_loads_with_weights_only(trained, framework, variant):
    from vididi.ssl.encoder import load_encoder

    config = trained(framework, variant)
    out = run_dir(config, only_run(config))
    final = torch.load(out / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert final["steps"] == LOSS_RUN["steps"]
    info = json.loads((out / "train_info.json").read_text())
    assert final["settings_hash"] == info["settings_hash"] and info["steps"] == LOSS_RUN["steps"]
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["step"] == LOSS_RUN["steps"] and last["settings_hash"] == final["settings_hash"]
    # final.pt's encoder is last.pt's encoder, and rebuilds into a working backbone
    encoder_of_last = {k[len("encoder.") :]: v for k, v in last["model"].items() if k.startswith("encoder.")}
    assert_same_tensors(final["encoder"], encoder_of_last)
    encoder, backbone, stats = load_encoder(out / "checkpoints" / "final.pt")
    assert backbone == {"name": "small3d", "widths": [4, 8, 8, 16]} and len(stats["sigma"]) == 3
    assert_same_tensors(encoder.state_dict(), final["encoder"])


def test_random_framework_writes_the_untrained_encoder(tmp_path, tiny_data):
    config = make_config(tmp_path, tiny_data, "random", "base", seed=3, steps=5)
    pretrain(config, only_run(config))
    out = run_dir(config, only_run(config))
    final = torch.load(out / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)
    assert final["steps"] == 0
    torch.manual_seed(3)  # the documented init: the run's seed, then the backbone
    reference = build_backbone("small3d", widths=[4, 8, 8, 16]).state_dict()
    assert_same_tensors(final["encoder"], reference)
    assert not (out / "train_log.csv").exists() and not (out / "checkpoints" / "last.pt").exists()


# --------------------------------------------------------------------------------------------------
# Kill and resume


RESUME_RUN = {"steps": 8, "batch_size": 8, "lr": 0.03, "warmup_steps": 2, "checkpoint_every": 4}


@pytest.mark.parametrize("framework,variant", [("byol", "vididi"), ("supervised", "base")])
def test_interrupted_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data, monkeypatch, framework, variant):
    # BYOL carries the most state (EMA target, tau from the step); supervised uses the labels.
    straight = make_config(tmp_path / "straight", tiny_data, framework, variant, **RESUME_RUN)
    pretrain(straight, only_run(straight))

    # Stop a run whose total is 8 (the lr schedule depends on it) at the start of step 5: step 4 ran
    # and was logged, but only step 4's checkpoint (4 steps done) exists.
    from vididi.ssl import trainer as train

    resumed = make_config(tmp_path / "resumed", tiny_data, framework, variant, **RESUME_RUN)
    real_step = train.Trainer.step

    def step_then_stop(self, step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return real_step(self, step, *args)

    monkeypatch.setattr(train.Trainer, "step", step_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(resumed, only_run(resumed))
    assert last_checkpoint(resumed)["step"] == 4
    assert [int(r["step"]) for r in read_log(resumed)] == [0, 1, 2, 3, 4]
    assert not (run_dir(resumed, only_run(resumed)) / "checkpoints" / "final.pt").exists()

    monkeypatch.setattr(train.Trainer, "step", real_step)
    pretrain(resumed, only_run(resumed))
    assert_same_tensors(final_encoder(resumed), final_encoder(straight))
    assert_same_tensors(last_checkpoint(resumed)["model"], last_checkpoint(straight)["model"])  # heads, BYOL target
    # the log: step 4 replaced, not repeated; every logged value as in the straight run
    rows, reference = read_log(resumed), read_log(straight)
    assert [int(r["step"]) for r in rows] == list(range(RESUME_RUN["steps"]))
    n_train = len(tiny_data[1].select("train"))  # 16: batch 8 makes 2 steps per epoch
    assert [int(r["epoch"]) for r in rows] == [s * RESUME_RUN["batch_size"] // n_train for s in range(RESUME_RUN["steps"])]
    for key in ("epoch", "loss", *TERMS[framework], "pair", "lr"):
        assert [r[key] for r in rows] == [r[key] for r in reference], key


def test_interrupted_run_reports_the_time_of_all_its_segments(tmp_path, tiny_data, monkeypatch):
    # train_info.json (and so the summary's "pretrain s") must count every segment of one training,
    # not only the last one after a resume.
    from vididi.ssl import trainer as train

    config = make_config(tmp_path, tiny_data, "vicreg", "vididi", **RESUME_RUN)
    real_step, clock = train.Trainer.step, [1000.0]
    monkeypatch.setattr(train.time, "time", lambda: clock[0])

    def slow_step(self, step, *args):  # 10 "seconds" a step; stop at step 5 in the first segment
        if step == 5 and not resumed[0]:
            raise KeyboardInterrupt
        clock[0] += 10.0
        return real_step(self, step, *args)

    resumed = [False]
    monkeypatch.setattr(train.Trainer, "step", slow_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, only_run(config))
    resumed[0] = True
    pretrain(config, only_run(config))
    info = json.loads((run_dir(config, only_run(config)) / "train_info.json").read_text())
    # segment 1: steps 0-3 checkpointed (40 s; step 4 ran but was never saved), segment 2: steps 4-7 (40 s)
    assert [(s["from_step"], s["to_step"], s["seconds"]) for s in info["segments"]] == [(0, 4, 40.0), (4, 8, 40.0)]
    assert info["wall_seconds"] == 80.0
    assert all(s["code"] for s in info["segments"])
    assert "cores" in info["machine"] and info["code"] and info["finished"]  # for the summary's provenance lines


def test_a_finished_run_without_final_pt_is_written_from_its_checkpoint_unless_the_code_changed(tmp_path, tiny_data, monkeypatch):
    """A failure between the last last.pt and final.pt (disk full, a time limit during the final save),
    or `snakemake --forcerun`, calls the stage again with a finished last.pt: training is a pure
    function of (settings, data, step), so final.pt is written from it, without training, to the same
    bytes. With other code since, the stage trains again from step 0."""
    from vididi.ssl import trainer as train

    config = make_config(tmp_path, tiny_data, "vicreg", "vididi", **RESUME_RUN)
    run = only_run(config)
    pretrain(config, run)
    final = run_dir(config, run) / "checkpoints" / "final.pt"
    first, log_before = final.read_bytes(), read_log(config)
    final.unlink()  # the final save failed (or --forcerun deleted it)

    steps_run, real_step = [], train.Trainer.step
    monkeypatch.setattr(train.Trainer, "step", lambda self, step, *a: steps_run.append(step) or real_step(self, step, *a))
    pretrain(config, run)
    assert steps_run == [] and final.read_bytes() == first and read_log(config) == log_before
    info = json.loads((run_dir(config, run) / "train_info.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in info["segments"]] == [(0, RESUME_RUN["steps"])]

    final.unlink()
    monkeypatch.setattr(train, "code_version", lambda: "0.2.0+gother")  # a fix landed since: train again
    pretrain(config, run)
    assert steps_run == list(range(RESUME_RUN["steps"]))
    assert_same_tensors(final_encoder(config), torch.load(io.BytesIO(first), weights_only=True)["encoder"])
    info = json.loads((run_dir(config, run) / "train_info.json").read_text())
    assert [(s["from_step"], s["to_step"], s["code"]) for s in info["segments"]] == [(0, RESUME_RUN["steps"], "0.2.0+gother")]


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data):
    opts = {"steps": 24, "batch_size": 8, "lr": 0.03, "warmup_steps": 2, "checkpoint_every": 4}
    straight = make_config(tmp_path / "straight", tiny_data, "vicreg", "vididi", **opts)
    pretrain(straight, only_run(straight))

    config = make_config(tmp_path / "killed", tiny_data, "vicreg", "vididi", **opts)
    run = only_run(config)
    ckpt_dir = run_dir(config, run) / "checkpoints"
    cmd = [sys.executable, "-m", "vididi.cli", "pretrain", "--config", str(write_config(config, tmp_path / "config.yaml")),
           "--dataset", DS, "--run", run.name]  # fmt: skip
    log = run_dir(config, run) / "train_log.csv"
    stderr_file = tmp_path / "killed.stderr"
    with stderr_file.open("wb") as stderr:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 120
    # kill between checkpoints: once step 5 is logged, last.pt (4 steps) exists and rows 4, 5 are past it
    while (not log.exists() or len(log.read_text().splitlines()) < 1 + 6) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no clean-up handler runs: like a node failure
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{stderr_file.read_text()[-2000:]}"
    killed_at = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 4 <= killed_at < opts["steps"] and not (ckpt_dir / "final.pt").exists()
    assert len(read_log(config)) > killed_at  # steps past the checkpoint were logged: resuming must drop them

    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {ckpt_dir / 'last.pt'} at step {killed_at}" in done.stderr
    assert_same_tensors(final_encoder(config), final_encoder(straight))
    rows = read_log(config)
    assert [int(r["step"]) for r in rows] == list(range(opts["steps"]))
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_log(straight)]


# --------------------------------------------------------------------------------------------------
# Checkpoints of other settings, unreadable checkpoints


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_of_other_settings_is_moved_aside_and_training_starts_over(tmp_path, tiny_data):
    opts = {"steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2}
    first = make_config(tmp_path / "run", tiny_data, "vicreg", "base", lr=0.01, **opts)
    second = make_config(tmp_path / "run", tiny_data, "vicreg", "base", lr=0.02, **opts)  # same run dir
    fresh = make_config(tmp_path / "fresh", tiny_data, "vicreg", "base", lr=0.02, **opts)
    out = run_dir(first, only_run(first))
    assert out == run_dir(second, only_run(second))

    pretrain(first, only_run(first))
    old = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    old_digest = file_digest(out / "checkpoints" / "last.pt")
    assert set(old) == {"step", "settings_hash", "segments", "model", "optimizer", "scheduler", "rng_torch", "rng_cuda"}

    pretrain(second, only_run(second))
    aside = out / f"checkpoints.stale-{old['settings_hash']}"
    assert file_digest(aside / "last.pt") == old_digest  # kept byte for byte
    assert (aside / "final.pt").is_file()
    new = last_checkpoint(second)
    assert new["settings_hash"] != old["settings_hash"] and new["step"] == opts["steps"]
    pretrain(fresh, only_run(fresh))  # started over: the same weights as in an empty directory
    assert_same_tensors(final_encoder(second), final_encoder(fresh))
    rows = read_log(second)
    assert [int(r["step"]) for r in rows] == list(range(opts["steps"]))
    assert [r["lr"] for r in rows] == [r["lr"] for r in read_log(fresh)]

    # switching back and forth must keep every earlier checkpoint (regression: the second move onto
    # an existing checkpoints.stale-<hash> raised OSError "Directory not empty")
    pretrain(first, only_run(first))
    pretrain(second, only_run(second))
    stale = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoints.stale-"))
    assert len(stale) == 3, stale
    assert_same_tensors(final_encoder(second), final_encoder(fresh))


def test_unreadable_checkpoint_is_moved_aside(tmp_path, tiny_data, monkeypatch):
    from vididi.ssl import trainer as train

    config = make_config(tmp_path, tiny_data, "simclr", "base", steps=3, batch_size=4, checkpoint_every=1)
    ckpt_dir = run_dir(config, only_run(config)) / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.pt").write_bytes(b"half a checkpoint")
    pretrain(config, only_run(config))
    (aside,) = ckpt_dir.glob("last.unreadable-*.pt")
    assert aside.read_bytes() == b"half a checkpoint"
    assert last_checkpoint(config)["step"] == 3
    assert [int(r["step"]) for r in read_log(config)] == [0, 1, 2]

    # a second unreadable checkpoint within the same second (the name's clock) must not replace the first
    monkeypatch.setattr(train.time, "time", lambda: float(aside.name.split("-")[1].split(".")[0]))
    (ckpt_dir / "last.pt").write_bytes(b"another torn write")
    pretrain(config, only_run(config))
    contents = sorted(p.read_bytes() for p in ckpt_dir.glob("last.unreadable-*.pt"))
    assert contents == [b"another torn write", b"half a checkpoint"]


# --------------------------------------------------------------------------------------------------
# Non-finite loss


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_stops_naming_step_and_pair(tmp_path, tiny_data, monkeypatch, bad):
    config = make_config(tmp_path, tiny_data, "vicreg", "vididi", steps=8, batch_size=4, checkpoint_every=2)
    real_forward = VICReg.forward
    calls = []

    def forward_bad_at_step_3(self, x1, x2=None, labels=None):
        loss, terms = real_forward(self, x1, x2, labels)
        calls.append(1)
        return (loss * bad if len(calls) == 4 else loss), terms  # the 4th forward is step 3

    monkeypatch.setattr(VICReg, "forward", forward_bad_at_step_3)
    a, b = BalancedSchedule("all9", seed=0).pair(3)
    with pytest.raises(VididiError, match=rf"step 3 \(order pair {a}{b}\)") as caught:
        pretrain(config, only_run(config))
    assert "\n" not in str(caught.value) and "last.pt" in str(caught.value)
    assert len(calls) == 4  # stopped at once (log_every=1), not at the next checkpoint
    last = last_checkpoint(config)
    assert last["step"] == 2  # the checkpoint of step 4 was never written over it
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (run_dir(config, only_run(config)) / "checkpoints" / "final.pt").exists()


# --------------------------------------------------------------------------------------------------
# Distributed data parallel: 2 gloo processes == 1 process


# float64 and plain SGD: the two runs then agree to ~1e-12 of the distance the weights travel on any
# CPU (in float32 with AdamW, summation order alone moved them by 1.1% of it on an AVX-512 machine).
DDP_RUN = {"steps": 4, "batch_size": 8, "lr": 0.05, "warmup_steps": 1, "checkpoint_every": 4,
           "precision": "fp64", "optimizer": "sgd", "momentum": 0.0}


@pytest.fixture(scope="module")
def ddp_vs_single(tmp_path_factory, tiny_data):
    """framework -> (config of the 1-process run, config of the 2-process torchrun run, init encoder)."""
    done: dict[str, tuple] = {}

    def get(framework: str):
        if framework not in done:
            workdir = tmp_path_factory.mktemp(f"ddp-{framework}")
            single = make_config(workdir / "single", tiny_data, framework, "vididi", **DDP_RUN)
            double = make_config(workdir / "ddp", tiny_data, framework, "vididi", **DDP_RUN)
            run = only_run(single)
            pretrain(single, run)
            torchrun = Path(sys.executable).with_name("torchrun")
            cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vididi.cli", "pretrain",
                   "--config", str(write_config(double, workdir / "config.yaml")), "--dataset", DS,
                   "--run-name", run.name]  # fmt: skip
            proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=400)
            assert proc.returncode == 0, proc.stderr[-3000:]
            init = build_model(settings_of(single), num_classes=4).encoder.double().state_dict()  # seeded: the runs' start
            done[framework] = (single, double, init)
        return done[framework]

    return get


@pytest.mark.parametrize("framework", ["vicreg", "byol"])
def test_ddp_two_processes_reach_the_single_process_weights(ddp_vs_single, framework):
    # VICReg gathers the embeddings of both ranks; BYOL's loss is per sample (DDP averages the two
    # halves); both need BatchNorm statistics over the global batch (GlobalBatchNorm under gloo).
    # Tolerance: in float64 the two runs differ only by summation order (all-reduce, gather), ~1e-15
    # relative per operation; plain SGD passes a gradient error on unamplified (AdamW divides by the
    # gradient's own scale), so after 4 steps the weights agree to ~1e-12 of the distance they
    # travelled, on any CPU. The bound 1e-7 leaves five orders of magnitude of slack; a real DDP bug
    # moves them by ~100% of it: BatchNorm affine parameters left out of the optimiser (a bug this
    # test caught), a rank's half of the batch missing, per-rank BN statistics.
    single, double, init = ddp_vs_single(framework)
    a, b = final_encoder(single), final_encoder(double)
    assert a.keys() == b.keys()
    for key in a:
        if not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key  # num_batches_tracked
        elif key in init and "running_" not in key:  # parameters: compare with the distance travelled
            travelled = (a[key] - init[key]).norm().item()
            assert travelled > 0, f"{key} did not train"
            gap = (a[key] - b[key]).norm().item()
            assert gap <= 1e-7 * travelled, f"{key}: DDP differs by {gap:.3g}, training moved it by {travelled:.3g}"
        else:  # BatchNorm running statistics: averages of the same activations
            assert torch.allclose(a[key], b[key], rtol=1e-9, atol=1e-12), f"{key}: max |diff| {(a[key] - b[key]).abs().max():.3g}"


@pytest.mark.parametrize("framework", ["vicreg", "byol"])
def test_ddp_logs_the_global_batch_loss(ddp_vs_single, framework):
    # train_log.csv under DDP must describe the global batch, as a 1-process run's log does.
    single, double, _ = ddp_vs_single(framework)
    rows_1, rows_2 = read_log(single), read_log(double)
    assert [r["pair"] for r in rows_1] == [r["pair"] for r in rows_2]
    assert [r["lr"] for r in rows_1] == [r["lr"] for r in rows_2]
    np.testing.assert_allclose([float(r["loss"]) for r in rows_2], [float(r["loss"]) for r in rows_1], rtol=1e-9)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signalled_cli_run_checkpoints_exits_and_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data, sig):
    """SLURM's warning signal before a time limit (`--signal`), or a preemption: the step finishes,
    last.pt is written at that step (not the last multiple of checkpoint_every), the process exits with
    128 + the signal and one line, and a requeued job resumes from there to the same weights."""
    opts = {"steps": 24, "batch_size": 8, "lr": 0.03, "warmup_steps": 2, "checkpoint_every": 100}
    straight = make_config(tmp_path / "straight", tiny_data, "vicreg", "vididi", **opts)
    pretrain(straight, only_run(straight))

    config = make_config(tmp_path / "signalled", tiny_data, "vicreg", "vididi", **opts)
    run = only_run(config)
    ckpt = run_dir(config, run) / "checkpoints" / "last.pt"
    cmd = [sys.executable, "-m", "vididi.cli", "pretrain", "--config", str(write_config(config, tmp_path / "config.yaml")),
           "--dataset", DS, "--run", run.name]  # fmt: skip
    log = run_dir(config, run) / "train_log.csv"
    stderr_file = tmp_path / "signalled.stderr"
    with stderr_file.open("wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 120
    while (not log.exists() or len(log.read_text().splitlines()) < 1 + 3) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    err = stderr_file.read_text()
    assert proc.returncode == 128 + sig, err[-2000:]
    stopped_at = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
    assert 3 <= stopped_at < opts["steps"] and not (ckpt.parent / "final.pt").exists()
    (line,) = [x for x in err.splitlines() if "error:" in x]
    assert line == (f"vididi pretrain: error: stopped by {sig.name} after step {stopped_at} of {opts['steps']}; {ckpt} "
                    "holds it: run the stage again to resume")  # fmt: skip
    assert len(read_log(config)) == stopped_at  # the log ends where the checkpoint does

    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {ckpt} at step {stopped_at}" in done.stderr
    assert_same_tensors(final_encoder(config), final_encoder(straight))
    assert [r["loss"] for r in read_log(config)] == [r["loss"] for r in read_log(straight)]


def test_a_second_trainer_of_the_same_run_stops_in_one_line(tmp_path, tiny_data):
    """An orphaned trainer of a killed Snakemake still holds the run: a second one (the rerun the lock
    message suggests) must not train beside it and interleave the log."""
    from vididi.layout import train_lock
    from vididi.utils import exclusive_lock

    config = make_config(tmp_path, tiny_data, "vicreg", "vididi", **RESUME_RUN)
    run = only_run(config)
    with exclusive_lock(train_lock(config, run), "training"):
        with pytest.raises(VididiError) as excinfo:
            pretrain(config, run)
    message = str(excinfo.value)
    assert message.startswith(f"pid {os.getpid()} on ") and "is already training" in message and "\n" not in message
    assert not (run_dir(config, run) / "train_log.csv").exists()
    pretrain(config, run)  # the lock is released with its holder
    assert len(read_log(config)) == RESUME_RUN["steps"]


def test_pretrain_rule_arguments_pass_through_torchrun(monkeypatch, tmp_path):
    """torchrun's own argument parser sees the whole command line the stage launches itself with: an
    option that abbreviates one of torchrun's (`--run` -> `--run-path`) would stop the launch."""
    from torch.distributed.run import get_args_parser

    from vididi import cli

    rule = (REPO / "workflow" / "rules" / "pretrain.smk").read_text()
    shell = re.search(r'shell:\s*"vididi ([^"]+?) >', rule).group(1).replace("{wildcards.", "{")
    stage_args = shell.format(dataset=DS, run="x").split()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {"gpus": 2}}))
    launched = []
    monkeypatch.setattr(os, "execv", lambda exe, command: launched.append(command))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cli.main([*stage_args, "--config", str(config)])
    (command,) = launched
    args = get_args_parser().parse_args(command[3:])  # after `python -m torch.distributed.run`
    parsed = cli.build_parser().parse_args(args.training_script_args)
    assert (parsed.stage, parsed.dataset, parsed.run) == ("pretrain", DS, "x")


# --------------------------------------------------------------------------------------------------
# Learning-rate schedule and optimiser


def test_lr_factor_hand_worked_values():
    # warmup 4, total 12, min_ratio 0.1: ramp 1/4 .. 4/4, then 0.1 + 0.45 (1 + cos(pi (s - 4) / 8))
    expected = {
        0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0,
        4: 1.0,                          # cos(0)
        6: 0.1 + 0.45 * (1 + math.sqrt(0.5)),  # cos(pi/4)
        8: 0.55,                         # cos(pi/2) = 0
        10: 0.1 + 0.45 * (1 - math.sqrt(0.5)),  # cos(3 pi/4)
        12: 0.1,                         # the end of the decay
        20: 0.1,                         # stays there
    }  # fmt: skip
    for step, value in expected.items():
        assert lr_factor(step, 12, 4, 0.1) == pytest.approx(value, abs=1e-12), step
    assert lr_factor(0, 10, 0, 0.0) == 1.0  # no warm-up: the full rate at once
    assert lr_factor(5, 10, 0, 0.0) == pytest.approx(0.5)
    assert lr_factor(0, 3, 5, 0.0) == pytest.approx(0.2)  # warm-up longer than the run


@pytest.mark.parametrize("framework", ["vicreg", "byol"])
def test_adamw_excludes_1d_parameters_from_weight_decay(tiny_data, tmp_path, framework):
    config = make_config(tmp_path, tiny_data, framework, "base")
    model = build_model(settings_of(config), num_classes=4)
    pre = {**config["pretrain"], "lr": 0.1, "weight_decay": 0.5}
    optimizer = make_optimizer(model, pre)
    assert isinstance(optimizer, torch.optim.AdamW)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter once; BYOL's target not at all

    # behaviour: with zero gradients AdamW's update is decay only, p <- p (1 - lr wd)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    n_decayed = n_kept = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1:  # biases, BatchNorm weights and biases
            assert torch.equal(p.detach(), before[name]), f"{name} was decayed"
            n_kept += 1
        else:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.1 * 0.5), msg=f"{name} not decayed")
            n_decayed += 1
    assert n_decayed > 0 and n_kept > 0

    sgd = make_optimizer(model, {**pre, "optimizer": "sgd", "momentum": 0.8})
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.8 for g in sgd.param_groups)
    assert sorted(g["weight_decay"] for g in sgd.param_groups) == [0.0, 0.5]


def test_lars_follows_the_hand_worked_update():
    from vididi.ssl.lars import LARS

    w0 = np.array([[1.0, -2.0], [0.5, 3.0]])
    b0 = np.array([0.2, -0.1])
    grads = [(np.array([[0.3, 0.1], [-0.2, 0.4]]), np.array([0.05, -0.3])),
             (np.array([[-0.1, 0.2], [0.6, -0.5]]), np.array([0.4, 0.1]))]  # fmt: skip
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    lr, momentum, wd, eta = 0.2, 0.9, 0.1, 0.5
    optimizer = LARS([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0, "adapt": False}],
                     lr=lr, momentum=momentum, eta=eta)  # fmt: skip
    # by hand: u = g + wd w, r = eta |w| / |u|, v <- momentum v + r u (v0 = 0), w <- w - lr v;
    # the bias (adapt off, no decay) is plain SGD with momentum
    hand_w, hand_b, v_w, v_b = w0.copy(), b0.copy(), 0.0, 0.0
    for g_w, g_b in grads:
        w.grad, b.grad = torch.tensor(g_w), torch.tensor(g_b)
        optimizer.step()
        u = g_w + wd * hand_w
        v_w = momentum * v_w + eta * np.linalg.norm(hand_w) / np.linalg.norm(u) * u
        hand_w = hand_w - lr * v_w
        v_b = momentum * v_b + g_b
        hand_b = hand_b - lr * v_b
        np.testing.assert_allclose(w.detach().numpy(), hand_w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b.detach().numpy(), hand_b, rtol=1e-12, atol=1e-14)
    # a zero weight tensor takes the plain step (trust ratio 1), not a NaN or a frozen tensor
    zero = torch.zeros(2, 2, requires_grad=True)
    zero.grad = torch.ones(2, 2)
    LARS([zero], lr=0.1, momentum=0.0).step()
    assert torch.equal(zero.detach(), torch.full((2, 2), -0.1))


def test_lars_and_the_predictor_rate_in_make_optimizer(tiny_data, tmp_path):
    from vididi.ssl.lars import LARS

    config = make_config(tmp_path, tiny_data, "byol", "base")
    model = build_model(settings_of(config), num_classes=4)
    pre = {**config["pretrain"], "lr": 0.1, "weight_decay": 0.5}
    lars = make_optimizer(model, {**pre, "optimizer": "lars", "lars_eta": 0.02})
    assert isinstance(lars, LARS)
    adapted = [(g["adapt"], g["weight_decay"], {p.ndim for p in g["params"]}) for g in lars.param_groups]
    assert adapted == [(True, 0.5, {2, 5}), (False, 0.0, {1})]  # biases and norms: no trust ratio, no decay
    assert all(g["eta"] == 0.02 for g in lars.param_groups)

    # the default scale keeps the two groups of before; another scale puts the predictor in two more
    trainable = sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(make_optimizer(model, pre).param_groups) == 2
    optimizer = make_optimizer(model, {**pre, "predictor_lr_scale": 10.0})
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.1, 1.0, 1.0])
    assert sorted(id(p) for g in optimizer.param_groups for p in g["params"]) == trainable
    predictor = {id(p) for p in model.predictor.parameters()}
    assert {id(p) for g in optimizer.param_groups[2:] for p in g["params"]} == predictor
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0, 0.5, 0.0]
    # the schedule scales every group alike: the predictor keeps 10x the rate at every step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 10, 2, 0.1))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs[2] == pytest.approx(10 * lrs[0]) and lrs[0] == pytest.approx(0.1 * lr_factor(scheduler.last_epoch, 10, 2, 0.1))


def test_new_pretrain_keys_keep_old_settings_and_variants_override_them(tiny_data, tmp_path):
    from vididi.config import run_pretrain_options

    plain = make_config(tmp_path, tiny_data, "byol", "base")
    explicit = make_config(tmp_path, tiny_data, "byol", "base", predictor_lr_scale=1.0, lars_eta=0.001,
                           monitor_every=5, monitor_videos=10)  # fmt: skip
    assert settings_of(plain) == settings_of(explicit)  # defaults and the monitor leave the hash alone
    assert not {"predictor_lr_scale", "lars_eta", "monitor_every", "monitor_videos"} & set(settings_of(plain)["pretrain"])
    scaled = make_config(tmp_path, tiny_data, "byol", "base", predictor_lr_scale=4.0)
    assert settings_of(scaled)["pretrain"]["predictor_lr_scale"] == 4.0
    assert run_pretrain_options(scaled, settings_of(scaled))["predictor_lr_scale"] == 4.0
    # a variant back at the default under a global 4.0 trains with 1.0 (its settings omit the key)
    from conftest import tiny_config

    back = tiny_config(tmp_path, data_dir=tiny_data[0]["data_dir"], pretrain={"predictor_lr_scale": 4.0},
                       variants={"one": {"schedule": "frames_only", "pretrain": {"predictor_lr_scale": 1.0, "optimizer": "lars"}}},
                       runs=[{"dataset": DS, "framework": "byol", "variant": "one"}])  # fmt: skip
    settings = settings_of(back)
    assert "predictor_lr_scale" not in settings["pretrain"] and settings["pretrain"]["optimizer"] == "lars"
    assert run_pretrain_options(back, settings)["predictor_lr_scale"] == 1.0
