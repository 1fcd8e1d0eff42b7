"""Label efficiency: which labelled training videos a probe or a fine-tuning may use.

`label_subset(labels, fraction, seed)` keeps, in every class, round(fraction * n) of its n training
videos (at least one), chosen by a seeded permutation. It is a pure function of the train split's
labels (in index order), the fraction and the seed: every run of a dataset, whatever its framework or
seed, sees the same videos (`evaluation.label_seed`, not the run's seed), and the linear probe and
fine-tuning use the same subset. Smaller fractions need not be subsets of larger ones.
"""

from __future__ import annotations

import math

import numpy as np

from ..utils import VididiError


def label_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions (into `labels`) of the kept videos; all of them at fraction 1.

    Classes are visited in sorted order, each with its own generator seeded by (seed, class index in
    that order), so a class's choice does not depend on the other classes' sizes.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise VididiError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(labels.size)
    kept = []
    for i, cls in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == cls)
        n_keep = min(members.size, max(1, math.floor(fraction * members.size + 0.5)))
        kept.append(np.random.default_rng([seed, i]).permutation(members)[:n_keep])
    return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def subset_digest(video_ids) -> str:
    """A short digest of a set of videos (their ids, order-free): metric files record it, so it is
    checkable that every run and both protocols trained on the same labelled videos."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, video_ids))).encode()).hexdigest()[:16]
