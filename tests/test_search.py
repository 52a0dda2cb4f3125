"""``pruning.search.find_ratio`` on size functions with known answers: smooth, stepped, flat, unreachable."""
from __future__ import annotations

import math

import pytest

from pruning.search import MAX_TRIES, Trial, UnreachableTarget, find_ratio


def measured(size_at):
    """A ``measure`` over ``size_at(ratio)`` that counts its calls and marks repeated sizes as not new."""
    calls, seen = [], set()

    def measure(ratio: float) -> Trial:
        size = size_at(ratio)
        calls.append(ratio)
        new = size not in seen
        seen.add(size)
        return Trial(ratio, size, new)

    return measure, calls


def smooth(ratio: float) -> int:
    return round(1_000_000 * (1 - ratio) ** 2) + 1_000


def stepped(ratio: float) -> int:  # 16 channels per layer: the size jumps at every 1/16 of the ratio
    kept = 16 - math.floor(16 * ratio + 1e-9) if ratio < 1 else 1
    return kept * kept * 1_000


@pytest.mark.parametrize("target", [900_000, 250_000, 40_000, 5_000])
def test_a_smooth_size_lands_within_tolerance_of_the_target(target):
    measure, calls = measured(smooth)
    ratio = find_ratio(measure, smooth(0.0), target, tolerance=0.02)
    assert target * 0.98 <= smooth(ratio) <= target
    assert len(calls) <= 8  # interpolation on √size, not a scan


@pytest.mark.parametrize("target", [200_000, 100_000, 50_000, 3_000])
def test_a_stepped_size_gives_the_least_pruned_step_at_or_below_the_target(target):
    measure, calls = measured(stepped)
    ratio = find_ratio(measure, stepped(0.0), target, tolerance=0.02)
    best = max(k * k * 1_000 for k in range(1, 17) if k * k * 1_000 <= target)
    assert stepped(ratio) == best and len(calls) <= MAX_TRIES


def test_an_unreachable_target_names_the_smallest_size():
    measure, calls = measured(stepped)
    with pytest.raises(UnreachableTarget) as info:
        find_ratio(measure, stepped(0.0), 500, tolerance=0.02)
    assert info.value.smallest == 1_000 and calls[-1] == 1.0
