"""Balanced alternating learning: which derivative orders the two streams get at each step.

docs/method.md: the config names a list P of ordered order-pairs (a, b). Step k belongs to cycle
c = k // |P| and uses P[perm_c[k mod |P|]], where perm_c is a permutation of range(|P|) drawn
from a generator seeded with (seed, c). Stream 1 gets D_a of the first clip, stream 2 D_b of the
second. Every pair is used exactly once per cycle, so for a symmetric P every order appears
equally often in each stream ("balanced").

    schedule = BalancedSchedule("all9", seed=0)
    a, b = schedule.pair(step)          # pure function of (seed, step): resuming needs no state
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vididi.ssl.derivatives import ORDERS
from vididi.utils import VididiError

Pair = tuple[int, int]

PRESETS: dict[str, tuple[Pair, ...]] = {
    "all9": tuple((a, b) for a in ORDERS for b in ORDERS),
    "cross6": tuple((a, b) for a in ORDERS for b in ORDERS if a != b),
    "adjacent": ((0, 1), (1, 0), (1, 2), (2, 1)),
    "frames_only": ((0, 0),),
}


def resolve_pairs(spec: str | Sequence[Sequence[int]]) -> list[Pair]:
    """A preset name or an explicit list of (a, b) pairs -> validated list of int pairs."""
    presets = ", ".join(PRESETS)
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise VididiError(f"unknown order-pair preset {spec!r}; presets: {presets} (or a list of [a, b] pairs)")
        return list(PRESETS[spec])
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise VididiError(f"order pairs must be a preset ({presets}) or a non-empty list of [a, b] pairs, got {spec!r}")
    pairs: list[Pair] = []
    for item in spec:
        if (
            isinstance(item, str)
            or not isinstance(item, Sequence)
            or len(item) != 2
            or not all(isinstance(o, int | np.integer) and not isinstance(o, bool) for o in item)
        ):
            raise VididiError(f"each order pair must be two integers [a, b], got {item!r} in {spec!r}")
        pair = (int(item[0]), int(item[1]))
        if not all(o in ORDERS for o in pair):
            raise VididiError(f"derivative orders must be in {ORDERS}, got pair {list(pair)} in {spec!r}")
        if pair in pairs:
            raise VididiError(f"order pair {list(pair)} is listed twice in {spec!r}")
        pairs.append(pair)
    return pairs


class BalancedSchedule:
    """Step -> (order of stream 1, order of stream 2), seeded per cycle; see the module docstring."""

    def __init__(self, pairs: str | Sequence[Sequence[int]], seed: int) -> None:
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise VididiError(f"schedule seed must be a non-negative integer, got {seed!r}")
        self.pairs: tuple[Pair, ...] = tuple(resolve_pairs(pairs))
        self.seed = int(seed)
        self._cycle = -1
        self._perm: np.ndarray = np.empty(0, dtype=np.int64)

    @property
    def cycle_length(self) -> int:
        return len(self.pairs)

    def permutation(self, cycle: int) -> np.ndarray:
        """perm_c: the order in which cycle `cycle` visits the pairs (indices into `self.pairs`)."""
        return np.random.default_rng([self.seed, cycle]).permutation(len(self.pairs))

    def pair(self, step: int) -> Pair:
        """(a, b) for global step `step` (0-based)."""
        if not isinstance(step, int | np.integer) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        cycle, position = divmod(int(step), len(self.pairs))
        if cycle != self._cycle:  # one generator per cycle, so a step costs a lookup
            self._perm = self.permutation(cycle)
            self._cycle = cycle
        return self.pairs[int(self._perm[position])]

    def orders_used(self) -> set[int]:
        """Every derivative order that some pair uses (the trainer computes only these)."""
        return {o for pair in self.pairs for o in pair}

    def __repr__(self) -> str:
        return f"BalancedSchedule(pairs={list(self.pairs)}, seed={self.seed})"
