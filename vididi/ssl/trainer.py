"""`vididi pretrain`: one run (dataset x framework x variant x backbone x seed), resumable.

Per step k: the balanced schedule names an order pair (a, b); the two uint8 clips of each video go to
the device, become centred float clips, and D_a(V), D_b(V') (derivatives.py) feed the framework's loss.

Outputs in results/<dataset>/runs/<run>/:
    checkpoints/last.pt   full training state, every `checkpoint_every` steps and at the end
    checkpoints/final.pt  the trained encoder + what evaluation needs (the rule's output)
    train_log.csv         step, epoch, loss, loss terms, order pair, lr, clips/s (one row per step), and
                          with `pretrain.monitor_every` the online kNN monitor's R@1 (monitor.py)
    train_info.json       wall time, steps, device, settings

Crash safety: checkpoints are written atomically, and one trainer at a time holds the run (a lock
file in the run folder; a second one stops with one line naming the first). Training is a pure
function of (settings, data, step) -- the `run_hash`: the batch of step k, its augmentation and the
order pair depend only on the seed and k, so continuing from last.pt gives the weights a training from
step 0 would (bit for bit on one machine). Calling the stage again therefore continues from last.pt
when it was made with the same run hash: an interrupted run resumes, and a finished one whose final.pt
is missing (a failed final save, `--forcerun`) is written from it without training, unless the code
changed since, in which case it trains again from step 0. A half-finished last.pt survives a code
change (it resumes, with a warning; train_info.json lists the code version of every segment). A
checkpoint from other settings is moved aside, never deleted. SIGTERM or SIGUSR1 (a SLURM time limit
with `--signal`, a preemption) saves last.pt after the current step and exits with 128 + the signal,
so a requeued job resumes where it stopped. The reported training time is the sum over all segments.
A non-finite loss stops the run with a clear message; the last good checkpoint stays.

Under `torchrun` the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU):
`batch_size` is global, each rank loads its share of every global batch, BatchNorm statistics and
SimCLR / VICReg embeddings span the global batch, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .. import config as cfgmod
from .. import layout
from ..data.augment import FramesViewAugment, apply_colour
from ..data.device_augment import DeviceAugment
from ..data.loader import StepBatches, TrainClips, loader
from ..data.shards import DatasetIndex
from ..utils import VididiError, atomic_path, code_version, exclusive_lock, get_logger, progress, provenance, write_json
from .derivatives import derivative_view
from .distributed import convert_sync_batchnorm, is_main, world
from .encoder import DEFAULT_SCALING, encoder_from_file, read_encoder_file, resolve_device
from .frameworks import Framework, build_framework
from .lars import LARS
from .models import build_backbone
from .monitor import COLUMN as MONITOR_COLUMN
from .monitor import KnnMonitor, monitor_videos
from .schedule import BalancedSchedule

log = get_logger()


def build_model(settings: dict, num_classes: int) -> Framework | torch.nn.Module:
    """The framework module of a run (or the bare encoder for the `random` floor), seeded."""
    torch.manual_seed(settings["seed"])
    backbone_opts = {k: v for k, v in settings["backbone"].items() if k != "name"}
    backbone = build_backbone(settings["backbone"]["name"], **backbone_opts)
    framework = settings["framework"]["name"]
    if framework == cfgmod.NO_TRAINING:
        return backbone
    options = {k: v for k, v in settings["framework"].items() if k != "name"}
    if framework == "supervised":
        options["num_classes"] = num_classes
    return build_framework(framework, backbone, options)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def on_cuda_when_auto(switch, device: torch.device | str) -> bool:
    """A `pretrain.compile` / `pretrain.fused_optimizer` switch: auto = on for CUDA, off elsewhere."""
    if switch == "auto":
        return torch.device(device).type == "cuda"
    return bool(switch)


def compile_model(model: torch.nn.Module, device: torch.device, switch="auto") -> list[str]:
    """`torch.compile` the encoder, projector and predictor of `model` in place (nn.Module.compile:
    parameter names, state_dicts and checkpoints stay as they are); returns the compiled names.

    Default off on the CPU (compiling a small model there costs more than it saves); call it before
    DistributedDataParallel wraps the model and after BatchNorm conversion. BYOL's target encoder is
    only ever updated by EMA and run without grad: left eager.
    """
    if not on_cuda_when_auto(switch, device):
        return []
    names = []
    for name in ("encoder", "projector", "predictor"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            module.compile()
            names.append(name)
    return names


def make_optimizer(model: torch.nn.Module, pretrain: dict, device: torch.device | str = "cpu",
                   encoder_lr_ratio: float = 1.0) -> torch.optim.Optimizer:  # fmt: skip
    """AdamW, SGD or LARS; no weight decay (and, for LARS, no trust ratio) on biases and normalisation
    parameters (1-d tensors). AdamW uses the fused kernel when `pretrain.fused_optimizer` says so
    (auto: on CUDA; same state_dict). Learning rates per part, in this order of the groups:
    with `encoder_lr_ratio` != 1 (fine-tuning) the head at lr, then `model.encoder` at lr * ratio;
    else everything at lr, then a `predictor` head (BYOL) at lr * `predictor_lr_scale` when that is not 1."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, lars = pretrain["lr"], pretrain["optimizer"] == "lars"
    if encoder_lr_ratio != 1.0:
        inner, inner_lr = {id(p) for p in model.encoder.parameters()}, lr * encoder_lr_ratio
    else:
        scale = pretrain.get("predictor_lr_scale", 1.0)
        predictor = getattr(model, "predictor", None)
        inner = {id(p) for p in predictor.parameters()} if scale != 1.0 and predictor is not None else set()
        inner_lr = lr * scale
    parts = [([p for p in params if id(p) not in inner], lr)]
    if inner:
        parts.append(([p for p in params if id(p) in inner], inner_lr))
    param_groups = []
    for part, part_lr in parts:
        decayed = {"params": [p for p in part if p.ndim > 1], "weight_decay": pretrain["weight_decay"], "lr": part_lr}
        plain = {"params": [p for p in part if p.ndim <= 1], "weight_decay": 0.0, "lr": part_lr}
        if lars:
            decayed["adapt"], plain["adapt"] = True, False
        param_groups += [decayed, plain]
    if pretrain["optimizer"] == "sgd":
        return torch.optim.SGD(param_groups, lr=pretrain["lr"], momentum=pretrain["momentum"])
    if lars:
        return LARS(param_groups, lr=pretrain["lr"], momentum=pretrain["momentum"], eta=pretrain.get("lars_eta", 0.001))
    fused = on_cuda_when_auto(pretrain.get("fused_optimizer", "auto"), device)
    return torch.optim.AdamW(param_groups, lr=pretrain["lr"], **({"fused": True} if fused else {}))


@dataclass
class StepInput:
    """What one training step needs besides the batch."""

    mean: list[float]
    sigma: list[float]
    frames: int
    scaling: str


class Trainer:
    """One optimisation step on a batch already in memory: the hot path, kept small.

    A batch is (clip1, clip2, colour1, colour2, labels) as `TrainClips` yields it: uint8 clips
    (B, 3, T+2, H, W) and their colour-jitter maps (B, 3, 4); with `augment` (a `DeviceAugment`,
    `pretrain.augment_on: device`) the clips are stored bytes and the maps the clips' draws, and
    `augment` turns them into the same two things on the device first.
    """

    def __init__(self, model, optimizer, scheduler, schedule: BalancedSchedule, step_input: StepInput,
                 device: torch.device, precision: str, channels_last: bool, grad_clip: float | None,
                 total_steps: int, augment=None):  # fmt: skip
        self.model, self.optimizer, self.scheduler, self.schedule = model, optimizer, scheduler, schedule
        self.inp, self.device, self.grad_clip, self.total_steps = step_input, device, grad_clip, total_steps
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.dtype = torch.float64 if precision == "fp64" else torch.float32
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
        self.core = model.module if hasattr(model, "module") else model  # under DDP
        self.mean = torch.tensor(step_input.mean, dtype=torch.float32, device=device)
        self.world_size = world()[1]
        self.augment = augment
        self.frames_augment: FramesViewAugment | None = None  # Background Erasing / FAME, when configured

    def view(self, clip: torch.Tensor, colour: torch.Tensor, order: int, step: int = 0, stream: int = 0) -> torch.Tensor:
        """Derivative view of one batch of clips (docs/method.md): colour jitter on floats in [0, 1],
        centring by the dataset mean, the opt-in scene augmentations on the frames view (order 0 only;
        derivative views are computed from the clip as it was), then D_order and its scaling."""
        if self.augment is not None:  # stored bytes + draws -> cropped clips + colour maps, on the device
            clip, colour = self.augment(clip, colour)
        x = apply_colour(clip.to(self.device, non_blocking=True), colour.to(self.device, non_blocking=True), self.mean)
        if order == 0 and self.frames_augment is not None:
            x = self.frames_augment(x, step, stream)
        v = derivative_view(x.to(self.dtype), order, self.inp.frames, self.inp.scaling, self.inp.sigma)
        return v.contiguous(memory_format=self.memory_format)  # a no-op for channels-last

    def views(self, batch, step: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """The two views of step `step`; a supervised model sees only the first."""
        clip1, clip2, colour1, colour2, _ = batch
        a, b = self.schedule.pair(step)
        v2 = None if self.core.uses_labels else self.view(clip2, colour2, b, step, 1)
        return self.view(clip1, colour1, a, step, 0), v2, (a, b)

    def step(self, step: int, batch):
        """Forward, backward, optimiser and schedule steps; returns (loss, terms, pair) for logging,
        averaged over processes under DDP (BYOL and supervised losses are per-rank means)."""
        v1, v2, pair = self.views(batch, step)
        with self.autocast:
            loss, terms = self.model(v1, v2, batch[-1].to(self.device, non_blocking=True))  # labels come last
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.core.after_step(step, self.total_steps)
        loss = loss.detach()
        if self.world_size > 1:
            values = torch.stack([loss.double(), *(v.double() for v in terms.values())])  # a few scalars: exact sums
            dist.all_reduce(values)
            values /= self.world_size
            loss, terms = values[0], dict(zip(terms, values[1:]))
        return loss, terms, pair


class Stopped(VididiError):
    """Training was asked to stop (SIGTERM / SIGUSR1) and saved its state; the CLI exits 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Catches SIGTERM / SIGUSR1 while training: the loop finishes its step, saves and stops. Under DDP
    the ranks agree on the step through an all-reduce of the flag, at logging steps only (an all-reduce
    waits for the device: once per step would cost the trainer's speed; SLURM's warning comes minutes
    before the limit)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._catch)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _catch(self, signum, frame) -> None:
        self.signum = signum

    def requested(self, world_size: int, device, agree: bool) -> bool:
        if world_size > 1:
            if not agree:
                return False
            flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.signum = int(flag)
        return self.signum != 0


def pretrain(config: dict, run: cfgmod.Run) -> Path:
    """Train `run` to its budget (`pretrain.steps`, or `pretrain.epochs` resolved to steps by
    config.pretrain_settings), resuming if possible; return checkpoints/final.pt."""
    rank, world_size = init_distributed()
    if is_main():  # one trainer per run: a second one (an orphan of a killed Snakemake, a hand run) stops here
        with exclusive_lock(layout.train_lock(config, run), f"training {run.name}"):
            return _pretrain(config, run, rank, world_size)
    return _pretrain(config, run, rank, world_size)


def _pretrain(config: dict, run: cfgmod.Run, rank: int, world_size: int) -> Path:
    settings = cfgmod.pretrain_settings(config, run)
    out_dir = layout.run_dir(config, run)
    ckpt_dir = layout.checkpoint_dir(config, run)
    device = rank_device(config["device"], rank)
    index = DatasetIndex.for_dataset(config, run.dataset)
    settings_hash = cfgmod.run_hash(settings, index.content)
    if run.framework == cfgmod.EXTERNAL:  # an encoder file from elsewhere becomes final.pt: no training
        if is_main():
            _import_external(config, run, settings, settings_hash, index, device)
        return layout.final_checkpoint(config, run)
    # (settings omit the keys that do not change weights, and carry a variant's pretrain overrides)
    clips_cfg, pre = settings["clips"], cfgmod.run_pretrain_options(config, settings)
    model = build_model(settings, num_classes=len(index.classes)).to(device)
    if pre["precision"] == "fp64":  # exact-arithmetic checks (DDP == one process); slow
        model = model.double()
    if pre["channels_last"]:
        model = model.to(memory_format=torch.channels_last_3d)
    started = time.time()

    if run.framework == cfgmod.NO_TRAINING:  # the random-init floor: nothing to train
        if is_main():
            _write_info(out_dir, settings, settings_hash, index, steps=0, wall=time.time() - started, device=device,
                        world_size=world_size)  # fmt: skip
            _write_final(layout.final_checkpoint(config, run), model, settings, settings_hash, index, steps=0)
        return layout.final_checkpoint(config, run)

    if world_size > 1:  # before the optimiser: on CPU (gloo) the converter builds new BatchNorm parameters
        model = convert_sync_batchnorm(model)
    compile_model(model, device, pre.get("compile", "auto"))
    optimizer = make_optimizer(model, pre, device)
    total = pre["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, pre["warmup_steps"], pre["min_lr_ratio"])
    )
    start_step, segments = resume_checkpoint(ckpt_dir, settings_hash, total, model, optimizer, scheduler)
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    schedule = BalancedSchedule(settings["variant"]["schedule"], seed=run.seed)
    on_device = pre.get("augment_on", "loader") == "device"
    stats = index.stats
    trainer = Trainer(
        model, optimizer, scheduler, schedule,
        StepInput(stats["mean"], stats["sigma"], clips_cfg["frames"], settings["variant"]["scaling"]),
        device, pre["precision"], pre["channels_last"], pre["grad_clip"], total,
        augment=DeviceAugment(clips_cfg["size"], device) if on_device else None,
    )  # fmt: skip
    frames_augment = FramesViewAugment({**config["augment"], **settings["augment"]}, run.seed, rank, world_size)
    trainer.frames_augment = frames_augment if frames_augment.active else None
    train_videos = index.select("train")
    if len(train_videos) < pre["batch_size"]:
        raise VididiError(f"{run.dataset}: {len(train_videos)} training videos, fewer than batch_size={pre['batch_size']}")
    epochs = total * pre["batch_size"] / len(train_videos)  # passes over the readable training videos
    log.info("%s: %d steps of %d videos = %.2f epochs of %d training videos", run.name, total, pre["batch_size"], epochs, len(train_videos))
    sampler = StepBatches(train_videos, pre["batch_size"], run.seed, start_step, total, rank, world_size)
    data = TrainClips(index, clips_cfg, settings["augment"], on="device" if on_device else "loader")
    batches = loader(data, pre["num_workers"], batch_sampler=sampler, pin_memory=on_device and device.type == "cuda")
    monitor = _make_monitor(index, settings, pre, device) if pre["monitor_every"] and is_main() else None
    logger = (TrainLog(layout.train_log(config, run), start_step, len(train_videos), pre["batch_size"],
                       monitor=monitor is not None) if is_main() else None)  # fmt: skip
    monitor_seconds = train_loop(trainer, batches, start_step, segments, ckpt_dir, settings_hash, logger, pre, run.name,
                                 started, monitor=monitor)  # fmt: skip
    if is_main():
        core = model.module if hasattr(model, "module") else model
        # train_info.json first: a final.pt on disk always has the record that describes it
        monitor_info = ({"every": pre["monitor_every"], "videos": len(monitor.videos), "seconds": round(monitor_seconds, 1)}
                        if monitor is not None else None)  # fmt: skip
        _write_info(out_dir, settings, settings_hash, index, steps=total, wall=sum(s["seconds"] for s in segments),
                    device=device, world_size=world_size, segments=segments, epochs=epochs, monitor=monitor_info)  # fmt: skip
        _write_final(layout.final_checkpoint(config, run), core, settings, settings_hash, index, steps=total)
    finish_distributed()
    return layout.final_checkpoint(config, run)


def train_loop(trainer: Trainer, batches, start_step: int, segments: list[dict], ckpt_dir: Path, settings_hash: str,
               logger: TrainLog | None, every: dict, desc: str, started: float, monitor=None) -> float:  # fmt: skip
    """Steps `start_step`..`trainer.total_steps` (pretraining and fine-tuning alike): log every
    `every["log_every"]` steps, stop on a non-finite loss, write last.pt atomically every
    `every["checkpoint_every"]` steps and at the end; SIGTERM / SIGUSR1 save last.pt and stop
    (`Stopped`). Appends this segment of the training to `segments` (its seconds counted from
    `started`). `monitor` (pretraining's kNN monitor) runs every `every["monitor_every"]` steps and
    after the last; returns the seconds it took."""
    total = trainer.total_steps
    optimizer, scheduler = trainer.optimizer, trainer.scheduler
    world_size = world()[1]
    segment = {"from_step": start_step, "to_step": start_step, "seconds": 0.0, "code": code_version()}
    if start_step < total:  # (a finished last.pt whose final.pt is missing adds no segment)
        segments.append(segment)
    trainer.model.train()
    bar = progress(total=total, initial=start_step, desc=desc, unit="step", **({} if is_main() else {"disable": True}))
    tick = time.time()
    monitor_seconds = 0.0
    with StopRequest() as stop:
        for step, batch in enumerate(batches, start=start_step):
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            loss, terms, pair = trainer.step(step, batch)
            done = step + 1
            knn = None
            if monitor is not None and (done % every["monitor_every"] == 0 or done == total):
                began = time.time()
                knn = monitor(trainer.core.encoder if hasattr(trainer.core, "encoder") else trainer.core)
                tick += time.time() - began  # the clip rate counts training only
                monitor_seconds += time.time() - began
            if logger:
                logger.add(step, loss, terms, pair, lr, knn)
            stopping = stop.requested(world_size, trainer.device, agree=done % every["log_every"] == 0)
            checkpoint = done % every["checkpoint_every"] == 0 or done == total or stopping
            if done % every["log_every"] == 0 or checkpoint:
                rows = logger.flush(seconds=time.time() - tick) if logger else []
                tick = time.time()
                _check_finite(rows, loss, step, pair, ckpt_dir)
                if rows:
                    last = rows[-1]
                    knn_now = {"knn_r1": f"{100 * knn:.1f}"} if knn is not None else {}
                    bar.set_postfix(loss=f"{last['loss']:.4g}", pair=last["pair"], lr=f"{last['lr']:.2e}",
                                    clips_s=last["clips_per_s"], **knn_now)  # fmt: skip
                bar.update(done - bar.n)
            if checkpoint:
                segment.update(to_step=done, seconds=round(time.time() - started, 1))
                if is_main():
                    _save_checkpoint(ckpt_dir / layout.LAST_CHECKPOINT, done, trainer.model, optimizer, scheduler, settings_hash, segments)
                if world_size > 1:
                    dist.barrier()
            if stopping and done < total:
                bar.close()
                name = signal.Signals(stop.signum).name
                raise Stopped(f"stopped by {name} after step {done} of {total}; {ckpt_dir / layout.LAST_CHECKPOINT} "
                              f"holds it: run the stage again to resume", stop.signum)  # fmt: skip
    bar.close()
    segment.update(to_step=total, seconds=round(time.time() - started, 1))  # (not listed when nothing was trained)
    return monitor_seconds


def finish_distributed() -> None:
    """Wait for every process, then leave the process group (nothing without torchrun)."""
    if world()[1] > 1:
        dist.barrier()
        dist.destroy_process_group()


def _make_monitor(index: DatasetIndex, settings: dict, pre: dict, device: torch.device) -> KnnMonitor:
    """The online kNN monitor of a run (vididi/ssl/monitor.py); its encoder copy is built with the
    global RNG forked, so the training's random streams do not move."""
    backbone = settings["backbone"]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        copy = build_backbone(backbone["name"], **{k: v for k, v in backbone.items() if k != "name"})
    videos = monitor_videos(index, pre["monitor_videos"], settings["seed"])
    return KnnMonitor(index, settings["clips"], videos, settings["variant"]["scaling"], copy, device)


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; (0, 1) without torchrun."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return world()


def rank_device(name: str, rank: int) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def _check_finite(rows: list[dict], loss: torch.Tensor, step: int, pair, ckpt_dir: Path) -> None:
    bad = [r for r in rows if not math.isfinite(r["loss"])]
    if bad or not torch.isfinite(loss):
        at, at_pair = (bad[0]["step"], bad[0]["pair"]) if bad else (step, f"{pair[0]}{pair[1]}")
        raise VididiError(
            f"non-finite loss at step {at} (order pair {at_pair}); stopped. The last good checkpoint is "
            f"{ckpt_dir / layout.LAST_CHECKPOINT} (lower pretrain.lr or set pretrain.grad_clip)"
        )


class TrainLog:
    """train_log.csv: one row per step. Losses stay on the device until a flush (one sync per
    `log_every` steps, not per step); a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, start_step: int, n_videos: int, batch_size: int, clips_per_sample: int = 2,
                 monitor: bool = False):  # fmt: skip
        self.path, self.n_videos, self.batch_size, self.clips_per_sample = path, n_videos, batch_size, clips_per_sample
        self.monitor = monitor
        self.pending: list[tuple] = []
        self.header: list[str] | None = None
        if path.is_file():
            with path.open() as f:
                rows = list(csv.reader(f))
            if rows:
                self.header = rows[0]
                if monitor and MONITOR_COLUMN not in self.header:  # monitored from this segment on
                    self.header = [*self.header, MONITOR_COLUMN]
                kept = [r for r in rows[1:] if int(r[0]) < start_step]
                with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                    csv.writer(f).writerows([self.header, *kept])

    def add(self, step: int, loss: torch.Tensor, terms: dict, pair, lr: float, knn: float | None = None) -> None:
        """`knn`: the monitor's R@1 after this step, or None (an empty cell) between evaluations."""
        self.pending.append((step, loss, terms, pair, lr, knn))

    def flush(self, seconds: float) -> list[dict]:
        """Append the pending steps (with the clip rate over `seconds`) to the CSV; return them."""
        if not self.pending:
            return []
        rate = round(self.clips_per_sample * self.batch_size * len(self.pending) / max(seconds, 1e-9), 1)
        rows = [
            {"step": step, "epoch": step * self.batch_size // self.n_videos, "loss": float(loss),
             **{k: float(v) for k, v in terms.items()}, "pair": f"{pair[0]}{pair[1]}", "lr": lr, "clips_per_s": rate,
             **({MONITOR_COLUMN: "" if knn is None else knn} if self.monitor else {})}
            for step, loss, terms, pair, lr, knn in self.pending
        ]  # fmt: skip
        self.pending = []
        self.header = self.header or list(rows[0])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.header, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerows(rows)
        return rows


def _save_checkpoint(path: Path, step: int, model, optimizer, scheduler, settings_hash: str, segments: list[dict]) -> None:
    core = model.module if hasattr(model, "module") else model
    state = {
        "step": step,
        "settings_hash": settings_hash,
        "segments": json.dumps(segments),  # the training's time so far, one entry per (re)start
        "model": core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resume_checkpoint(ckpt_dir: Path, settings_hash: str, total: int, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    """(step to start from, earlier segments of this training): resume from last.pt when it holds a
    training with these settings. A finished one made by this code gives `total` (nothing to train: the
    caller writes its result from it); one finished by other code starts over."""
    path = ckpt_dir / layout.LAST_CHECKPOINT
    if not path.is_file():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unreadable checkpoint is set aside, never silently trusted
        aside = _unused_path(path.with_name(f"last.unreadable-{int(time.time())}.pt"))
        path.rename(aside)
        log.warning("checkpoint %s is unreadable (%s); moved to %s, starting over", path, exc, aside)
        return 0, []
    if state.get("settings_hash") != settings_hash:
        aside = _unused_path(ckpt_dir.with_name(f"checkpoints.stale-{state.get('settings_hash')}"))
        ckpt_dir.rename(aside)
        log.warning("the checkpoint was made with other settings; moved it to %s and starting over", aside)
        return 0, []
    segments = json.loads(state.get("segments", "[]"))
    if state["step"] >= total and {s["code"] for s in segments} != {code_version()}:
        log.info("%s holds a training finished by other code (%s): training again from step 0 on %s", path,
                 ", ".join(sorted({s["code"] for s in segments})), code_version())  # fmt: skip
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    earlier = {s["code"] for s in segments} - {code_version()}
    if earlier:
        log.warning("resuming a training begun with other code (%s, now %s); %s lists both",
                    ", ".join(sorted(earlier)), code_version(), layout.TRAIN_INFO)
    if state["step"] >= total:
        log.info("%s holds this finished training: writing %s from it (no training)", path, layout.FINAL_CHECKPOINT)
    else:
        log.info("resuming from %s at step %d", path, state["step"])
    return int(state["step"]), segments


def _unused_path(path: Path) -> Path:
    """`path`, or its name with -2, -3, ... (before a .pt suffix) when taken: a set-aside checkpoint
    never replaces an earlier one (settings switched back and forth, two unreadable files in a second)."""
    suffix = ".pt" if path.name.endswith(".pt") else ""
    stem = path.name[: len(path.name) - len(suffix)]
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}-{n}{suffix}")
    return candidate


def _write_final(path: Path, model, settings: dict, settings_hash: str, index: DatasetIndex | None, steps: int,
                 stats: dict | None = None, source: dict | None = None) -> None:  # fmt: skip
    """The trained encoder and what evaluation needs to use it (loads with weights_only=True): its
    backbone, the dataset statistics and derivative scaling its inputs are normalised with (`stats`
    replaces the index's), and for an external run where it came from."""
    encoder = model.encoder if hasattr(model, "encoder") else model
    state = {
        "encoder": {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
        "backbone": json.dumps(settings["backbone"]),
        "settings_hash": settings_hash,
        "steps": steps,
        "stats": json.dumps(stats or index.stats),
        "scaling": settings.get("variant", {}).get("scaling", DEFAULT_SCALING),
    }
    if source:
        state["source"] = json.dumps(source)
    target = getattr(model, "target_encoder", None)  # BYOL: the EMA target, for `evaluation.target_encoder`
    if target is not None:
        state["target_encoder"] = {k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _import_external(config: dict, run: cfgmod.Run, settings: dict, settings_hash: str, index: DatasetIndex, device) -> None:
    """An external run's final.pt from its `checkpoint`: a vididi final.pt or exported encoder keeps
    its normalisation; a bare state dict is normalised with the run's dataset statistics and the
    default scaling. Keys that do not fit the backbone end in one line that lists them."""
    started = time.time()
    path = Path(run.checkpoint)
    file = read_encoder_file(path)
    encoder = encoder_from_file(file, path, settings["backbone"])
    scaling = file.scaling or DEFAULT_SCALING
    source = {"path": str(path), "kind": file.kind, "normalisation": "the file's" if file.stats else f"{run.dataset}'s"}
    _write_info(layout.run_dir(config, run), settings, settings_hash, index, steps=0, wall=time.time() - started,
                device=device, world_size=1)  # fmt: skip
    _write_final(layout.final_checkpoint(config, run), encoder, {**settings, "variant": {"scaling": scaling}},
                 settings_hash, index, steps=0, stats=file.stats, source=source)  # fmt: skip
    log.info("%s: imported %s (%s) as %s", run.name, path, file.kind, layout.final_checkpoint(config, run))


def _write_info(out_dir: Path, settings: dict, settings_hash: str, index: DatasetIndex, steps: int, wall: float,
                device, world_size: int, segments: list[dict] | None = None, epochs: float | None = None,
                monitor: dict | None = None) -> None:  # fmt: skip
    """wall_seconds: the training's time summed over its segments (an interrupted run has several);
    epochs: steps x batch / the readable training videos; `monitor` (when on): every how many steps,
    on how many videos, and the seconds it took in the last segment (they are part of wall_seconds).
    `settings_hash` is the run hash (settings + the data's content), also in final.pt: vididi.stamps
    reads it here, without torch."""
    write_json(out_dir / layout.TRAIN_INFO, {
        "steps": steps, "epochs": None if epochs is None else round(epochs, 2), "wall_seconds": round(wall, 1),
        "device": str(device), "processes": world_size, "finished": time.strftime("%Y-%m-%d"), **provenance(), "segments": segments or [],
        "settings_hash": settings_hash, "settings": {**settings, "data_content": index.content},
        **({"monitor": monitor} if monitor else {}),
    })  # fmt: skip
