"""Which parts of a model Torch-Pruning traces and prunes: the whole model, or, for ShuffleNetV2, each block's branch.

Torch-Pruning's dependency graph cannot follow ShuffleNetV2's channel shuffle (``view → transpose → view``: building
the graph fails in its reshape index mapping), and the shuffle couples every block output of a stage to the next
block's split, so those channels cannot be pruned independently anyway. What can be pruned is each block's main
branch inside: ``1×1 conv → BN → ReLU → 3×3 depthwise conv → BN → 1×1 conv`` — the first conv's output channels,
which the depthwise conv and the input of the last conv share. For such models the graph is built per branch (with
the input that branch receives in the full model) and the branch's last conv is frozen, so block outputs, the stem and
the last 1×1 conv keep their widths.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Unit:
    """A submodule traced and pruned on its own.

    name: dotted module name (``""`` = the whole model); example_inputs: what it receives in the model's forward
    (B, C, H, W); frozen: unit-relative names of layers whose output channels must not change.
    """

    name: str
    example_inputs: torch.Tensor
    frozen: tuple[str, ...] = ()


def _shufflenet_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from torchvision.models.shufflenetv2 import InvertedResidual

    return [(n, m) for n, m in model.named_modules() if isinstance(m, InvertedResidual)]


def find_units(model: nn.Module, example_inputs: torch.Tensor) -> list[Unit]:
    """The whole model, or one unit per ShuffleNetV2 block branch (see the module docstring)."""
    blocks = _shufflenet_blocks(model)
    if not blocks:
        return [Unit("", example_inputs)]
    captured: dict[str, torch.Tensor] = {}
    handles = [block.branch2.register_forward_pre_hook(
        lambda mod, args, name=name: captured.__setitem__(name, args[0].detach().clone())) for name, block in blocks]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    units = []
    for name, block in blocks:
        convs = [n for n, m in block.branch2.named_modules() if isinstance(m, nn.Conv2d)]
        units.append(Unit(f"{name}.branch2", captured[name], frozen=(convs[-1],)))
    return units
