"""Complexity profile and the report block users hand in.

``flops`` is thop's multiply-accumulate count for one forward pass on one input (thop calls MACs "ops");
``param_size_kb = params × 4 / 1024`` (float32 bytes in KiB, written "kB" as in the lab report).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.common import model_device

DEFAULT_INPUT_SIZE = (1, 3, 32, 32)


@dataclass(frozen=True)
class Complexity:
    """flops: thop MACs for one input; params: number of parameters; param_size_kb: params × 4 / 1024."""

    flops: int
    params: int
    param_size_kb: float


def profile(model: nn.Module, input_size: tuple[int, ...] = DEFAULT_INPUT_SIZE) -> Complexity:
    """Counts MACs (thop) and parameters of ``model`` for one input of ``input_size`` (N, C, H, W).

    The model is left untouched: thop's hooks and ``total_ops`` buffers go onto a deep copy, profiled in eval mode
    on the model's device.
    """
    from thop import profile as thop_profile  # thop prints on import in some versions; keep it out of start-up

    probe = copy.deepcopy(model).eval()
    device = model_device(probe)
    with torch.no_grad():
        macs, _ = thop_profile(probe, inputs=(torch.zeros(input_size, device=device),), verbose=False)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(flops=int(macs), params=int(params), param_size_kb=params * 4 / 1024)


def torch_pruning_flops(model: nn.Module, input_size: tuple[int, ...] = DEFAULT_INPUT_SIZE) -> int:
    """MACs of one input by Torch-Pruning's ``tp.utils.count_ops_and_params`` (a copy of ``model``, eval mode): it
    also counts operations outside layers that thop misses, above all attention's ``q·kᵀ`` and ``attn·v`` matmuls
    (a ViT's count is higher than thop's by those); for plain CNNs the two agree within a fraction of a percent
    (they count BatchNorm, activations and pooling slightly differently)."""
    import torch_pruning as tp

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(probe, torch.zeros(input_size, device=model_device(probe)))
    return int(macs)


def format_report(complexity: Complexity, accuracy: float) -> str:
    """The three-line block of the lab report; ``accuracy`` is top-1 in percent.

    >>> print(format_report(Complexity(31269888, 2221512, 8677.78125), 90.39))
    flops = 31269888
    Model parameter size = 8677.781 kB
    Accuracy = 90.39 %
    """
    return (
        f"flops = {complexity.flops}\n"
        f"Model parameter size = {complexity.param_size_kb:.3f} kB\n"
        f"Accuracy = {accuracy:.2f} %"
    )
