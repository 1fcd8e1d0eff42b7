"""Frame-decode benchmark (a script, not a test): frames/s per CPU core for each way to store shards.

What the loader must deliver (the 0.1.0 GPU target): at 1,368 clips/s per GPU (compiled R3D-18, H200) and
16+2 frames per clip, 1,368 x 18 = 24,624 frames/s per GPU. This script measures, in ONE process
with ONE thread (so: per core), how many frames/s each storage/decoder delivers when reading
clips as the loader does (18 frames at stride 2 from a random start: one contiguous read covers the
36-frame span, 18 frames are decoded), and prints cores per GPU = 24,624 / (frames/s per core):

  jpeg (torchvision decode_jpeg)  the loader's path today: the baseline of this run
  jpeg (PIL)                      the same JPEG bytes through Pillow (libjpeg-turbo)
  jpeg (PIL draft 1/2)            reduced-DCT-scale decode: half width and height, 4x fewer pixels
                                  (only an option when shards are stored at twice the used size)
  raw                             uncompressed RGB in the HDF5 flat array (extract.encoding: raw)
  raw + <codec>                   the same array through an hdf5plugin filter (LZ4, Zstd,
                                  Blosc2-LZ4 with byte shuffle): lossless, decoded inside h5py

Frames are realistic: videos rendered like benchmarks/bench_data.py (panning texture, moving
objects, sensor noise), encoded to H.264 (crf 23) and decoded back by ffmpeg at short side 128, so
they carry the smoothing of a real codec. Every figure comes from this run: the methods are timed
interleaved (best of --repeats) on the same frames. Bytes per frame on disk are printed alongside.

    .venv/bin/python benchmarks/bench_decode.py                     # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("VIDIDI_NO_PROGRESS", "1")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import make_video  # noqa: E402

from vididi.data.ffmpeg import ffmpeg_binary  # noqa: E402
from vididi.data.shards import encode_frame  # noqa: E402

FRAMES_PER_GPU = 1368 * 18  # the 0.1.0 target: compiled R3D-18 on an H200, 16+2 frames per clip
CLIP_FRAMES, STRIDE = 18, 2
CHUNK = 1 << 18  # the ShardWriter's HDF5 chunk of the flat data array


def render_frames(workdir: Path, videos: int, seconds: float, short_side: int) -> list[np.ndarray]:
    """(n, H, W, 3) uint8 frames per video: rendered, H.264-encoded, decoded at `short_side`."""
    out = []
    for i in range(videos):
        path = workdir / f"v{i}.mp4"
        make_video((path, i, 320, 240, seconds, 25.0))
        width = round(short_side * 4 / 3 / 2) * 2
        raw = subprocess.run(
            [ffmpeg_binary(), "-v", "error", "-i", str(path), "-vf", f"scale={width}:{short_side}",
             "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # fmt: skip
        out.append(np.frombuffer(raw, np.uint8).reshape(-1, short_side, width, 3))
    return out


def clip_starts(n_frames: int, clips: int, rng) -> np.ndarray:
    span = (CLIP_FRAMES - 1) * STRIDE + 1
    return rng.integers(0, n_frames - span + 1, clips)


def flat_store(h5: h5py.File, name: str, blobs: list[bytes], **filters) -> tuple[h5py.Dataset, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.frombuffer(b"".join(blobs), np.uint8)
    ds = h5.create_dataset(name, data=data, chunks=(min(CHUNK, len(data)),), **filters)
    return ds, offsets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--short-side", type=int, default=128)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (extract.jpeg_quality default)")
    p.add_argument("--clips", type=int, default=60, help="clips read per method and repeat")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    try:
        import hdf5plugin
    except ImportError:
        hdf5plugin = None
    with tempfile.TemporaryDirectory(prefix="vididi-decode-") as tmp:
        tmp = Path(tmp)
        videos = render_frames(tmp, args.videos, args.seconds, args.short_side)
        frames = np.concatenate(videos)
        n, h, w, _ = frames.shape
        jpegs = [encode_frame(f, "jpeg", args.quality) for f in frames]
        raws = [f.tobytes() for f in frames]
        stores = {"jpeg": ("jpeg", {}), "raw": ("raw", {})}
        if hdf5plugin is not None:
            stores["raw + LZ4"] = ("raw", dict(hdf5plugin.LZ4()))
            stores["raw + Zstd (level 1)"] = ("raw", dict(hdf5plugin.Zstd(clevel=1)))
            stores["raw + Blosc2-LZ4 (shuffle)"] = ("raw", dict(hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE)))
        h5 = h5py.File(tmp / "frames.h5", "w")
        datasets = {}
        for name, (kind, filters) in stores.items():
            datasets[name] = flat_store(h5, name, jpegs if kind == "jpeg" else raws, **filters)
        h5.close()
        sizes = {}
        with h5py.File(tmp / "frames.h5", "r") as h5:
            for name in stores:
                sizes[name] = h5[name].id.get_storage_size() / n
        h5 = h5py.File(tmp / "frames.h5", "r")

        rng = np.random.default_rng(0)
        starts = clip_starts(n, args.clips, rng)  # spans may cross video boundaries: fine for timing

        def read_span(name: str, start: int):
            ds = h5[name]
            offsets = datasets[name][1]
            lo, hi = start, start + (CLIP_FRAMES - 1) * STRIDE + 1
            blob = ds[offsets[lo] : offsets[hi]]
            return [blob[offsets[f] - offsets[lo] : offsets[f + 1] - offsets[lo]] for f in range(lo, hi, STRIDE)]

        from torchvision.io import ImageReadMode, decode_jpeg

        def tv_jpeg(start):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.stack(decode_jpeg([torch.from_numpy(b) for b in read_span("jpeg", start)], mode=ImageReadMode.RGB))

        def pil_jpeg(start, draft=False):
            out = []
            for b in read_span("jpeg", start):
                img = Image.open(io.BytesIO(b.tobytes()))
                if draft:
                    img.draft("RGB", (w // 2, h // 2))
                out.append(np.asarray(img.convert("RGB")))
            return np.stack(out)

        def raw(name):
            return lambda start: np.stack([b.reshape(h, w, 3) for b in read_span(name, start)])

        methods = {"jpeg (torchvision decode_jpeg)": tv_jpeg, "jpeg (PIL)": pil_jpeg,
                   "jpeg (PIL draft 1/2)": lambda s: pil_jpeg(s, draft=True)}  # fmt: skip
        store_of = {"jpeg (torchvision decode_jpeg)": "jpeg", "jpeg (PIL)": "jpeg", "jpeg (PIL draft 1/2)": "jpeg"}
        for name in stores:
            if name != "jpeg":
                methods[name] = raw(name)
                store_of[name] = name
        # sanity: the lossless stores return the frames exactly; the draft decode is half size
        for name in stores:
            if name != "jpeg":
                assert np.array_equal(methods[name](int(starts[0])), frames[starts[0] : starts[0] + 36 : 2]), name
        assert methods["jpeg (PIL draft 1/2)"](int(starts[0])).shape[1:3] == (h // 2, w // 2)

        best = {m: float("inf") for m in methods}
        for r in range(args.repeats):
            order = list(methods)[r % len(methods) :] + list(methods)[: r % len(methods)]
            for m in order:
                t0 = time.perf_counter()
                for s in starts:
                    methods[m](int(s))
                best[m] = min(best[m], time.perf_counter() - t0)
        h5.close()

    load_after = os.getloadavg()
    base = args.clips * CLIP_FRAMES / best["jpeg (torchvision decode_jpeg)"]
    print(f"vididi frame-decode benchmark: {n} frames {w}x{h} (H.264 crf 23 -> short side {args.short_side}), "
          f"JPEG quality {args.quality}; clips of {CLIP_FRAMES} frames at stride {STRIDE}; 1 thread (per core), "
          f"best of {args.repeats}")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPU cores, load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"hdf5plugin {'not installed' if hdf5plugin is None else hdf5plugin.version}")  # fmt: skip
    print(f"  {'method':<34}{'frames/s/core':>14}{'vs baseline':>12}{'KiB/frame':>11}{'cores/GPU':>11}")
    for m in methods:
        fps = args.clips * CLIP_FRAMES / best[m]
        print(f"  {m:<34}{fps:>14.0f}{fps / base:>11.2f}x{sizes[store_of[m]] / 1024:>11.1f}{FRAMES_PER_GPU / fps:>11.2f}")
    print(f"  (cores/GPU = {FRAMES_PER_GPU:,} frames/s per GPU / frames/s per core: decode only; augmentation "
          f"(crop, resize, flip) and collation come on top, see bench_data.py's read + augment ms per clip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
