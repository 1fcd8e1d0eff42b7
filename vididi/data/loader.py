"""Clip datasets over the HDF5 shards.

- `TrainClips`: two clips of T+2 frames at stride s from independent random start times of the same
  video, each with its own spatial augmentation (docs/method.md): uint8 (3, T+2, size, size) cropped and
  flipped, plus its colour-jitter map (3, 4) that the training step applies on the device. With
  `on="device"` (`pretrain.augment_on: device`) it returns the clips' stored bytes and their draws
  instead, and the training process augments them (device_augment.py).
- `StepBatches`: the batch of training step k is a pure function of (seed, k): an endless stream of
  seeded permutations of the training videos, cut into global batches; each DDP rank takes every
  world-th item. Every item carries its own RNG key, so resuming at step k reproduces exactly what an
  uninterrupted run would have seen, whatever the number of workers.
- `EvalClips`: K uniformly spaced centre-cropped clips of T frames per video (order 0 at evaluation).
- `WindowClips`: sliding windows over untrimmed videos, for detection.

HDF5 files are opened lazily inside each worker (`FrameReader`), so `num_workers > 0` and persistent
workers are safe.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils import VididiError
from .augment import ClipAugment, centre_crop, draw_clip
from .clips import clip_frame_numbers, clip_span, uniform_starts, window_starts
from .device_augment import collate_stored
from .shards import DatasetIndex, FrameReader


class TrainClips(Dataset):
    """Items are (video row, RNG key) pairs from `StepBatches`; returns
    (clip1, clip2, colour1, colour2, label), or with `on="device"` (stored1, stored2, draw1, draw2,
    label): the clips' stored bytes (`FrameReader.read_stored`) and their augmentation draws
    (`ClipDraw.as_vector`), from the same random numbers. `collate` batches either kind. Fine-tuning
    asks for `views=1` clip of T frames (`extra_frames=0`: order 0 only) and gets (clip, colour, label)."""

    def __init__(self, index: DatasetIndex, clips: dict, augment: dict, on: str = "loader", views: int = 2,
                 extra_frames: int = 2):  # fmt: skip
        self.index, self.reader = index, FrameReader(index)
        self.length, self.stride, self.views = clips["frames"] + extra_frames, clips["stride"], views
        self.augment, self.on = ClipAugment(augment, clips["size"]), on
        self.collate = collate_stored if on == "device" else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, tuple[int, ...]]):
        video, key = item
        rng = np.random.default_rng(key)
        n = int(self.index.n_frames[video])
        clips, colours = [], []
        for _ in range(self.views):  # independent start time and augmentation per clip
            frames = clip_frame_numbers(n, self.length, self.stride, rng=rng)
            if self.on == "device":
                height, width = int(self.index.height[video]), int(self.index.width[video])
                clips.append(self.reader.read_stored(video, frames))
                colours.append(torch.from_numpy(draw_clip(self.augment.cfg, height, width, rng).as_vector()))
                continue
            clip, colour = self.augment(self.reader.read(video, frames, channels_last=True), rng)
            clips.append(clip)
            colours.append(torch.from_numpy(colour))
        return *clips, *colours, int(self.index.label[video])


class StepBatches(Sampler):
    """Global batch k = positions [kB, (k+1)B) of concatenated seeded permutations of `videos`;
    this rank yields the positions j with j % world == rank, each as (video row, (seed, k, j))."""

    def __init__(self, videos: np.ndarray, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world: int = 1):  # fmt: skip
        if batch_size % world:
            raise VididiError(f"pretrain.batch_size {batch_size} is not divisible by the {world} processes")
        self.videos, self.batch_size, self.seed = np.asarray(videos), batch_size, seed
        self.start_step, self.total_steps, self.rank, self.world = start_step, total_steps, rank, world
        self._epoch, self._perm = -1, None

    def _video_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.videos))
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.videos))
        return int(self.videos[self._perm[offset]])

    def batch(self, step: int) -> list[tuple[int, tuple[int, int, int]]]:
        first = step * self.batch_size
        return [(self._video_at(first + j), (self.seed, step, j)) for j in range(self.rank, self.batch_size, self.world)]

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class EvalClips(Dataset):
    """Per video: K uniformly spaced centre-cropped clips of `frames` frames -> uint8 (K, 3, T, S, S)."""

    def __init__(self, index: DatasetIndex, videos: np.ndarray, clips: dict, frames: int | None = None, k: int | None = None):
        self.index, self.videos, self.reader = index, np.asarray(videos), FrameReader(index)
        self.length = frames or clips["frames"]
        self.stride, self.size, self.k = clips["stride"], clips["size"], k or clips["eval_clips"]

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        video = int(self.videos[i])
        n = int(self.index.n_frames[video])
        starts = uniform_starts(n, clip_span(self.length, self.stride), self.k)
        clips = [centre_crop(self.reader.read(video, clip_frame_numbers(n, self.length, self.stride, s)), self.size)
                 for s in starts]  # fmt: skip
        return torch.stack(clips), int(self.index.label[video]), video


class WindowClips(Dataset):
    """Sliding windows over untrimmed videos: (clip (3, T, S, S), video row, start frame, end frame)."""

    def __init__(self, index: DatasetIndex, videos: np.ndarray, clips: dict, step_fraction: float):
        self.index, self.reader = index, FrameReader(index)
        self.length, self.stride, self.size = clips["frames"], clips["stride"], clips["size"]
        span = clip_span(self.length, self.stride)
        step = max(1, int(round(span * step_fraction)))
        self.items = [(int(v), int(s)) for v in videos for s in window_starts(int(index.n_frames[v]), span, step)]
        self.span = span

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        video, start = self.items[i]
        n = int(self.index.n_frames[video])
        clip = centre_crop(self.reader.read(video, clip_frame_numbers(n, self.length, self.stride, start)), self.size)
        return clip, video, start, min(n, start + self.span)


def loader(dataset: Dataset, num_workers: int, batch_size: int | None = None, batch_sampler: Sampler | None = None,
           pin_memory: bool = False) -> DataLoader:  # fmt: skip
    """A DataLoader with the project's settings (persistent workers, modest prefetch; the dataset's
    own `collate` where it has one)."""
    kwargs = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)
    if getattr(dataset, "collate", None) is not None:
        kwargs["collate_fn"] = dataset.collate
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
