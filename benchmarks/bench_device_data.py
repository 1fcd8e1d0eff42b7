"""Training-data benchmark of the two data paths (a script, not a test), for a GPU host.

`pretrain.augment_on: loader` (workers decode, crop, resize, flip; the trainer uploads uint8 clips)
against `pretrain.augment_on: device` (workers read stored bytes and draw; the training process
decodes JPEG on the device and augments the batch there), on the same shards, the same batches and
the same worker count, each timed until the batch's colour-mapped float clips are ready on the device
(what `Trainer.view` hands to the derivatives). Shards are written here with the real `ShardWriter`
(textured 170x128 frames, JPEG quality 90, and raw), so the script needs neither ffmpeg nor the
pipeline; clips of 16+2 frames at stride 2, 112x112, the paper's shape.

Reported per storage: samples/s (2 clips each) of both paths, and the device's own time for the
device path's augmentation of one batch (`DeviceAugment` alone on a prepared batch): the GPU time the
device path takes from training.

    python benchmarks/bench_device_data.py --device cuda --workers 8          # on a GPU host, ~2 min
    .venv/bin/python benchmarks/bench_device_data.py --smoke                  # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

AUGMENT = {
    "crop_scale": [0.4, 1.0], "crop_ratio": [0.75, 1.3333], "flip": 0.5, "grayscale": 0.2,
    "color_jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
}  # fmt: skip


def frames_of(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """A panning textured scene with a moving square and sensor noise (JPEG has real detail to code)."""
    big = rng.uniform(0, 255, (height // 8 + 8, width // 8 + 8, 3))
    scene = np.kron(big, np.ones((8, 8, 1)))  # blocks
    y, x = np.mgrid[0 : scene.shape[0], 0 : scene.shape[1]]
    scene += 40 * np.sin(x / 3.0)[..., None] * np.cos(y / 5.0)[..., None]  # fine detail
    out = []
    for t in range(n):
        oy, ox = t % 8, (2 * t) % 16
        frame = scene[oy : oy + height, ox : ox + width].copy()
        top, left = (3 * t) % (height - 20), (5 * t) % (width - 20)
        frame[top : top + 20, left : left + 20] = rng.uniform(0, 255, 3)
        frame += rng.normal(0, 3, frame.shape)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


def make_shard(root: Path, encoding: str, videos: int, n_frames: int, height: int, width: int):
    """One shard written by `ShardWriter`, and its `DatasetIndex` (built in memory: no index stage)."""
    import h5py

    from vididi.data.shards import DatasetIndex, ShardWriter

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(root / "shard-00000.h5", "w") as h5:
        writer = ShardWriter(h5, encoding, jpeg_quality=90)
        for i in range(videos):
            meta = {"video_id": f"v{i}", "path": f"v{i}", "splits": "1:train", "label": i % 4, "untrimmed": False}
            writer.add_video(meta, frames_of(rng, n_frames, height, width), height, width, 25.0)
        writer.close()
    return DatasetIndex(
        root=root, classes=["a", "b", "c", "d"], video_id=np.array([f"v{i}" for i in range(videos)], dtype=object),
        shard=np.zeros(videos, np.int64), frame_start=np.arange(videos, dtype=np.int64) * n_frames,
        n_frames=np.full(videos, n_frames, np.int64), height=np.full(videos, height, np.int64),
        width=np.full(videos, width, np.int64), fps=np.full(videos, 25.0), label=np.arange(videos, dtype=np.int64) % 4,
        untrimmed=np.zeros(videos, bool), splits=[{"1": "train"}] * videos, info={}, split="1",
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_per_second(index, clips: dict, on: str, device: torch.device, workers: int, batch: int, batches: int) -> float:
    """Steady-state samples/s until each batch's colour-mapped clips are on the device (2 warm-up batches)."""
    from vididi.data.augment import apply_colour
    from vididi.data.device_augment import DeviceAugment
    from vididi.data.loader import StepBatches, TrainClips, loader

    data = TrainClips(index, clips, AUGMENT, on=on)
    sampler = StepBatches(np.arange(len(index)), batch, seed=0, start_step=0, total_steps=batches + 2)
    it = iter(loader(data, workers, batch_sampler=sampler, pin_memory=device.type == "cuda"))
    augment = DeviceAugment(clips["size"], device) if on == "device" else None
    mean = torch.tensor([0.45, 0.45, 0.45], device=device)

    def ready(b):
        out = []
        for i in (0, 1):
            clip, colour = (augment(b[i], b[i + 2]) if augment else (b[i], b[i + 2]))
            out.append(apply_colour(clip.to(device, non_blocking=True), colour.to(device, non_blocking=True), mean))
        return out

    for _ in range(2):
        ready(next(it))
    sync(device)
    start, count = time.perf_counter(), 0
    for b in it:
        ready(b)
        count += len(b[4])
    sync(device)
    return count / (time.perf_counter() - start)


def device_augment_ms(index, clips: dict, device: torch.device, batch: int, repeats: int) -> float:
    """Median device time of `DeviceAugment` on one prepared batch (stored bytes already in host memory)."""
    from vididi.data.device_augment import DeviceAugment, collate_stored
    from vididi.data.loader import StepBatches, TrainClips

    data = TrainClips(index, clips, AUGMENT, on="device")
    items = StepBatches(np.arange(len(index)), batch, seed=0, start_step=0, total_steps=1).batch(0)
    stored, _, draws, _, _ = collate_stored([data[item] for item in items])
    if device.type == "cuda":
        stored = stored.pin_memory()
    augment = DeviceAugment(clips["size"], device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        augment(stored, draws)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times[1:]))


def agreement(index, clips: dict, device: torch.device, batch: int) -> dict:
    """The device path's clips (before the colour map) against the loader path's, same draws, one batch:
    the largest difference and the share of values that differ, in grey levels (on the CPU at most 1,
    tests/test_device_augment.py; on CUDA JPEG frames are decoded by nvJPEG instead of libjpeg-turbo)."""
    from vididi.data.device_augment import DeviceAugment
    from vididi.data.loader import StepBatches, TrainClips, loader

    sampler = StepBatches(np.arange(len(index)), batch, seed=1, start_step=0, total_steps=1)
    on_loader = next(iter(loader(TrainClips(index, clips, AUGMENT), 0, batch_sampler=sampler)))
    on_device = next(iter(loader(TrainClips(index, clips, AUGMENT, on="device"), 0, batch_sampler=sampler)))
    got, _ = DeviceAugment(clips["size"], device)(on_device[0], on_device[2])
    diff = (got.cpu() - on_loader[0].float()).abs()
    return {"max_grey_levels": float(diff.max()), "share_differing": float((diff > 0).float().mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="videos per batch (2 clips each)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=100, help="frames per video")
    parser.add_argument("--size", default="170x128", help="WIDTHxHEIGHT of the stored frames")
    parser.add_argument("--encodings", default="raw,jpeg")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks that the script runs)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.batch, args.batches, args.videos, args.frames, args.size = 1, 4, 2, 6, 24, "40x32"
    width, height = (int(v) for v in args.size.lower().split("x"))
    clips = {"frames": 16, "stride": 2, "size": 112} if not args.smoke else {"frames": 4, "stride": 2, "size": 24}
    device = torch.device(args.device)
    torch.set_num_threads(1 if args.smoke else min(4, os.cpu_count() or 1))

    from vididi.utils import machine

    rows = {}
    with tempfile.TemporaryDirectory(prefix="vididi-device-data-") as tmp:
        for enc in args.encodings.split(","):
            index = make_shard(Path(tmp) / enc, enc, args.videos, args.frames, height, width)
            rates = {on: samples_per_second(index, clips, on, device, args.workers, args.batch, args.batches)
                     for on in ("loader", "device")}  # fmt: skip
            rows[enc] = {**{f"{on}_samples_per_s": r for on, r in rates.items()}, **agreement(index, clips, device, args.batch),
                         "device_augment_ms_per_batch": device_augment_ms(index, clips, device, args.batch, 3 if args.smoke else 10)}  # fmt: skip
    print(f"vididi data paths: {args.videos} videos of {args.frames} frames {width}x{height}; clips of "
          f"{clips['frames']}+2 frames at stride 2, {clips['size']}x{clips['size']}; batch {args.batch}, {args.workers} workers, "
          f"device {device}")  # fmt: skip
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    print(f"  {'storage':<8}{'loader path samples/s':>24}{'device path samples/s':>24}{'device/loader':>15}"
          f"{'DeviceAugment ms/batch':>24}{'clips differ: max, share':>27}")  # fmt: skip
    for enc, r in rows.items():
        print(f"  {enc:<8}{r['loader_samples_per_s']:>24.1f}{r['device_samples_per_s']:>24.1f}"
              f"{r['device_samples_per_s'] / r['loader_samples_per_s']:>14.2f}x{r['device_augment_ms_per_batch']:>24.2f}"
              f"{r['max_grey_levels']:>18.0f} grey, {100 * r['share_differing']:.1f}%")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
