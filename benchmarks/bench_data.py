"""Data-stage benchmark (a script, not a test): extraction speed and training-sample throughput.

Measured in one run on the same videos: realistic 320x240 H.264 clips (panning multi-scale texture,
moving textured objects, sensor noise; x264 crf 23 with its default GOP) extracted at short side 128.

(a) frames/s of `extract_shard` (ffmpeg -> RGB -> JPEG or raw -> HDF5), sequential, against plain
    `ffmpeg -i f -vf scale=... -f null -` of the same files with the same binary; best of --repeats.
    Target: extraction >= 0.7x plain decode.
(b) training samples/s of the loader (TrainClips + StepBatches, 2 workers: two augmented clips of
    16+2 frames at stride 2, 112x112) against decoding the same kind of clips straight from the .mp4
    files with one ffmpeg per clip (-ss to the clip start, 18*stride frames, scale, rgb24), with as
    many ffmpeg processes in parallel as loader workers (decode only, no augmentation: generous).
    Targets: >= 200 samples/s on 2 cores and >= 10x the per-clip decode.
    Baseline from the same run: the loader as it was before 0.2.0 (`PreviousTrainClips`: JPEG frames
    stacked as (n, 3, H, W), i.e. transposed once when decoded and back when cropped, and every clip
    copied to a contiguous tensor before collation); the two loaders are timed alternately, best of
    --loader-repeats. The per-clip costs of each step (read + decode, augment) are given for both.

    .venv/bin/python benchmarks/bench_data.py            # ~24 videos x 5 s; a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

import ffmpeg as ffmpeg_python  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vididi.config import resolve  # noqa: E402
from vididi.data.augment import ClipAugment  # noqa: E402
from vididi.data.clips import clip_frame_numbers, clip_span  # noqa: E402
from vididi.data.extract import build_index, extract_shard, read_manifest, write_manifest  # noqa: E402
from vididi.data.ffmpeg import encode_h264, ffmpeg_binary  # noqa: E402
from vididi.data.loader import StepBatches, TrainClips, loader  # noqa: E402
from vididi.data.shards import DatasetIndex, FrameReader  # noqa: E402
from vididi.layout import shard_dir  # noqa: E402

CLIP = {"frames": 16, "stride": 2, "size": 112, "eval_clips": 2, "sigma_clips": 16}
CLASSES = ("alpha", "beta", "gamma", "delta")


# --------------------------------------------------------------------------------------------------
# Realistic input videos


def value_noise(rng: np.random.Generator, height: int, width: int, octaves=(4, 8, 16, 32, 64)) -> np.ndarray:
    """Multi-octave value noise in [0, 1], (height, width): fine detail like natural texture."""
    field = np.zeros((height, width))
    for i, cells in enumerate(octaves):
        grid = rng.uniform(size=(cells + 1, cells + 1))
        ys, xs = np.linspace(0, cells, height, endpoint=False), np.linspace(0, cells, width, endpoint=False)
        iy, ix = ys.astype(int), xs.astype(int)
        fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]
        top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
        bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
        field += (top * (1 - fy) + bottom * fy) * 0.6**i
    return (field - field.min()) / np.ptp(field)


def textured(rng: np.random.Generator, height: int, width: int, shapes: int = 0) -> np.ndarray:
    """A colour texture (height, width, 3) in [0, 255]: noise at several scales plus `shapes` sharp-edged
    rectangles and stripe patches (the edges and fine detail of real scenes are what costs bits and time)."""
    low, high = rng.uniform(0, 120, 3), rng.uniform(135, 255, 3)
    field = value_noise(rng, height, width)[..., None]
    detail = value_noise(rng, height, width, octaves=(64, 128, 256))[..., None]
    image = low + (high - low) * (0.7 * field + 0.3 * detail)
    y, x = np.mgrid[0:height, 0:width]
    for _ in range(shapes):
        h, w = rng.integers(8, 60, 2)
        top, left = rng.integers(0, max(1, height - h)), rng.integers(0, max(1, width - w))
        patch = (slice(top, top + h), slice(left, left + w))
        colour = rng.uniform(0, 255, 3)
        if rng.uniform() < 0.7:  # flat-ish surface with grain
            image[patch] = colour + 25 * (detail[patch] - 0.5)
        else:  # stripes (fences, text, clothing)
            period, angle = rng.uniform(4, 12), rng.uniform(0, np.pi)
            phase = (x[patch] * np.cos(angle) + y[patch] * np.sin(angle)) * 2 * np.pi / period
            image[patch] = np.where((np.sin(phase) > 0)[..., None], colour, rng.uniform(0, 255, 3))
    return image


def make_video(job: tuple[Path, int, int, int, float, float]) -> int:
    """Render and encode one video: a camera panning over a large texture, three objects moving on it."""
    path, seed, width, height, seconds, fps = job
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    pan = rng.uniform(-2.5, 2.5, 2)  # pixels per frame
    scene = textured(rng, height + int(abs(pan[1]) * n) + 2, width + int(abs(pan[0]) * n) + 2, shapes=60)
    objects = []
    for _ in range(3):
        radius = rng.uniform(15, 40)
        objects.append((textured(rng, 2 * int(radius) + 1, 2 * int(radius) + 1, shapes=4), radius,
                        rng.uniform([0, 0], [width, height]), rng.uniform(-4, 4, 2)))  # fmt: skip
    y, x = np.mgrid[0:height, 0:width]

    def frames():
        for t in range(n):
            ox = int(round(t * pan[0])) if pan[0] > 0 else int(round((n - t) * -pan[0]))
            oy = int(round(t * pan[1])) if pan[1] > 0 else int(round((n - t) * -pan[1]))
            frame = scene[oy : oy + height, ox : ox + width].copy()
            for texture, radius, start, velocity in objects:
                cx, cy = (start + velocity * t) % [width, height]
                inside = (x - cx) ** 2 + ((y - cy) * 1.3) ** 2 < radius**2
                ty = np.clip((y[inside] - cy + radius).astype(int), 0, texture.shape[0] - 1)
                tx = np.clip((x[inside] - cx + radius).astype(int), 0, texture.shape[1] - 1)
                frame[inside] = texture[ty, tx]
            frame += rng.normal(0, 3, frame.shape)
            yield np.clip(frame, 0, 255).astype(np.uint8)

    encode_h264(frames(), path, fps=fps, crf=23)
    return n


def make_videos(root: Path, count: int, width: int, height: int, seconds: float, fps: float, workers: int) -> list[Path]:
    jobs = [(root / CLASSES[i % len(CLASSES)] / f"video{i:03d}.mp4", i, width, height, seconds, fps) for i in range(count)]
    for job in jobs:
        job[0].parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(make_video, jobs))
    return [job[0] for job in jobs]


# --------------------------------------------------------------------------------------------------
# (a) extraction vs plain decode


def plain_decode_seconds(files: list[Path], short_side: int) -> float:
    """Wall time of `ffmpeg -i f -vf scale=<as extraction> -f null -` over the files, one after another."""
    s = short_side
    start = time.perf_counter()
    for file in files:
        cmd = (
            ffmpeg_python.input(str(file))
            .filter("scale", f"if(gt(iw,ih),-2,{s})", f"if(gt(iw,ih),{s},-2)")
            .output("-", format="null")
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
            .compile(cmd=ffmpeg_binary())
        )
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_config(workdir: Path, root: Path, encoding: str, short_side: int, shard_size: int) -> dict:
    return resolve({
        "data_dir": str(workdir / encoding),
        "datasets": {"bench": {"source": "folder", "root": str(root), "clips": CLIP,
                               "extract": {"short_side": short_side, "shard_size": shard_size, "encoding": encoding}}},
        "runs": [{"dataset": "bench", "framework": "vicreg"}],
    })  # fmt: skip


def extraction_seconds(config: dict) -> float:
    """Wall time of extracting every shard (sequential), after a fresh manifest."""
    write_manifest(config, "bench")
    start = time.perf_counter()
    for shard in range(read_manifest(config, "bench")["n_shards"]):
        extract_shard(config, "bench", shard)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# (b) loader vs per-clip ffmpeg


class PreviousTrainClips(TrainClips):
    """The training loader before 0.2.0, kept as the same-run baseline: frames read as contiguous
    (n, 3, H, W) (JPEG: a transposing copy of the decoder's (H, W, 3) output, undone by the crop's
    channels-last copy) and each augmented clip made contiguous before collation (a second copy).
    Its clips are bit-identical to TrainClips'."""

    def __getitem__(self, item):
        video, key = item
        rng = np.random.default_rng(key)
        n = int(self.index.n_frames[video])
        clips, colours = [], []
        for _ in range(2):
            frames = clip_frame_numbers(n, self.length, self.stride, rng=rng)
            clip, colour = self.augment(self.reader.read(video, frames), rng)
            clips.append(clip.contiguous())
            colours.append(torch.from_numpy(colour))
        return clips[0], clips[1], colours[0], colours[1], int(self.index.label[video])


def loader_samples_per_second(index: DatasetIndex, augment: dict, workers: int, batch: int, batches: int,
                              dataset=TrainClips) -> float:  # fmt: skip
    """Steady-state samples/s: the first two batches (worker start-up, first reads) are not timed."""
    torch.set_num_threads(1)
    data = dataset(index, CLIP, augment)
    sampler = StepBatches(np.arange(len(index)), batch_size=batch, seed=0, start_step=0, total_steps=batches + 2)
    it = iter(loader(data, num_workers=workers, batch_sampler=sampler))
    for _ in range(2):
        first = next(it)[0]  # (clip1, clip2, colour1, colour2, labels)
    assert first.shape == (batch, 3, CLIP["frames"] + 2, CLIP["size"], CLIP["size"]) and first.dtype == torch.uint8
    start = time.perf_counter()
    count = 0
    for batch_ in it:
        count += len(batch_[0])
    return count / (time.perf_counter() - start)


def clip_costs_ms(index: DatasetIndex, augment: dict, clips: int = 40) -> dict[str, float]:
    """One process, one thread: milliseconds per clip of each step, now and before 0.2.0: reading +
    decoding its frames (channels-last now, (n, 3, H, W) before), and augmenting it (before: from the
    (n, 3, H, W) frames, plus the contiguous copy of the result)."""
    torch.set_num_threads(1)
    reader, augmenter = FrameReader(index), ClipAugment(augment, CLIP["size"])
    rng = np.random.default_rng(2)
    videos = rng.integers(0, len(index), clips)
    frames = [clip_frame_numbers(int(index.n_frames[v]), CLIP["frames"] + 2, CLIP["stride"], rng=rng) for v in videos]
    out = {}
    for name, channels_last in (("read", True), ("read before", False)):
        start = time.perf_counter()
        read = [reader.read(int(v), f, channels_last=channels_last) for v, f in zip(videos, frames)]
        out[name] = (time.perf_counter() - start) / clips * 1e3
        start = time.perf_counter()
        for clip in read:
            x, _ = augmenter(clip, rng)
            if not channels_last:
                x.contiguous()
        out["augment" if channels_last else "augment before"] = (time.perf_counter() - start) / clips * 1e3
    reader.close()
    return out


def decode_clip(file: Path, start_frame: int, fps: float, short_side: int, height: int, width: int) -> np.ndarray:
    """One clip straight from the .mp4: seek to its start, decode its span, keep every stride-th frame."""
    length, stride = CLIP["frames"] + 2, CLIP["stride"]
    span = clip_span(length, stride)
    s = short_side
    cmd = (
        ffmpeg_python.input(str(file), ss=f"{start_frame / fps:.6f}")
        .filter("scale", f"if(gt(iw,ih),-2,{s})", f"if(gt(iw,ih),{s},-2)")
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=span)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .compile(cmd=ffmpeg_binary())
    )
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)  # the size extraction stored
    return frames[::stride][:length]


def per_clip_samples_per_second(
    index: DatasetIndex, files: dict[str, Path], samples: int, workers: int, short_side: int
) -> float:
    """Samples/s decoding each sample's two clips with one ffmpeg per clip, `workers` ffmpegs at a time."""
    length, stride = CLIP["frames"] + 2, CLIP["stride"]
    rng = np.random.default_rng(1)
    jobs = []
    for video in rng.integers(0, len(index), samples):
        n, fps = int(index.n_frames[video]), float(index.fps[video])
        for _ in range(2):  # two clips at independent random start times, as TrainClips draws them
            start = int(clip_frame_numbers(n, length, stride, rng=rng)[0])
            size = (int(index.height[video]), int(index.width[video]))
            jobs.append((files[index.video_id[video]], start, fps, short_side, *size))
    begin = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        clips = list(pool.map(lambda job: decode_clip(*job), jobs))
    seconds = time.perf_counter() - begin
    assert all(c.shape[0] == length for c in clips), [c.shape for c in clips]
    return samples / seconds


def jpeg_error(jpeg_index: DatasetIndex, raw_index: DatasetIndex, videos: int = 4) -> float:
    """Mean absolute difference (grey levels) between the JPEG and the raw copy of some videos."""
    jpeg_reader, raw_reader = FrameReader(jpeg_index), FrameReader(raw_index)
    errors = []
    for video in range(min(videos, len(jpeg_index))):
        frames = np.arange(int(jpeg_index.n_frames[video]))
        errors.append((jpeg_reader.read(video, frames).float() - raw_reader.read(video, frames).float()).abs().mean().item())
    return float(np.mean(errors))


# --------------------------------------------------------------------------------------------------


def folder_bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated videos (4:3)")
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="extraction timings: best of this many")
    parser.add_argument("--workers", type=int, default=2, help="loader workers = parallel ffmpegs in the baseline")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed loader batches")
    parser.add_argument("--loader-repeats", type=int, default=2, help="loader timings: best of this many, alternating")
    parser.add_argument("--clip-samples", type=int, default=24, help="samples decoded clip by clip with ffmpeg")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vididi-bench-"))
    try:
        t0 = time.perf_counter()
        root = workdir / "videos"
        files = make_videos(root, args.videos, width, height, args.seconds, args.fps, workers=os.cpu_count() or 1)
        made = time.perf_counter() - t0
        print(f"made {len(files)} videos in {made:.0f} s", file=sys.stderr)

        configs = {enc: bench_config(workdir, root, enc, args.short_side, args.shard_size) for enc in ("jpeg", "raw")}
        plain_decode_seconds(files[:2], args.short_side)  # warm the page cache and the binary
        times: dict[str, list[float]] = {"plain": [], "jpeg": [], "raw": []}
        for _ in range(args.repeats):  # interleaved, so a busy moment on a shared machine hits all methods
            times["plain"].append(plain_decode_seconds(files, args.short_side))
            for enc in ("jpeg", "raw"):
                times[enc].append(extraction_seconds(configs[enc]))
        indices = {}
        for enc, config in configs.items():
            build_index(config, "bench")
            indices[enc] = DatasetIndex.load(shard_dir(config, "bench"))
        n_frames = int(indices["jpeg"].n_frames.sum())
        assert n_frames == int(indices["raw"].n_frames.sum()) and len(indices["jpeg"]) == len(files)
        fps = {k: n_frames / min(v) for k, v in times.items()}
        shard_bytes = {enc: folder_bytes(shard_dir(c, "bench").glob("shard-*.h5")) for enc, c in configs.items()}

        source_bytes = folder_bytes(files)
        augment = configs["jpeg"]["augment"]
        loader_rate, before_rate = {}, {}
        for enc in ("jpeg", "raw"):  # now and before, alternating, so a busy moment hits both
            runs = {"now": [], "before": []}
            for r in range(args.loader_repeats):
                for which in (("now", "before") if r % 2 == 0 else ("before", "now")):
                    dataset = TrainClips if which == "now" else PreviousTrainClips
                    runs[which].append(loader_samples_per_second(indices[enc], augment, args.workers, args.batch,
                                                                 args.batches, dataset))  # fmt: skip
            loader_rate[enc], before_rate[enc] = max(runs["now"]), max(runs["before"])
        by_id = {f.relative_to(root).with_suffix("").as_posix(): f for f in files}
        costs = {enc: clip_costs_ms(indices[enc], augment) for enc in ("jpeg", "raw")}
        clip_rate = per_clip_samples_per_second(indices["jpeg"], by_id, args.clip_samples, args.workers, args.short_side)
        mae = jpeg_error(indices["jpeg"], indices["raw"])
        out_w = int(indices["jpeg"].width[0])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    load = os.getloadavg()
    mb = 1 << 20
    lines = [
        f"vididi data benchmark: {len(files)} videos {width}x{height} H.264 (crf 23), {args.seconds:g} s at {args.fps:g} fps "
        f"= {n_frames} frames ({source_bytes / mb:.1f} MiB of .mp4), extracted at {out_w}x{args.short_side}",
        f"machine: {os.cpu_count()} CPU cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); "
        f"ffmpeg: {ffmpeg_binary()}",
        "",
        f"(a) extraction, sequential, wall clock (best of {args.repeats})",
        f"  {'method':<46}{'frames/s':>10}{'vs plain':>10}{'target':>10}{'result':>8}",
        f"  {'ffmpeg decode+scale -> null (baseline)':<46}{fps['plain']:>10.0f}{1.0:>9.2f}x{'':>10}{'':>8}",
    ]
    for enc in ("jpeg", "raw"):
        ratio = fps[enc] / fps["plain"]
        row = f"  {f'vididi extract_shard ({enc})':<46}{fps[enc]:>10.0f}{ratio:>9.2f}x"
        lines.append(row + f"{'>= 0.7x':>10}{verdict(ratio >= 0.7):>8}")
    lines += [
        f"  shards on disk: jpeg {shard_bytes['jpeg'] / mb:.1f} MiB ({shard_bytes['jpeg'] / n_frames / 1024:.1f} KiB/frame), "
        f"raw {shard_bytes['raw'] / mb:.1f} MiB ({shard_bytes['raw'] / n_frames / 1024:.1f} KiB/frame)",
        f"  JPEG (quality {configs['jpeg']['datasets']['bench']['extract']['jpeg_quality']}) vs raw frames: "
        f"mean abs difference {mae:.2f} grey levels",
        "",
        f"(b) training samples: 2 clips x {CLIP['frames'] + 2} frames at stride {CLIP['stride']}, "
        f"{CLIP['size']}x{CLIP['size']}, augmented; {args.workers} workers",
        f"  {'method':<46}{'samples/s':>10}{'vs clip':>10}{'target':>18}{'result':>8}",
        f"  {f'ffmpeg per clip (-ss, {args.workers} in parallel, no aug.)':<46}{clip_rate:>10.1f}{1.0:>9.1f}x{'':>18}{'':>8}",
    ]
    for enc in ("jpeg", "raw"):
        rate, ratio = loader_rate[enc], loader_rate[enc] / clip_rate
        ok = rate >= 200 and ratio >= 10
        before = before_rate[enc]
        lines.append(f"  {f'loader before 0.2.0, {enc} shards (baseline)':<46}{before:>10.1f}{before / clip_rate:>9.1f}x")
        lines.append(f"  {f'loader, {enc} shards':<46}{rate:>10.1f}{ratio:>9.1f}x{'>= 200/s, >= 10x':>18}{verdict(ok):>8}"
                     f"   ({rate / before:.2f}x the loader before 0.2.0)")  # fmt: skip
    lines += [
        "  cost per clip in one process (1 thread), now (before 0.2.0): "
        + "; ".join(f"{enc}: read+decode {c['read']:.2f} ({c['read before']:.2f}) ms, augment {c['augment']:.2f} "
                    f"({c['augment before']:.2f}) ms" for enc, c in costs.items())
        + "; 200 samples/s on 2 cores leaves 1000 ms * 2 cores / (200 * 2 clips) = 5 ms per clip",
        "  (the .mp4 files have x264's default GOP, one keyframe per video here: each -ss decodes from frame 0)",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
