"""Training-step benchmark (a script, not a test): the real trainer against a bare PyTorch loop.

One run, one model, one batch. Both loops train copies of the same model with the same loss,
optimiser and precision; they are timed interleaved (the order alternating every iteration), so
drift on a shared machine hits both alike, after warm-up iterations; medians of the timed steps.

- bare:     the derivative views of both clips precomputed (every order, float, on the device, in
            the model's memory format); step k takes the views of the trainer's pair at step k
            (the same tensors the trainer computes), then
            `loss = model(v1, v2); opt.zero_grad(); loss.backward(); opt.step()`.
- trainer:  `vididi.ssl.trainer.Trainer.step` on uint8 clips held in (host) memory as the loader hands
            them over (no loader): upload, uint8 -> float with the clips' colour-jitter maps, the
            step's order pair from the balanced schedule, the two derivative views, the model, the
            optimiser, the lr scheduler and `after_step`.
  overhead = median over iterations of trainer / bare - 1 (each pair timed back to back)  target <= 5%
- compiled: the same two loops on two more copies whose encoder and projector are compiled with
            `vididi.ssl.trainer.compile_model` (the `pretrain.compile` switch; fused AdamW where
            `pretrain.fused_optimizer` resolves on), timed in the same interleaved rotation, so
            eager and compiled figures come from the same run; the first (compiling) step of each is
            reported apart. `--no-compile` skips them (the compile takes minutes on 2 CPU cores).
- `Trainer.views` (everything the trainer does before the model), and inside it `apply_colour`
  (upload, the colour jitter the loader hands to the device, centring), `derivative_view` and
  `schedule.pair` timed alone; share = median time / median trainer step.
  derivatives + schedule (derivative_view x2 + schedule.pair) share            target <= 2%
On a shared machine other jobs only ever add time, so the same figures are also given from the
fastest iteration of each (min / min): when the two estimates disagree, the verdict is noise-bound.

Defaults come from config.yaml (synthetic: batch 32, clips of T+2 = 10 frames at 56x56 -> views of
8 frames; small3d; VICReg) with the ViDiDi variant (all9), so every derivative order occurs:

    .venv/bin/python benchmarks/bench_train.py                          # ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_train.py --backbone r3d_18 --size 112 --frames 16 --device cuda
    .venv/bin/python benchmarks/bench_train.py --backbone r3d_18 --size 112 --frames 16 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vididi import config as cfgmod  # noqa: E402
from vididi.data.augment import apply_colour, colour_jitter_map  # noqa: E402
from vididi.ssl.derivatives import derivative_view, measure_sigma, to_float  # noqa: E402
from vididi.ssl.encoder import resolve_device  # noqa: E402
from vididi.ssl.schedule import BalancedSchedule  # noqa: E402
from vididi.ssl.trainer import StepInput, Trainer, build_model, compile_model, lr_factor, make_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a source tree too (a bare GPU host: no installed package)
OVERHEAD_TARGET = 0.05  # trainer step <= 1.05 x bare step
VIEWS_TARGET = 0.02  # derivatives + schedule <= 2% of the trainer step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "config.yaml"), help="config whose settings are the defaults")
    p.add_argument("--dataset", default="synthetic", help="dataset of the config whose clip settings to use")
    p.add_argument("--framework", default="vicreg", choices=["simclr", "byol", "vicreg", "supervised"])
    p.add_argument("--variant", default="vididi", help="variant of the config (its schedule and scaling)")
    p.add_argument("--backbone", default="small3d", choices=list(cfgmod.BACKBONES))
    p.add_argument("--size", type=int, help="crop size (default: the dataset's clips.size)")
    p.add_argument("--frames", type=int, help="frames T per view (default: clips.frames); clips have T+2")
    p.add_argument("--batch", type=int, help="batch size (default: pretrain.batch_size)")
    p.add_argument("--device", help="cpu | cuda | auto (default: the config's device)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the config's threads)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations of each loop first")
    p.add_argument("--steps", type=int, default=20, help="timed iterations of each loop")
    p.add_argument("--repeats", type=int, default=20, help="repetitions of each views/derivative timing")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled bare loop and trainer")
    p.add_argument("--json", type=Path, help="also write clips/s of each loop here (benchmarks/gpu_check.sh)")
    return p.parse_args(argv)


def setup(args: argparse.Namespace) -> dict:
    """The benchmark's model copies, optimisers, trainer, synthetic batch and settings."""
    config = cfgmod.load_config([args.config])
    if args.dataset not in config["datasets"]:
        sys.exit(f"bench_train: dataset {args.dataset!r} is not in {args.config}")
    if args.variant not in config["variants"]:
        sys.exit(f"bench_train: variant {args.variant!r} is not in {args.config} (variants: {', '.join(config['variants'])})")
    run = cfgmod.Run(args.dataset, args.framework, args.variant, args.backbone, 0, (args.dataset,))
    settings = cfgmod.pretrain_settings(config, run)
    clips, pre = settings["clips"], settings["pretrain"]
    frames = args.frames or clips["frames"]
    size = args.size or clips["size"]
    batch = args.batch or pre["batch_size"]
    device = resolve_device(args.device or config["device"])
    torch.set_num_threads(args.threads or config["threads"])

    n_classes = 8
    model = build_model(settings, num_classes=n_classes).to(device)
    memory_format = torch.channels_last_3d if pre["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    bare_model = copy.deepcopy(model)
    initial = copy.deepcopy(model)  # the compiled copies start from the same weights

    # synthetic uint8 clips on the host, as the loader delivers them (pinned for a fast upload)
    g = torch.Generator().manual_seed(0)
    clip1 = torch.randint(0, 256, (batch, 3, frames + 2, size, size), dtype=torch.uint8, generator=g)
    clip2 = torch.randint(0, 256, (batch, 3, frames + 2, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    # colour-jitter maps as the loader draws them (the trainer applies them on the device)
    rng = np.random.default_rng(0)
    colours = [random_colour_maps(batch, rng) for _ in range(2)]
    if device.type == "cuda":
        clip1, clip2, labels = clip1.pin_memory(), clip2.pin_memory(), labels.pin_memory()
        colours = [c.pin_memory() for c in colours]
    train_batch = (clip1, clip2, colours[0], colours[1], labels)
    mean = [0.45, 0.45, 0.45]
    sigma = list(measure_sigma(to_float(clip1[:4], mean), frames))

    total = args.warmup + args.steps
    step_input = StepInput(mean, sigma, frames, settings["variant"]["scaling"])

    def make_trainer(m):
        optimizer = make_optimizer(m, pre, device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, pre["warmup_steps"], pre["min_lr_ratio"])
        )
        schedule = BalancedSchedule(settings["variant"]["schedule"], seed=0)
        return Trainer(m, optimizer, scheduler, schedule, step_input, device, pre["precision"],
                       pre["channels_last"], pre["grad_clip"], total)  # fmt: skip

    trainer = make_trainer(model)
    schedule = trainer.schedule
    compiled = {}
    if not args.no_compile:
        compiled_trainer_model, compiled_bare_model = copy.deepcopy(initial), copy.deepcopy(initial)
        compile_model(compiled_trainer_model, device, True)
        compile_model(compiled_bare_model, device, True)
        compiled = {"trainer": make_trainer(compiled_trainer_model), "bare_model": compiled_bare_model,
                    "bare_optimizer": make_optimizer(compiled_bare_model, pre, device)}  # fmt: skip

    # the bare loop: same model (a copy), same optimiser settings, every view ready on the device
    bare_optimizer = make_optimizer(bare_model, pre, device)
    x1, x2 = to_float(clip1.to(device), mean), to_float(clip2.to(device), mean)
    scaling = settings["variant"]["scaling"]
    views = {
        order: tuple(derivative_view(x, order, frames, scaling, sigma).contiguous(memory_format=memory_format) for x in (x1, x2))
        for order in sorted(schedule.orders_used())
    }  # fmt: skip
    reference_schedule = BalancedSchedule(settings["variant"]["schedule"], seed=0)
    pairs = [reference_schedule.pair(k) for k in range(total)]
    return {
        "settings": settings, "device": device, "frames": frames, "size": size, "batch": batch,
        "trainer": trainer, "clip1": clip1, "clip2": clip2, "labels": labels, "train_batch": train_batch,
        "bare_model": bare_model, "bare_optimizer": bare_optimizer, "views": views, "pairs": pairs,
        "bare_labels": labels.to(device), "autocast": trainer.autocast, "compiled": compiled,
    }  # fmt: skip


def random_colour_maps(batch: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, 3, 4) colour-jitter maps [M | t] drawn with the default jitter strengths."""
    maps = []
    for _ in range(batch):
        M, t = colour_jitter_map(np.full(3, 0.45), rng, 0.4, 0.4, 0.4, 0.1)
        maps.append(np.hstack([M, t[:, None]]))
    return torch.from_numpy(np.stack(maps).astype(np.float32))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds `fn()` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bare_step(s: dict, step: int, model=None, optimizer=None) -> None:
    model, optimizer = model or s["bare_model"], optimizer or s["bare_optimizer"]
    a, b = s["pairs"][step]
    with s["autocast"]:
        loss, _ = model(s["views"][a][0], s["views"][b][1], s["bare_labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_steps(s: dict, warmup: int, steps: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per timed iteration of each loop (trainer, bare, and their compiled copies),
    interleaved with the order rotating every iteration; and each loop's first (compiling) step."""
    device, c = s["device"], s["compiled"]
    loops = {
        "trainer": lambda i: s["trainer"].step(i, s["train_batch"]),
        "bare": lambda i: bare_step(s, i),
    }
    if c:
        loops["trainer compiled"] = lambda i: c["trainer"].step(i, s["train_batch"])
        loops["bare compiled"] = lambda i: bare_step(s, i, c["bare_model"], c["bare_optimizer"])
    names = list(loops)
    times: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, float] = {}
    for i in range(warmup + steps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t = timed(lambda: loops[name](i), device)
            if i == 0:
                first[name] = t
            if i >= warmup:
                times[name].append(t)
    return times, first


def time_views(s: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of Trainer.views and of its parts, over `repeats` steps of the schedule."""
    trainer, device, inp = s["trainer"], s["device"], s["trainer"].inp
    x1 = to_float(s["clip1"].to(device), inp.mean)
    clip1, clip2, colour1, colour2, _ = s["train_batch"]
    out: dict[str, list[float]] = {"views": [], "colour": [], "derivative_view": [], "pair": []}
    for k in range(repeats):
        a, b = trainer.schedule.pair(k)
        out["views"].append(timed(lambda: trainer.views(s["train_batch"], k), device))
        out["colour"].append(timed(lambda: (apply_colour(clip1.to(device), colour1.to(device), inp.mean),
                                            apply_colour(clip2.to(device), colour2.to(device), inp.mean)), device))  # fmt: skip
        out["derivative_view"].append(timed(lambda: (
            derivative_view(x1, a, inp.frames, inp.scaling, inp.sigma),
            derivative_view(x1, b, inp.frames, inp.scaling, inp.sigma)), device))  # fmt: skip
    # schedule.pair costs microseconds: time 900 consecutive steps (100 cycles of all9, so the
    # per-cycle permutation draw is included at its real rate) on a fresh schedule, per call
    schedule = BalancedSchedule(trainer.schedule.pairs, seed=1)
    start = time.perf_counter()
    for k in range(900):
        schedule.pair(k)
    out["pair"] = [(time.perf_counter() - start) / 900]
    return out


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = setup(args)
    settings, device = s["settings"], s["device"]
    loop_times, first = time_steps(s, args.warmup, args.steps)
    trainer_times, bare_times = loop_times["trainer"], loop_times["bare"]
    parts = time_views(s, args.repeats)

    t_trainer = statistics.median(trainer_times)
    ratios = [t / b - 1 for t, b in zip(trainer_times, bare_times)]
    r25, overhead, r75 = quartiles(ratios)
    overhead_min = min(trainer_times) / min(bare_times) - 1
    t_views = statistics.median(parts["views"])
    views_share, views_share_min = t_views / t_trainer, min(parts["views"]) / min(trainer_times)

    precision = "bf16 autocast" if isinstance(s["autocast"], torch.autocast) else "fp32"
    where = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    schedule = settings["variant"]["schedule"]
    print(f"vididi training-step benchmark  (torch {torch.__version__}, device {device}, {where})")
    print(f"  {args.framework} / {args.variant} (schedule {schedule if isinstance(schedule, str) else 'custom'}, "
          f"scaling {settings['variant']['scaling']}), backbone {args.backbone}, batch {s['batch']}, "
          f"clips uint8 3x{s['frames'] + 2}x{s['size']}x{s['size']} -> views 3x{s['frames']}x{s['size']}x{s['size']}, "
          f"{precision}, channels_last={settings['pretrain']['channels_last']}")  # fmt: skip
    print(f"  {args.steps} timed iterations of each loop after {args.warmup} warm-up, interleaved; "
          f"views timed over {args.repeats} schedule steps")
    print()
    print(f"  {'':46s} {'median ms':>10s} {'p25 - p75 ms':>19s} {'min ms':>10s} {'of step':>8s}")

    def row(name: str, values: list[float]) -> None:
        q25, q50, q75 = quartiles(values)
        print(f"  {name:46s} {1e3 * q50:10.3f} {1e3 * q25:9.3f} -{1e3 * q75:9.3f} {1e3 * min(values):10.3f} "
              f"{100 * q50 / t_trainer:7.2f}%")  # fmt: skip

    row("bare PyTorch step (float views ready)", bare_times)
    row("Trainer.step (uint8 clips in memory)", trainer_times)
    if "bare compiled" in loop_times:
        row("bare PyTorch step, compiled", loop_times["bare compiled"])
        row("Trainer.step, compiled", loop_times["trainer compiled"])
    row("Trainer.views (everything before the model)", parts["views"])
    row("  apply_colour x2 (upload, jitter, centring)", parts["colour"])
    row("  derivative_view x2 (the step's pair)", parts["derivative_view"])
    row("  schedule.pair", parts["pair"])
    print()
    verdict = lambda ok: "PASS" if ok else "MISS"  # noqa: E731
    print(f"  trainer overhead vs bare: median {100 * overhead:+.2f}% (p25 {100 * r25:+.2f}%, p75 {100 * r75:+.2f}%), "
          f"min/min {100 * overhead_min:+.2f}%   target <= {100 * OVERHEAD_TARGET:.0f}%   "
          f"{verdict(overhead <= OVERHEAD_TARGET)} (median), {verdict(overhead_min <= OVERHEAD_TARGET)} (min)")  # fmt: skip
    derivs = (statistics.median(parts["derivative_view"]) + parts["pair"][0]) / t_trainer
    derivs_min = (min(parts["derivative_view"]) + parts["pair"][0]) / min(trainer_times)
    print(f"  derivatives + schedule (derivative_view x2 + schedule.pair): median {100 * derivs:.2f}%, "
          f"min/min {100 * derivs_min:.2f}% of the trainer step   target <= {100 * VIEWS_TARGET:.0f}%   "
          f"{verdict(derivs <= VIEWS_TARGET)} (median), {verdict(derivs_min <= VIEWS_TARGET)} (min)")  # fmt: skip
    print(f"  everything before the model (Trainer.views, incl. the colour jitter done on the device): "
          f"median {100 * views_share:.2f}%, min/min {100 * views_share_min:.2f}%")
    if "bare compiled" in loop_times:
        med = {name: statistics.median(v) for name, v in loop_times.items()}
        clips = 2 * s["batch"]  # two views per video
        print(f"  clips/s (2 views x batch / median step): bare {clips / med['bare']:.1f}, trainer {clips / med['trainer']:.1f}, "
              f"bare compiled {clips / med['bare compiled']:.1f}, trainer compiled {clips / med['trainer compiled']:.1f}")  # fmt: skip
        print(f"  compiled vs eager: bare {med['bare'] / med['bare compiled']:.2f}x, trainer {med['trainer'] / med['trainer compiled']:.2f}x; "
              f"compiled trainer = {100 * med['bare compiled'] / med['trainer compiled']:.1f}% of the compiled bare loop's rate "
              f"(GPU target >= 90%, docs/benchmarks.md)")  # fmt: skip
        print(f"  first step (includes compiling): bare {first['bare']:.2f} s, trainer {first['trainer']:.2f} s, "
              f"bare compiled {first['bare compiled']:.2f} s, trainer compiled {first['trainer compiled']:.2f} s")  # fmt: skip
    print(f"  load average: {os.getloadavg()}")
    if args.json:
        clips = 2 * s["batch"]  # two views per video
        rates = {name: clips / statistics.median(v) for name, v in loop_times.items()}
        args.json.write_text(json.dumps({"clips_per_s": rates, "first_step_s": first, "device": where,
                                         "batch": s["batch"], "backbone": args.backbone}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
