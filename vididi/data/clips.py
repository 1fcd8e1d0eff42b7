"""Clip sampling, in one place: which frame numbers of a video a clip reads.

Training draws random starts (`clip_frame_numbers(..., start=None, rng=...)`), evaluation K uniformly
spaced starts (`uniform_starts`), detection sliding windows (`window_starts`), and the attention
analysis and figures the middle clip (`middle_clip_frames`). Pure numpy: the loaders (loader.py),
the index stage's scale measurement and the figures share these functions.
"""

from __future__ import annotations

import numpy as np


def clip_span(length: int, stride: int) -> int:
    """Frames of the video covered by a clip of `length` frames at `stride`."""
    return (length - 1) * stride + 1


def clip_frame_numbers(n_frames: int, length: int, stride: int, start: int | None = None,
                       rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """Frame numbers of a clip; `start=None` draws a uniform random start. A video shorter than the
    clip's span repeats its last frame (documented: rare on real datasets, absent on synthetic)."""
    room = max(0, n_frames - clip_span(length, stride))
    if start is None:
        start = int(rng.integers(0, room + 1))
    return np.minimum(start + stride * np.arange(length), n_frames - 1)


def uniform_starts(n_frames: int, span: int, k: int) -> np.ndarray:
    """K clip starts spread evenly from the first to the last possible position."""
    return np.round(np.linspace(0, max(0, n_frames - span), k)).astype(np.int64)


def window_starts(n_frames: int, span: int, step: int) -> np.ndarray:
    """Start frames of sliding windows covering the whole video (the last one flush with the end)."""
    starts = np.arange(0, max(1, n_frames - span + 1), step)
    if n_frames > span and starts[-1] != n_frames - span:
        starts = np.append(starts, n_frames - span)
    return starts


def middle_clip_frames(n_frames: int, length: int, stride: int) -> np.ndarray:
    """Frame numbers of the clip of `length` frames at `stride` centred in the video."""
    start = max(0, (n_frames - clip_span(length, stride)) // 2)
    return clip_frame_numbers(n_frames, length, stride, start)


def figure_videos(index, count: int) -> list[int]:
    """The first test video of each class, for as many classes as `count` (the same for every run)."""
    test = index.select("test")
    chosen, seen = [], set()
    for video in sorted(test, key=lambda v: index.video_id[v]):
        label = int(index.label[video])
        if label not in seen:
            chosen.append(int(video))
            seen.add(label)
    return chosen[:count]
