"""Progressive channel reduction (the lab's hand loop, automated): prune a fraction of channels by importance →
fine-tune (a ``fine_tune`` callable, usually ``kd.fine_tuner``: a few epochs at a small learning rate, optionally
distilling from the original teacher) → evaluate; repeat until the FLOPs or parameter target is met.

Each step removes ``step_ratio`` of every prunable layer's channels (``pruning.prune(ratio=...)``); the step that
would overshoot the target prunes to the target instead, so the last model lands on it. The loop stops early when
validation accuracy falls more than ``max_drop`` points below the starting model's. Decisions use ``val`` batches:
give a split of the training data there, not the test set.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from kd.trainer import evaluate
from models import Complexity, profile
from models.common import Batches
from pruning.prune import prune



@dataclass
class StepRecord:
    """One prune → fine-tune → evaluate step; accuracy is on the validation batches (percent)."""

    step: int
    flops: int
    params: int
    param_size_kb: float
    accuracy: float
    meets_target: bool
    seconds: float

    def row(self) -> str:
        """A markdown table row: step, flops, size kB, accuracy, target met, seconds."""
        return (f"| {self.step} | {self.flops:,} | {self.param_size_kb:.1f} | {self.accuracy:.2f} | "
                f"{'yes' if self.meets_target else 'no'} | {self.seconds:.1f} |")


STEP_HEADER = "| step | flops | size kB | val acc % | target met | seconds |\n|---:|---:|---:|---:|:---:|---:|"


@dataclass
class ProgressiveResult:
    """model: the best model that meets the target (or, when none does, the last one within ``max_drop``);
    steps: every step (step 0 is the input model); chosen: the step of ``model``; stopped_early: ``max_drop`` hit."""

    model: nn.Module
    before: Complexity
    after: Complexity
    steps: list[StepRecord] = field(default_factory=list)
    chosen: int = 0
    met_target: bool = False
    stopped_early: bool = False
    seconds: float = 0.0


def _meets(c: Complexity, target_flops: int | None, target_params: int | None) -> bool:
    return (target_flops is None or c.flops <= target_flops) and (target_params is None or c.params <= target_params)


def progressive_prune(model: nn.Module, example_inputs: torch.Tensor, fine_tune: Callable[[nn.Module], None],
                      val: Batches, *, target_flops: int | None = None, target_params: int | None = None,
                      step_ratio: float = 0.2, num_steps: int | None = None, importance: str = "l1",
                      calibration: Batches | None = None, max_drop: float | None = None, max_steps: int = 20,
                      device: str | torch.device = "cpu",
                      on_step: Callable[[StepRecord], None] | None = None) -> ProgressiveResult:
    """Runs the prune → fine-tune → evaluate loop on a copy of ``model`` (the input is not changed).

    Args:
        example_inputs: (1, C, H, W) input for tracing and FLOPs counting.
        fine_tune: trains the model of each step in place after it is pruned; ``kd.fine_tuner(train, epochs=...,
            lr=..., teacher=..., loss=...)`` builds the usual one (``fit_model`` with a loss object, distilling
            when given a teacher), ``lambda model: None`` prunes without fine-tuning.
        val: batches that score each step (a training-data split).
        target_flops, target_params: the budget (give exactly one).
        step_ratio: fraction of each prunable layer's channels removed per step, in (0, 1).
        num_steps: instead of ``step_ratio``, reach the target in this many even steps: step k prunes to
            ``before · (target / before)^(k / num_steps)`` FLOPs (or parameters), so a fixed epoch budget can be
            split over a known number of steps.
        importance: ``pruning.prune`` criterion (``l1``, ``activation`` needs ``calibration`` ...).
        max_drop: stop when validation accuracy is more than this many points below the input model's.
        on_step: called with each :class:`StepRecord` as it is made (to print a row).
    """
    if (target_flops is None) == (target_params is None):
        raise ValueError("progressive_prune needs exactly one of target_flops or target_params")
    if not 0.0 < step_ratio < 1.0:
        raise ValueError(f"step_ratio must be in (0, 1), got {step_ratio}")
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    target = {"target_flops": target_flops} if target_flops is not None else {"target_params": target_params}
    (kind, goal), = target.items()
    device = torch.device(device)
    # trainable even when the input is frozen (prune gives a copy the input's flags): every step is fine-tuned
    current = copy.deepcopy(model).to(device).requires_grad_(True)
    example_inputs = example_inputs.to(device)
    size = tuple(example_inputs.shape)
    start = time.perf_counter()
    before = profile(current, size)
    steps = [StepRecord(0, before.flops, before.params, before.param_size_kb, evaluate(current, val, device).accuracy,
                        _meets(before, target_flops, target_params), 0.0)]
    if on_step:
        on_step(steps[0])
    best = (current, 0) if steps[0].meets_target else None
    fallback, stopped = (current, 0), False
    for k in range(1, max_steps + 1):
        if best is not None:
            break
        t0 = time.perf_counter()
        if num_steps is not None:  # geometric schedule between the input's complexity and the target
            start_value = before.flops if kind == "target_flops" else before.params
            step_goal = int(start_value * (goal / start_value) ** (min(k, num_steps) / num_steps))
            res = prune(current, example_inputs, importance=importance, calibration=calibration, **{kind: step_goal})
        else:
            res = prune(current, example_inputs, ratio=step_ratio, importance=importance, calibration=calibration)
            if _meets(res.after, target_flops, target_params):  # this step reaches the budget: land on it, not below
                res = prune(current, example_inputs, importance=importance, calibration=calibration, **target)
        if res.after.flops >= res.before.flops and res.after.params >= res.before.params:
            break  # nothing left to prune
        student = res.model.to(device)
        fine_tune(student)
        c = profile(student, size)
        rec = StepRecord(k, c.flops, c.params, c.param_size_kb, evaluate(student, val, device).accuracy,
                         _meets(c, target_flops, target_params), time.perf_counter() - t0)
        steps.append(rec)
        if on_step:
            on_step(rec)
        if max_drop is not None and steps[0].accuracy - rec.accuracy > max_drop:
            stopped = True  # this step's model is discarded
            break
        current = fallback_model = student
        fallback = (fallback_model, k)
        if rec.meets_target:
            best = (student, k)
    chosen_model, chosen = best or fallback
    return ProgressiveResult(chosen_model, before, profile(chosen_model, size), steps, chosen, best is not None,
                             stopped, time.perf_counter() - start)

