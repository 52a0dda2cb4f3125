"""``find_ratio``: the least pruning ratio whose pruned model is at or below a FLOPs or parameter target.

The size of a pruned model falls in steps as the ratio grows (channel counts are whole numbers). The search keeps a
bracket (the largest ratio known to be above the target, the smallest known to be at or below it) and picks the next
ratio by interpolating √size (nearly linear in the ratio: FLOPs ∝ (1 − r)² when every layer loses r), falling back
to bisection when the same end of the bracket moved twice running. It stops once a new model lands within
``tolerance`` of the target, when the gains become tiny (creeping up to a jump in size), or when the bracket closes.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRIES = 40
MIN_WIDTH = 1e-4  # a bracket narrower than this is closed


@dataclass(frozen=True)
class Trial:
    """One measured ratio: the size of the model it gives, and whether that model is new (a ratio that gives the
    same channel counts as an earlier one gives the same model)."""

    ratio: float
    size: int
    new: bool = True


class UnreachableTarget(ValueError):
    """Even ratio 1 (every group at its minimum) is above the target; ``smallest`` is the size it gives."""

    def __init__(self, smallest: int) -> None:
        super().__init__(f"the smallest reachable size is {smallest:,}")
        self.smallest = smallest


def find_ratio(measure: Callable[[float], Trial], start: int, target: int, tolerance: float) -> float:
    """The least pruning ratio found whose model has at most ``target`` size.

    Args:
        measure: prunes at a ratio in (0, 1] and reports the size; sizes must not grow with the ratio.
        start: the size of the unpruned model (above ``target``).
        target: the size to reach.
        tolerance: a new model in ``[target · (1 − tolerance), target]`` ends the search.

    Raises:
        UnreachableTarget: when the model at ratio 1 is still above ``target``.
    """
    aim, floor = target * (1 - tolerance / 2), target * (1 - tolerance)
    above, below = Trial(0.0, start), None
    ratio = min(max(1 - math.sqrt(aim / start), 0.01), 0.99)  # FLOPs ∝ (1 − r)² when every layer loses r
    moves: list[str] = []  # which end of the bracket each trial moved
    for _ in range(MAX_TRIES):
        trial = measure(ratio)
        if trial.size <= target:
            gain = trial.size - below.size if below is not None else math.inf
            below = trial
            if trial.new and (trial.size >= floor or gain < tolerance / 8 * target):
                break  # on target, or creeping up to a jump
        elif ratio == 1.0:
            raise UnreachableTarget(trial.size)
        else:
            above = trial
        moves.append("below" if trial.size <= target else "above")
        if below is None:
            ratio = 1.0  # still above the target: bracket it with the smallest model (and check it is reachable)
            continue
        ratio = _next_ratio(above, below, aim, bisect=moves[-2:] == [moves[-1]] * 2)
        if ratio is None:
            break
    return below.ratio


def _next_ratio(above: Trial, below: Trial, aim: float, bisect: bool) -> float | None:
    """The next ratio inside the bracket (never within 1 % of its width of either end), None once it is closed."""
    width = below.ratio - above.ratio
    if width < MIN_WIDTH:
        return None
    s_above, s_below = math.sqrt(above.size), math.sqrt(below.size)
    if bisect or s_above <= s_below:
        ratio = above.ratio + width / 2
    else:
        ratio = above.ratio + width * (s_above - math.sqrt(aim)) / (s_above - s_below)
    return min(max(ratio, above.ratio + 0.01 * width), below.ratio - 0.01 * width)
