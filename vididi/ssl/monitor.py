"""The online kNN monitor: how well the encoder being trained retrieves its class, every N steps.

`pretrain.monitor_every: N` (0 = off) makes the trainer call the monitor after every N-th step and
after the last one; the value goes to train_log.csv (column `monitor_R@1`, empty on the other rows)
and the curves figure. It is a cheap look at learning during training (as solo-learn and lightly
have), not an evaluation: the evaluation stages' numbers are the results.

Which videos: only the run's TRAINING split (`index.select("train")` of the configured split; never a
test video, and on split 2 never a validation video). When that split holds more than
`pretrain.monitor_videos` videos, a subset of that many, drawn once with numpy's generator seeded by
(run seed, 7291). One clip per video: the T frames at the clip stride centred in the video, centre-
cropped (order 0, scaled as in training): the evaluation's input, with one clip instead of K.

What it computes: leave-one-group-out 1-nearest-neighbour retrieval. Every video queries all the
others by cosine similarity of their features, except those of its own group (UCF101-style ids
`..._gNN_cMM` name the group; the synthetic dataset uses them too; other ids are each their own
group), so a query never finds a clip of its own scene. R@1 = the share of queries whose nearest
video has their class (ties: the lowest index). Before the features, a copy of the encoder has its
BatchNorm statistics re-estimated on these clips, as the features stage does.

It never changes training: it reads the online encoder's state_dict into its own copy, runs under
`torch.random.fork_rng` (the global RNG streams are restored after it) and leaves the model's modes,
buffers and weights alone, so the trained weights are bit-identical with and without it.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from ..data.augment import centre_crop
from ..data.clips import middle_clip_frames
from ..data.shards import DatasetIndex, FrameReader
from .encoder import FrameEncoder, recalibrate_batchnorm

COLUMN = "monitor_R@1"
SUBSET_SEED = 7291
_GROUP = re.compile(r"_g(\d+)_c\d+$")


def video_group(video_id: str) -> str:
    """The group of a UCF101-style id (`v_Class_g08_c01` -> class + "g08"); any other id is its own."""
    name = str(video_id).rsplit("/", 1)[-1]
    match = _GROUP.search(name)
    return name[: match.start()] + f"_g{int(match.group(1))}" if match else name


def monitor_videos(index: DatasetIndex, n: int, seed: int) -> np.ndarray:
    """The training-split rows the monitor uses: all of them, or a seeded subset of `n` (sorted)."""
    train = index.select("train")
    if len(train) <= n:
        return train
    return np.sort(np.random.default_rng([seed, SUBSET_SEED]).choice(train, size=n, replace=False))


def leave_one_group_out_r1(features: torch.Tensor, labels: np.ndarray, groups: list[str]) -> float:
    """Share of rows whose most cosine-similar row outside their own group has their label."""
    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    group = torch.tensor([ids[g] for g in groups])
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    similarity = unit @ unit.T
    similarity[group[:, None] == group[None, :]] = -torch.inf
    usable = torch.isfinite(similarity).any(dim=1)  # a query whose group is everything has no neighbour
    if not usable.any():
        return float("nan")
    nearest = similarity.argmax(dim=1).numpy()  # first maximum: the lowest index among ties
    hits = labels[nearest] == labels
    return float(hits[usable.numpy()].mean())


class KnnMonitor:
    """Leave-one-group-out R@1 of an encoder on fixed order-0 clips of training videos (module doc)."""

    def __init__(self, index: DatasetIndex, clips_cfg: dict, videos: np.ndarray, scaling: str,
                 encoder_copy: nn.Module, device: torch.device, batch_size: int = 32):  # fmt: skip
        self.videos = np.asarray(videos)
        self.labels = index.label[self.videos]
        self.groups = [video_group(v) for v in index.video_id[self.videos]]
        self.batch_size = batch_size
        reader = FrameReader(index)
        try:
            self.clips = torch.stack([
                centre_crop(reader.read(int(v), middle_clip_frames(int(index.n_frames[v]), clips_cfg["frames"], clips_cfg["stride"])),
                            clips_cfg["size"])
                for v in self.videos
            ])  # fmt: skip
        finally:
            reader.close()
        self.encoder = FrameEncoder(encoder_copy.float().to(device).to(memory_format=torch.channels_last_3d),
                                    index.stats, scaling, device)  # fmt: skip

    def batches(self):
        for start in range(0, len(self.clips), self.batch_size):
            yield (self.clips[start : start + self.batch_size],)

    def __call__(self, online: nn.Module) -> float:
        """R@1 (a fraction) of `online`'s current weights; `online` itself is only read."""
        device = self.encoder.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.encoder.encoder.load_state_dict(online.state_dict())
            recalibrate_batchnorm(self.encoder, self.batches())
            features = torch.cat([self.encoder(clips) for (clips,) in self.batches()]).cpu()
        return leave_one_group_out_r1(features, self.labels, self.groups)
