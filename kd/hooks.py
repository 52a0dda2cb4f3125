"""Forward hooks that capture a layer's output without rewriting the model."""
from __future__ import annotations

import torch
from torch import nn


class FeatureHook:
    """Keeps the latest output of ``model.get_submodule(layer)`` in ``.output`` (B, C, H, W) until ``remove()``."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            names = ", ".join(n for n, _ in model.named_modules() if n)
            raise ValueError(f"layer {layer!r} is not in the model; its layers are: {names}") from None
        self.layer = layer
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.output = output

    def remove(self) -> None:
        self._handle.remove()
        self.output = None
