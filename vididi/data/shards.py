"""The HDF5 shard format: writing frames of many videos into one file, and reading clips back.

A shard holds the frames of up to `shard_size` videos as ONE flat uint8 array (`data`) plus byte
offsets per frame (`offsets`, n_frames + 1 entries). A frame is either a JPEG file (`encoding =
"jpeg"`) or raw RGB bytes of shape (height, width, 3) (`encoding = "raw"`); reading frame i is always
`data[offsets[i]:offsets[i+1]]`, so both encodings share one layout and one reader. Per video, the
table `videos/*` gives its first frame, frame count, size, fps, label, split membership and source
path; `bad/*` lists the videos of the shard that could not be decoded, with the reason.

The dataset index (`index.tsv` + `dataset.json`, written by `vididi index`) points each video to its
shard and first frame, so a reader never scans shards.

Damage is found, never decoded silently: the frames, offsets and numeric video columns carry HDF5's
Fletcher-32 checksum per chunk and the file's metadata is checksummed too (`libver="latest"`), so HDF5
verifies each read (only the variable-length strings, which no HDF5 filter takes, are not); each
video's frame bytes also have a digest (`videos/digest`, the index's data-content fingerprint). A
reader that meets a damaged or truncated shard names the shard and the video, and moves the file
aside (`shard-NNNNN.h5.damaged-<time>`, never deleted) so that the next `snakemake` rebuilds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from PIL import Image

from ..layout import index_files, shard_name
from ..utils import VididiError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 2  # 2 (vididi 0.2.0): Fletcher-32 checksums, checksummed metadata, per-video digests
LIBVER = "latest"  # the HDF5 file format whose metadata blocks carry checksums (open shards with it)
_STR = h5py.string_dtype()
VIDEO_FIELDS = {  # name -> dtype of the per-video table
    "video_id": _STR, "path": _STR, "splits": _STR, "frame_start": np.int64, "n_frames": np.int32,
    "height": np.int32, "width": np.int32, "fps": np.float32, "label": np.int32, "untrimmed": np.bool_,
    "digest": _STR,
}  # fmt: skip
CHECKSUMMED = {"fletcher32": True, "maxshape": (None,)}  # chunked (a filter needs chunks), even when empty


def frames_digest():
    """The digest of one video's encoded frames, fed frame by frame (index.tsv's `digest` column)."""
    return hashlib.blake2b(digest_size=16)


def encode_frame(frame: np.ndarray, encoding: str, quality: int) -> bytes:
    if encoding == "raw":
        return frame.tobytes()
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ShardWriter:
    """Appends videos to an open HDF5 file; a failed video is rolled back, so the shard stays consistent."""

    def __init__(self, h5: h5py.File, encoding: str, jpeg_quality: int = 90, flush_frames: int = 64):
        self.h5, self.encoding, self.quality, self.flush_frames = h5, encoding, jpeg_quality, flush_frames
        h5.attrs.update(format_version=FORMAT_VERSION, encoding=encoding, jpeg_quality=jpeg_quality)
        self.data = h5.create_dataset("data", (0,), np.uint8, chunks=(1 << 18,), **CHECKSUMMED)
        self.offsets = h5.create_dataset("offsets", (1,), np.int64, chunks=(4096,), data=[0], **CHECKSUMMED)
        self.rows: dict[str, list] = {k: [] for k in VIDEO_FIELDS}
        self.bad: list[tuple[str, str, str]] = []

    @property
    def n_frames(self) -> int:
        return self.offsets.shape[0] - 1

    def add_video(self, meta: dict, frames, height: int, width: int, fps: float) -> int:
        """Stream `frames` into the shard in blocks; return the frame count. On any exception the frames
        written so far for this video are removed and the exception propagates."""
        start_frame, start_byte = self.n_frames, int(self.offsets[-1])
        pending: list[bytes] = []
        digest = frames_digest()
        try:
            for frame in frames:
                pending.append(encode_frame(frame, self.encoding, self.quality))
                digest.update(pending[-1])
                if len(pending) >= self.flush_frames:
                    self._append(pending)
                    pending = []
            self._append(pending)
        except BaseException:
            self.data.resize((start_byte,))
            self.offsets.resize((start_frame + 1,))
            raise
        count = self.n_frames - start_frame
        row = {**meta, "frame_start": start_frame, "n_frames": count, "height": height, "width": width, "fps": fps,
               "digest": digest.hexdigest()}  # fmt: skip
        for key in VIDEO_FIELDS:
            self.rows[key].append(row[key])
        return count

    def _append(self, blobs: list[bytes]) -> None:
        if not blobs:
            return
        sizes = np.fromiter((len(b) for b in blobs), np.int64, len(blobs))
        end = int(self.offsets[-1])
        self.data.resize((end + int(sizes.sum()),))
        self.data[end:] = np.frombuffer(b"".join(blobs), np.uint8)
        n = self.offsets.shape[0]
        self.offsets.resize((n + len(blobs),))
        self.offsets[n:] = end + np.cumsum(sizes)

    def drop_last_video(self) -> None:
        """Remove the last added video (one that decoded but failed a later check, e.g. truncated)."""
        start = self.rows["frame_start"][-1]
        self.data.resize((int(self.offsets[start]),))
        self.offsets.resize((start + 1,))
        for column in self.rows.values():
            column.pop()

    def add_bad(self, video_id: str, path: str, reason: str) -> None:
        self.bad.append((video_id, path, reason))

    def close(self) -> None:
        """Write the per-video table and the bad list (call once, before the file is closed)."""
        table = self.h5.create_group("videos")
        for key, dtype in VIDEO_FIELDS.items():  # (HDF5 filters, checksums included, skip variable-length strings)
            table.create_dataset(key, data=np.asarray(self.rows[key], dtype=dtype), **({} if dtype is _STR else CHECKSUMMED))
        bad = self.h5.create_group("bad")
        for i, key in enumerate(("video_id", "path", "reason")):
            bad.create_dataset(key, data=np.asarray([b[i] for b in self.bad], dtype=_STR))


def read_video_table(path: str | Path) -> tuple[dict[str, np.ndarray], list[tuple[str, str, str]], dict]:
    """The per-video table, the bad list and the attributes of a finished shard; a damaged shard is
    moved aside with a one-line error (`damaged`)."""
    path = Path(path)
    try:
        with h5py.File(path, "r", libver=LIBVER) as h5:
            attrs = dict(h5.attrs)
            if attrs.get("format_version") != FORMAT_VERSION:
                raise VididiError(f"{path} has shard format {attrs.get('format_version')}, this version reads "
                                  f"{FORMAT_VERSION}: remake it with `snakemake --forcerun {path}`")  # fmt: skip
            table = {k: h5["videos"][k][()] for k in VIDEO_FIELDS}
            bad = list(zip(*(h5["bad"][k][()].astype(str) for k in ("video_id", "path", "reason"))))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise damaged(path, exc) from exc
    for key in ("video_id", "path", "splits", "digest"):
        table[key] = table[key].astype(str)
    return table, bad, attrs


def damaged(path: Path, exc: BaseException, video: str | None = None) -> VididiError:
    """The one-line error for a shard HDF5 or the JPEG decoder could not read (a failed checksum, a
    truncated file, a corrupt frame), after moving the file aside so that Snakemake rebuilds it."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.rename(aside)
        moved = f"moved it to {aside.name}; run snakemake again to rebuild it"
    except FileNotFoundError:  # another reader (a loader worker) moved it first
        moved = "it was moved aside; run snakemake again to rebuild it"
    reason = " ".join(str(exc).split()) or type(exc).__name__
    where = f", video {video}" if video else ""
    return VididiError(f"shard {path}{where} is damaged ({reason[:160]}): {moved}")


def format_splits(splits: dict[str, str]) -> str:
    """{"1": "train", "2": "test"} -> "1:train,2:test" (a TSV-friendly cell)."""
    return ",".join(f"{k}:{v}" for k, v in sorted(splits.items()))


def parse_splits(cell: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in cell.split(",") if item)


# --------------------------------------------------------------------------------------------------
# Reading


@dataclass
class DatasetIndex:
    """Everything a reader needs about a dataset's shards: one row per readable video."""

    root: Path
    classes: list[str]
    video_id: np.ndarray
    shard: np.ndarray
    frame_start: np.ndarray
    n_frames: np.ndarray
    height: np.ndarray
    width: np.ndarray
    fps: np.ndarray
    label: np.ndarray
    untrimmed: np.ndarray
    splits: list[dict[str, str]]
    info: dict  # dataset.json: classes, segments, stats per split (mean, sigma), settings
    split: str  # the official split this view of the dataset uses ("1", "2", ...)

    @classmethod
    def for_dataset(cls, config: dict, dataset: str) -> "DatasetIndex":
        """The index of a configured dataset, bound to its configured split, after checking that it was
        made with the config's data settings (vididi/stamps.py)."""
        from .. import config as cfgmod
        from .. import stamps
        from ..layout import info_file, shard_dir

        index = cls.load(shard_dir(config, dataset), config["datasets"][dataset]["split"])
        expected = cfgmod.index_settings(config, dataset)
        stamps.require(info_file(config, dataset), index.info.get("settings_hash"), cfgmod.settings_hash(expected),
                       index.info.get("settings"), expected, what="data settings")  # fmt: skip
        return index

    @classmethod
    def load(cls, root: str | Path, split: str = "1", info: dict | None = None) -> "DatasetIndex":
        """The index of a shard folder; `info` instead of its dataset.json (the index stage, before
        it writes dataset.json with the scales it measures through this index)."""
        root = Path(root)
        index_file, info_file = index_files(root)
        for f in (index_file, info_file) if info is None else (index_file,):
            if not f.is_file():
                raise VididiError(f"{f} not found: run the extraction stage first (`vididi index`)")
        info = json.loads(info_file.read_text()) if info is None else info
        lines = index_file.read_text().splitlines()
        header = lines[0].split("\t")
        rows = [line.split("\t") for line in lines[1:] if line]
        col = {name: [r[i] for r in rows] for i, name in enumerate(header)}
        return cls(
            root=root, classes=info["classes"], video_id=np.array(col["video_id"], dtype=object),
            shard=np.array(col["shard"], np.int64), frame_start=np.array(col["frame_start"], np.int64),
            n_frames=np.array(col["n_frames"], np.int64), height=np.array(col["height"], np.int64),
            width=np.array(col["width"], np.int64), fps=np.array(col["fps"], np.float64),
            label=np.array(col["label"], np.int64), untrimmed=np.array(col["untrimmed"]) == "1",
            splits=[parse_splits(c) for c in col["splits"]], info=info, split=split,
        )

    def __len__(self) -> int:
        return len(self.video_id)

    def select(self, subset: str, untrimmed: bool = False) -> np.ndarray:
        """Indices of the videos in `subset` ("train" | "test") of this view's split."""
        return np.array(
            [i for i, s in enumerate(self.splits) if s.get(self.split) == subset and self.untrimmed[i] == untrimmed],
            np.int64,
        )

    def split_names(self) -> list[str]:
        return sorted({name for s in self.splits for name in s})

    def shard_path(self, shard: int) -> Path:
        return self.root / shard_name(shard)

    @property
    def content(self) -> str:
        """dataset.json's digest of the indexed frames, labels, splits and scales (a run's identity
        includes it: config.run_hash)."""
        if "content" not in self.info:
            info = index_files(self.root)[1]
            raise VididiError(f"{info} has no content digest (made by vididi < 0.2.0): remake it with "
                              f"`snakemake --forcerun {info}`")  # fmt: skip
        return self.info["content"]

    @property
    def stats(self) -> dict:
        """Mean and derivative scales measured on this split's training clips."""
        stats = self.info["stats"]
        if self.split not in stats:
            raise VididiError(f"{self.root}: no split {self.split!r} (splits: {', '.join(stats)})")
        return stats[self.split]


class FrameReader:
    """Reads frames of indexed videos. Opens shard files lazily, once per process (safe in workers)."""

    def __init__(self, index: DatasetIndex):
        self.index = index
        self._shards: dict[int, tuple] = {}
        self._pid = os.getpid()

    def _shard(self, shard: int) -> tuple:
        if self._pid != os.getpid():  # forked into a worker: HDF5 handles are not shareable
            self._shards, self._pid = {}, os.getpid()
        if shard not in self._shards:
            h5 = h5py.File(self.index.shard_path(shard), "r", libver=LIBVER)
            self._shards[shard] = (h5, h5["data"], h5["offsets"], h5.attrs["encoding"])
        return self._shards[shard]

    @contextlib.contextmanager
    def _named_damage(self, video: int):
        """A damaged shard (failed checksum, truncated file, undecodable frame) ends in one line naming
        it and the video, and is moved aside (`damaged`)."""
        try:
            yield
        except (OSError, RuntimeError) as exc:  # HDF5's checksum / truncation errors, JPEG decoding
            shard = int(self.index.shard[video])
            self._shards.pop(shard, None)
            raise damaged(self.index.shard_path(shard), exc, video=str(self.index.video_id[video])) from exc

    def read_stored(self, video: int, frames: np.ndarray):
        """The stored bytes of frames `frames` of video `video`, undecoded: raw shards give uint8
        (n, H, W, 3); JPEG shards give (blob, offsets), the n JPEG files back to back in one uint8
        tensor and their n + 1 byte offsets into it. One contiguous read covers the clip."""
        with self._named_damage(video):
            return self._read_stored(video, frames)

    def _read_stored(self, video: int, frames: np.ndarray):
        import torch  # here, not at the top: extraction jobs never read frames and skip the import

        _, data, offsets_ds, encoding = self._shard(int(self.index.shard[video]))
        first = int(self.index.frame_start[video])
        frames = np.asarray(frames, np.int64)
        lo, hi = first + int(frames.min()), first + int(frames.max()) + 1
        offsets = offsets_ds[lo : hi + 1]
        blob = torch.from_numpy(data[offsets[0] : offsets[-1]])
        starts, ends = offsets[frames - (lo - first)] - offsets[0], offsets[frames - (lo - first) + 1] - offsets[0]
        if encoding == "raw":
            height, width = int(self.index.height[video]), int(self.index.width[video])
            return torch.stack([blob[a:b] for a, b in zip(starts, ends)]).view(len(frames), height, width, 3)
        if np.array_equal(starts[1:], ends[:-1]):  # the frames lie back to back: no copy
            return blob[starts[0] : ends[-1]], torch.from_numpy(np.concatenate([starts, ends[-1:]]) - starts[0])
        sizes = ends - starts
        pieces = torch.cat([blob[a:b] for a, b in zip(starts, ends)])
        return pieces, torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)]))

    def read(self, video: int, frames: np.ndarray, channels_last: bool = False) -> "torch.Tensor":
        """Frames (n, 3, H, W) uint8 of video `video` (an index row) at frame numbers `frames`.
        `channels_last`: JPEG frames come in (n, H, W, 3) memory, the layout the decoder writes (no
        transposing copy; the training augmentation resizes in it). Raw frames always do."""
        import torch

        with self._named_damage(video):
            stored = self._read_stored(video, frames)
            if not isinstance(stored, tuple):
                return stored.permute(0, 3, 1, 2)
            decoded = decode_jpegs(*stored, stack=False)
        if channels_last:
            return torch.stack(decoded).permute(0, 3, 1, 2)
        return torch.stack([f.permute(2, 0, 1) for f in decoded])  # contiguous (n, 3, H, W)

    def close(self) -> None:
        for h5, *_ in self._shards.values():
            h5.close()
        self._shards = {}

    def __getstate__(self):  # picklable for DataLoader workers: never ship open handles
        return {"index": self.index, "_shards": {}, "_pid": -1}


def decode_jpegs(blob: "torch.Tensor", offsets, device="cpu", stack: bool = True):
    """JPEG files back to back in `blob` (offsets: n + 1 byte offsets) -> uint8 (n, H, W, 3), decoded in
    one batched `torchvision.io.decode_jpeg` call on `device` (nvJPEG on CUDA); `stack=False`: the
    list of n (H, W, 3) frames."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    offsets = [int(o) for o in offsets]
    pieces = [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    with warnings.catch_warnings():  # torchvision 0.29 (pinned) flags its image codecs as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(pieces, mode=ImageReadMode.RGB, device=device)
    # decode_jpeg's (3, H, W) results are views of (H, W, 3) memory: stacking them in that layout is
    # a plain copy (stacking as (3, H, W) would transpose every frame)
    frames = [image.permute(1, 2, 0) for image in images]
    return torch.stack(frames) if stack else frames
