from collections import Counter

import pytest

from vididi.ssl.schedule import PRESETS, BalancedSchedule, resolve_pairs
from vididi.utils import VididiError


def test_presets_are_the_pairs_of_method_md():
    assert sorted(resolve_pairs("all9")) == [(a, b) for a in range(3) for b in range(3)]
    assert sorted(resolve_pairs("cross6")) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert sorted(resolve_pairs("adjacent")) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert resolve_pairs("frames_only") == [(0, 0)]
    assert resolve_pairs([[2, 0], (0, 1)]) == [(2, 0), (0, 1)]  # YAML gives lists


@pytest.mark.parametrize("preset", ["all9", "cross6", "adjacent", "frames_only"])
def test_every_pair_exactly_once_per_cycle(preset):
    schedule = BalancedSchedule(preset, seed=3)
    n = len(PRESETS[preset])
    for cycle in range(6):
        used = [schedule.pair(step) for step in range(cycle * n, (cycle + 1) * n)]
        assert sorted(used) == sorted(PRESETS[preset])


@pytest.mark.parametrize("preset", ["all9", "cross6"])
def test_each_order_equally_often_in_each_stream_per_cycle(preset):
    schedule = BalancedSchedule(preset, seed=11)
    n = schedule.cycle_length
    for cycle in range(4):
        pairs = [schedule.pair(step) for step in range(cycle * n, (cycle + 1) * n)]
        for stream in (0, 1):
            counts = Counter(p[stream] for p in pairs)
            assert counts == {0: n // 3, 1: n // 3, 2: n // 3}, (preset, stream, counts)


def test_adjacent_is_symmetric_but_uses_order_1_twice_as_often():
    # "balanced" for a symmetric P means both streams see the same order counts per cycle; for
    # `adjacent` those counts are 1:2:1 (order 1 is in every pair), not uniform.
    schedule = BalancedSchedule("adjacent", seed=11)
    for cycle in range(4):
        pairs = [schedule.pair(step) for step in range(cycle * 4, (cycle + 1) * 4)]
        for stream in (0, 1):
            assert Counter(p[stream] for p in pairs) == {0: 1, 1: 2, 2: 1}


def test_seed_determines_the_sequence():
    steps = range(90)
    a = [BalancedSchedule("all9", 5).pair(k) for k in steps]
    b = [BalancedSchedule("all9", 5).pair(k) for k in steps]
    c = [BalancedSchedule("all9", 6).pair(k) for k in steps]
    assert a == b
    assert a != c
    # cycles differ from each other (a fresh permutation per cycle, not one repeated)
    cycles = {tuple(a[i : i + 9]) for i in range(0, 90, 9)}
    assert len(cycles) > 1


def test_resuming_mid_cycle_continues_the_sequence():
    full = BalancedSchedule("cross6", 7)
    sequence = [full.pair(k) for k in range(40)]
    for start in (0, 4, 6, 13, 25):
        resumed = BalancedSchedule("cross6", 7)
        assert [resumed.pair(k) for k in range(start, 40)] == sequence[start:]
    # random access (a backwards jump) gives the same answer as sequential use
    assert full.pair(3) == sequence[3]


def test_orders_used():
    assert BalancedSchedule("frames_only", 0).orders_used() == {0}
    assert BalancedSchedule("adjacent", 0).orders_used() == {0, 1, 2}
    assert BalancedSchedule([[0, 1], [1, 0]], 0).orders_used() == {0, 1}


def test_pair_draws_one_permutation_per_cycle(monkeypatch):
    # a step costs a lookup: the seeded generator runs once per cycle of 9 steps, not once per step
    # (counted, not timed: a timing bound would depend on the machine and its load)
    schedule = BalancedSchedule("all9", 0)
    reference = [BalancedSchedule("all9", 0).pair(k) for k in range(9000)]
    calls = []
    real = BalancedSchedule.permutation
    monkeypatch.setattr(BalancedSchedule, "permutation", lambda self, cycle: calls.append(cycle) or real(self, cycle))
    assert [schedule.pair(k) for k in range(9000)] == reference
    assert calls == list(range(1000))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("all", "unknown order-pair preset 'all'; presets: all9, cross6, adjacent, frames_only"),
        ([], "non-empty"),
        ([[0, 3]], "orders must be in"),
        ([[0, 1], [0, 1]], "listed twice"),
        ([[0, 1, 2]], "two integers"),
        ([["0", "1"]], "two integers"),
        (["01"], "two integers"),
        ([[0.0, 1.0]], "two integers"),
        ([[True, False]], "two integers"),
        (None, "non-empty list"),
    ],
)
def test_bad_specs_raise(spec, message):
    with pytest.raises(VididiError, match=message.replace("(", r"\(")):
        resolve_pairs(spec)


def test_bad_seed_or_step_raise():
    with pytest.raises(VididiError, match="seed"):
        BalancedSchedule("all9", -1)
    with pytest.raises(ValueError, match="step"):
        BalancedSchedule("all9", 0).pair(-1)
