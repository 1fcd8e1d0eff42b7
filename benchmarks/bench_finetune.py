"""Fine-tuning cost at paper scale (a script, not a test): one epoch of R3D-18 on UCF101.

Times the real fine-tuning step (`vididi.ssl.finetune.FineTuner.step`: upload of uint8 clips, order-0
normalisation, dropout + linear head, label-smoothed cross-entropy, AdamW with the encoder at a tenth of
the head's rate, the lr schedule) on clips of `--frames` x `--size`^2 held in memory (no loader), and,
as the baseline of the same run, the same network's inference-only pass (eval mode, no gradient: what
the features stage and the test evaluation do per clip). Steps of the two are interleaved after
warm-up, so drift on a shared machine hits both alike; medians. An epoch is extrapolated from them:

    fine-tuning epoch = ceil(videos / batch) x median step       (one clip per video per step)
    inference epoch   = ceil(videos / batch) x median inference batch

Memory: on CUDA the peak of torch.cuda.max_memory_allocated over the training steps (and, separately,
over inference); on the CPU the process's peak resident set size (ru_maxrss), which includes the
interpreter and torch (~0.5 GB), so the difference to the value before the model existed is given.

    .venv/bin/python benchmarks/bench_finetune.py                      # R3D-18, 16x112x112, batch 8, CPU: minutes
    .venv/bin/python benchmarks/bench_finetune.py --quick              # batch 2, 2 timed steps: for gpu_check.sh
    .venv/bin/python benchmarks/bench_finetune.py --device cuda --batch 32 --steps 20

Defaults: UCF101 split 1's 9,537 training videos and 101 classes, R3D-18, 16 frames at 112x112.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vididi import config as cfgmod  # noqa: E402
from vididi.data.augment import IDENTITY_COLOUR  # noqa: E402
from vididi.ssl.encoder import FrameEncoder, resolve_device  # noqa: E402
from vididi.ssl.finetune import FineTuner  # noqa: E402
from vididi.ssl.frameworks import build_framework  # noqa: E402
from vididi.ssl.models import build_backbone, count_parameters  # noqa: E402
from vididi.ssl.trainer import StepInput, lr_factor, make_optimizer  # noqa: E402
from vididi.utils import machine  # noqa: E402

UCF101_TRAIN_VIDEOS, UCF101_CLASSES = 9537, 101


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="r3d_18")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps of each (after --warmup)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--videos", type=int, default=UCF101_TRAIN_VIDEOS)
    p.add_argument("--classes", type=int, default=UCF101_CLASSES)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--quick", action="store_true", help="batch 2, 1 warm-up and 2 timed steps (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 2, 2, 1
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ft = {**cfgmod.resolve({})["pretrain"], **cfgmod.resolve({})["finetune"]}  # the schema's recipe
    precision = "auto"  # bf16 autocast on CUDA, fp32 on the CPU, as the stage
    rss_before = peak_rss_gib()
    torch.manual_seed(0)
    model = build_framework("supervised", build_backbone(args.backbone),
                            {"num_classes": args.classes, "dropout": ft["dropout"], "label_smoothing": ft["label_smoothing"]})  # fmt: skip
    model = model.to(device, memory_format=torch.channels_last_3d)
    total = args.warmup + args.steps
    optimizer = make_optimizer(model, ft, device, encoder_lr_ratio=ft["encoder_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 10**6, ft["warmup_steps"], ft["min_lr_ratio"]))
    stats = {"mean": [0.45, 0.45, 0.45], "sigma": [0.25, 0.05, 0.05]}
    trainer = FineTuner(model, optimizer, scheduler, None, StepInput(stats["mean"], stats["sigma"], args.frames, "dataset"),
                        device, precision, True, None, 10**6, seed=0)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (args.batch, 3, args.frames, args.size, args.size), dtype=torch.uint8, generator=gen)
    batch = (clips, torch.from_numpy(IDENTITY_COLOUR).expand(args.batch, 3, 4).contiguous(),
             torch.randint(0, args.classes, (args.batch,), generator=gen))  # fmt: skip
    frame_encoder = FrameEncoder(model.encoder, stats, "dataset", device)

    def train_step(step: int) -> float:
        model.train()
        sync(device)
        start = time.perf_counter()
        trainer.step(step, batch)
        sync(device)
        return time.perf_counter() - start

    @torch.no_grad()
    def inference() -> float:
        model.eval()
        sync(device)
        start = time.perf_counter()
        with frame_encoder.autocast:
            model.logits(frame_encoder.inputs(clips))
        sync(device)
        return time.perf_counter() - start

    train_times, infer_times, train_mem, infer_mem = [], [], 0.0, 0.0
    for i in range(total):  # interleaved: step, then inference
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = train_step(i)
        if device.type == "cuda":
            train_mem = max(train_mem, torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()
        u = inference()
        if device.type == "cuda":
            infer_mem = max(infer_mem, torch.cuda.max_memory_allocated() / 2**30)
        if i >= args.warmup:
            train_times.append(t)
            infer_times.append(u)
        print(f"  step {i}{' (warm-up)' if i < args.warmup else ''}: fine-tune {t:.3f} s, inference {u:.3f} s", flush=True)
    step, infer = statistics.median(train_times), statistics.median(infer_times)
    batches = math.ceil(args.videos / args.batch)
    print(f"\nvididi fine-tuning benchmark  ({machine()}; device {device}, {args.threads} threads, torch {torch.__version__})")
    print(f"  {args.backbone} ({count_parameters(model.encoder) / 1e6:.1f}M parameters) + linear head ({args.classes} classes), "
          f"clips of {args.frames}x{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up; "
          f"precision {'bf16 autocast' if device.type == 'cuda' else 'fp32'}")  # fmt: skip
    print(f"  fine-tuning step  median {step:.3f} s (min {min(train_times):.3f}) = {args.batch / step:.2f} clips/s")
    print(f"  inference batch   median {infer:.3f} s (min {min(infer_times):.3f}) = {args.batch / infer:.2f} clips/s  (baseline)")
    print(f"  ratio fine-tuning / inference per clip: {step / infer:.2f}x")
    print(f"  one epoch of {args.videos} videos ({batches} batches, one clip each, no loader): "
          f"fine-tuning {batches * step / 60:.1f} min, inference {batches * infer / 60:.1f} min  (extrapolated from the medians)")
    if device.type == "cuda":
        print(f"  peak GPU memory: fine-tuning {train_mem:.2f} GiB, inference {infer_mem:.2f} GiB (batch {args.batch})")
    else:
        print(f"  peak resident memory: {peak_rss_gib():.2f} GiB ({peak_rss_gib() - rss_before:+.2f} GiB over the process "
              f"before the model; fine-tuning and inference together, batch {args.batch})")  # fmt: skip
    print(f"  load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
