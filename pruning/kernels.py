"""Kernel compression for ``wide_cnn``: turn chosen k×k conv blocks into 1×1 ones, as a new ``wide_cnn``
configuration (``kernel_sizes`` of 1) that ``models.save_model`` writes.

A 1×1 conv costs 1/k² of a k×k one with the same channels and keeps the output shape (same padding). Its weights
start as the least-squares 1×1 map ``W₁ (C_out, C_in)`` from the conv's input to the k×k conv's output at every
pixel over calibration batches (the best pointwise stand-in for the old filter on that data); without calibration
data they start as the sum of the k×k taps (exact for spatially constant inputs). Every other layer keeps its
weights, and BatchNorm statistics are re-estimated when calibration batches are given. Accuracy is then recovered by
training, typically distillation from the uncompressed model.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from models import Complexity, profile
from models.common import Batches
from pruning.fitting import fit_pointwise, recalibrate_bn
from pruning.wide_config import block_names, build_wide, check_wide_cnn, wide_config



@dataclass
class KernelCompressionResult:
    """The compressed model, complexity before/after, and the blocks turned into 1×1 (e.g. ``["conv4"]``)."""

    model: nn.Module
    before: Complexity
    after: Complexity
    converted: list[str] = field(default_factory=list)


def choose_blocks(model: nn.Module, target_flops: int, input_size: tuple[int, ...]) -> list[str]:
    """Blocks to turn into 1×1 so that FLOPs land as close to ``target_flops`` from below as blocks allow.

    Every subset of the k×k blocks is profiled (≤ 2⁸ of them; beyond that, greedily largest saving first); the
    subset with the most FLOPs still ≤ the target wins, fewer blocks on a tie. When no subset fits, every k×k block
    is chosen (the smallest this method gets).
    """
    cfg = wide_config(model)
    names = block_names(model)
    wide = [n for n, k in zip(names, cfg["kernel_sizes"]) if k > 1]
    if len(wide) > 8:
        return _greedy_blocks(cfg, names, wide, target_flops, input_size)
    best: tuple[int, int, list[str]] | None = None
    for r in range(len(wide) + 1):
        for subset in itertools.combinations(wide, r):
            flops = profile(_with_kernels(cfg, names, subset), input_size).flops
            if flops <= target_flops and (best is None or flops > best[0]):
                best = (flops, r, list(subset))
    return best[2] if best is not None else wide


def _greedy_blocks(cfg: dict, names: list[str], wide: list[str], target_flops: int,
                   input_size: tuple[int, ...]) -> list[str]:
    chosen: list[str] = []
    while profile(_with_kernels(cfg, names, chosen), input_size).flops > target_flops and len(chosen) < len(wide):
        left = [n for n in wide if n not in chosen]
        saved = {n: profile(_with_kernels(cfg, names, chosen + [n]), input_size).flops for n in left}
        chosen.append(min(left, key=saved.__getitem__))
    return chosen


def _with_kernels(cfg: dict, names: list[str], ones: Sequence[str]) -> nn.Module:
    new = copy.deepcopy(cfg)
    new["kernel_sizes"] = [1 if n in ones else k for n, k in zip(names, cfg["kernel_sizes"])]
    return build_wide(new)


@torch.no_grad()
def compress_kernels(model: nn.Module, blocks: Sequence[str] | None = None, *, target_flops: int | None = None,
                     calibration: Batches | None = None, input_size: tuple[int, ...] = (1, 3, 32, 32),
                     device: str | torch.device = "cpu") -> KernelCompressionResult:
    """A new ``wide_cnn`` whose ``blocks`` (names like ``"conv4"``) use 1×1 kernels; the input model is unchanged.

    Give ``blocks`` or ``target_flops`` (then :func:`choose_blocks` picks the subset landing closest below it; the
    result may stay above the target when even all-1×1 is too big, or fall well below it — read ``result.after``).

    Raises:
        ValueError: for a non-``wide_cnn`` model, an unknown block name, or neither/both of blocks and target_flops.
    """
    check_wide_cnn(model, "kernel compression")
    if (blocks is None) == (target_flops is None):
        raise ValueError("compress_kernels needs exactly one of blocks or target_flops")
    names = block_names(model)
    calibration = list(calibration) if calibration is not None else None
    if calibration:
        input_size = (1, *calibration[0][0].shape[1:])
    blocks = list(blocks) if blocks is not None else choose_blocks(model, target_flops, input_size)
    unknown = [b for b in blocks if b not in names]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; this wide_cnn has {names}")
    device = torch.device(device)
    model = model.to(device)
    new = _with_kernels(wide_config(model), names, blocks).to(device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in blocks:
        conv = getattr(model.features, name).conv
        state[f"features.{name}.conv.weight"] = _pointwise_weight(model, conv, calibration, device)
    new.load_state_dict(state)
    if calibration:
        recalibrate_bn(new, calibration, device)
    return KernelCompressionResult(new, profile(model, input_size), profile(new, input_size), blocks)


def _pointwise_weight(model: nn.Module, conv: nn.Conv2d, calibration: list | None,
                      device: torch.device) -> torch.Tensor:
    """(C_out, C_in, 1, 1): least squares on calibration data, else the sum of the k×k taps."""
    if not calibration or conv.kernel_size == (1, 1):
        return conv.weight.sum(dim=(2, 3), keepdim=True)
    w = fit_pointwise(model, conv, calibration, lambda x, y: (x, y), device)  # (C_out, C_in)
    return w[:, :, None, None]
