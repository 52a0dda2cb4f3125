"""The whitening stem's bias trains for the first epochs only (airbench94: 3 epochs), then stays where it is.

The stem is the model's first ``Conv2d`` (:func:`models.init.first_conv`); its weight is the fixed patch whitening
(:func:`models.init.whiten_first_conv` freezes it), its bias is an ordinary parameter. After ``epochs`` epochs the
bias is held: its value at the start of epoch ``epochs + 1`` is written back after every later step, so it stays
exact whatever the optimizer's momentum, weight decay or a weight average do, and the parameter keeps
``requires_grad`` (DistributedDataParallel expects the gradients of every parameter it was built with). A model whose
first conv has no bias (e.g. ``wide_cnn``) is left alone.
"""
from __future__ import annotations

import torch
from torch import nn

from models.init import first_conv


class StemBiasHold:
    """Holds the first conv's bias fixed from epoch ``epochs + 1`` on.

    Args:
        model: the model being trained.
        epochs: the epochs (1-based, inclusive) the bias trains in; 0 never holds it.
    """

    def __init__(self, model: nn.Module, epochs: int) -> None:
        if epochs < 0:
            raise ValueError(f"the stem bias's training epochs must be >= 0 (0 = every epoch), got {epochs}")
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.bias = first_conv(model).bias if has_conv else None
        self.epochs = epochs
        self.held: torch.Tensor | None = None

    def begin_epoch(self, epoch: int) -> None:
        """Called before 1-based epoch ``epoch``: from ``epochs + 1`` on, the bias's current value is kept."""
        if self.bias is not None and self.epochs > 0 and epoch > self.epochs and self.held is None:
            self.held = self.bias.detach().clone()

    @torch.no_grad()
    def after_step(self) -> None:
        """Writes the held value back (after the optimizer and any weight averaging moved it)."""
        if self.held is not None:
            self.bias.copy_(self.held)
