"""Lookahead weight averaging as airbench94 does it: every few steps the weights are pulled back to an average.

Every ``every`` optimizer steps ``t`` (1-based, ``t % every == 0``) the slow copy ``a`` of every floating-point
entry of the model's state (weights and BatchNorm running statistics) moves towards the trained weights ``w`` and
the weights are reset to it::

    d_t = base^every · (t / T)^3          # T: the run's total steps; 0.95^5 ≈ 0.774 at the end
    a ← d_t · a + (1 − d_t) · w
    w ← a

and after the last step (``t = T``) the weights are reset to ``a`` once more (a no-op when ``T`` is a multiple of
``every``). Early on ``d_t ≈ 0`` (plain training); towards the end the weights are averaged over the last few hundred
steps. Unlike an EMA (:class:`timm.utils.model_ema.ModelEmaV3`), the average is fed back into training, and no second
model is kept for evaluation: the model itself is the average after each pull.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

EVERY = 5  # steps between pulls (airbench94)
BASE = 0.95  # per-step decay whose every-th power scales the cubic ramp


class Lookahead:
    """The slow copy of ``model``'s floating-point state and the pulls of the module docstring.

    Args:
        model: the model being trained (its state at construction is the first average).
        total_steps: ``T``, the optimizer steps of the whole run.
        every: steps between pulls.
        base: ``d_t = base^every · (t / T)^3``.
    """

    def __init__(self, model: nn.Module, total_steps: int, every: int = EVERY, base: float = BASE) -> None:
        if total_steps < 1 or every < 1 or not 0.0 < base <= 1.0:
            raise ValueError(f"lookahead needs total_steps >= 1, every >= 1 and base in (0, 1]; got {total_steps}, "
                             f"{every}, {base}")
        self.total_steps, self.every, self.base = total_steps, every, base
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def decay(self, step: int) -> float:
        """``d_t = base^every · (t / T)^3`` at 1-based step ``t``."""
        return self.base ** self.every * (step / self.total_steps) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step ``step`` (1-based): pulls when ``step % every == 0`` and once more at ``T``."""
        if step % self.every == 0:
            self._pull(model, self.decay(step))
        if step == self.total_steps:
            self._pull(model, 1.0)

    def _pull(self, model: nn.Module, decay: float) -> None:
        live = model.state_dict()  # tensors sharing the model's storage: copy_ writes into the model
        for name, average in self.average.items():
            average.lerp_(live[name].to(average.dtype), 1.0 - decay)
            live[name].copy_(average)

    def state_dict(self) -> dict[str, Any]:
        return {"average": {k: v.detach().cpu() for k, v in self.average.items()}, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["average"]) != set(self.average):
            raise ValueError("the lookahead average in the checkpoint is of another model")
        for name, value in state["average"].items():
            self.average[name].copy_(value)
