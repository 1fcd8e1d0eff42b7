"""Supervised learnability check of the synthetic dataset (a script, not a test).

Is the default synthetic task learnable by the CPU-sized backbone at all? Trains small3d WITH labels
(the `supervised` framework, frames only) for a fixed wall-clock budget with the project's own trainer
and loader, then reports the classifier's top-1 on the TEST split (logits averaged over K centre clips
per video). Target: >= 80% after about two minutes on 2 CPU cores. Without this, no SSL comparison on
the dataset would mean anything.

    .venv/bin/python benchmarks/bench_supervised.py                 # default config.yaml, 120 s
    .venv/bin/python benchmarks/bench_supervised.py --seconds 60 --config config.yaml

The data stage must have run (`make run`, or `snakemake --cores all <data_dir>/shards/synthetic/index.tsv`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vididi import config as cfgmod  # noqa: E402
from vididi.data.loader import EvalClips, StepBatches, TrainClips, loader  # noqa: E402
from vididi.data.shards import DatasetIndex  # noqa: E402
from vididi.ssl.encoder import FrameEncoder  # noqa: E402
from vididi.ssl.schedule import BalancedSchedule  # noqa: E402
from vididi.ssl.trainer import StepInput, Trainer, build_model, lr_factor, make_optimizer  # noqa: E402

TARGET = 0.80


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config file(s) (default: config.yaml)")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seconds", type=float, default=120.0, help="training wall-clock budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch CPU threads (default: every core; the check runs alone, unlike pipeline jobs)")  # fmt: skip
    args = parser.parse_args()
    config = cfgmod.load_config(args.config or ["config.yaml"])
    torch.set_num_threads(args.threads)
    index = DatasetIndex.for_dataset(config, args.dataset)
    run = cfgmod.Run(args.dataset, "supervised", "base", "small3d", args.seed, (args.dataset,))
    settings = cfgmod.pretrain_settings(config, run)
    pre, clips = config["pretrain"], settings["clips"]
    model = build_model(settings, num_classes=len(index.classes))
    model = model.to(memory_format=torch.channels_last_3d).train()
    optimizer = make_optimizer(model, pre)
    # the lr schedule needs a length: assume the default step budget, decay stops there
    total = pre["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, pre["warmup_steps"], pre["min_lr_ratio"]))
    stats = index.stats
    trainer = Trainer(model, optimizer, scheduler, BalancedSchedule("frames_only", args.seed),
                      StepInput(stats["mean"], stats["sigma"], clips["frames"], "dataset"),
                      torch.device("cpu"), "fp32", True, None, total)  # fmt: skip
    train = index.select("train")
    sampler = StepBatches(train, pre["batch_size"], args.seed, 0, 10**9)
    batches = loader(TrainClips(index, clips, settings["augment"]), pre["num_workers"], batch_sampler=sampler)

    started, steps, accuracy = time.time(), 0, []
    for step, batch in enumerate(batches):
        _, terms, _ = trainer.step(step, batch)
        accuracy.append(float(terms["accuracy"]))
        steps = step + 1
        if time.time() - started >= args.seconds:
            break
    train_seconds = time.time() - started

    model.eval()
    frame_encoder = FrameEncoder(model.encoder, stats, "dataset", torch.device("cpu"))
    test = index.select("test")
    k = clips["eval_clips"]
    correct = 0
    with torch.no_grad():
        for video_clips, labels, _ in loader(EvalClips(index, test, clips), 0, batch_size=8):
            b = video_clips.shape[0]
            logits = model.classifier(frame_encoder(video_clips.flatten(0, 1))).view(b, k, -1).mean(dim=1)
            correct += int((logits.argmax(dim=1) == labels).sum())
    top1 = correct / len(test)
    chance = 1 / len(index.classes)
    print(f"supervised check: small3d on {args.dataset} split {index.split}, {len(train)} train / {len(test)} test videos, "
          f"{len(index.classes)} classes (chance {100 * chance:.1f}%)")  # fmt: skip
    print(f"  {steps} steps of batch {pre['batch_size']} in {train_seconds:.0f} s on {args.threads} threads; "
          f"train accuracy (last 20 steps) {100 * float(np.mean(accuracy[-20:])):.1f}%")  # fmt: skip
    print(f"  test top-1 {100 * top1:.1f}%   target >= {100 * TARGET:.0f}%   {'PASS' if top1 >= TARGET else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
