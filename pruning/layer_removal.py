"""Layer removal for ``wide_cnn``: rank the conv blocks by the accuracy lost when each is bypassed, remove the
least important ones, and hand back a smaller ``wide_cnn`` that ``models.save_model`` writes.

Bypassing block ``i`` (input ``x`` with C_{i-1} channels, output C_i channels) replaces it by

    x → [MaxPool2d(2) when block i had it] → P · x          P: (C_i, C_{i-1}) 1×1 projection

with ``P`` the identity when C_{i-1} = C_i and otherwise the least-squares 1×1 map from the block's (pooled) input to
its output on calibration batches. ``P`` is linear and the next conv has no bias and zero padding, so it folds
exactly into the next conv's weights (``W'[o, j] = Σ_c W[o, c] P[c, j]``), or into the first FC layer when the
removed block is the last one (average pooling commutes with ``P``); a kept pool moves to the previous block, whose
ReLU output it now follows. The bypassed network is therefore exactly the smaller ``wide_cnn``: ranking evaluates the
very model that removal returns (after re-estimating BatchNorm statistics on the calibration batches).

A block cannot be removed when it is the only one, or when it has the pool and the previous block has a pool too
(or there is no previous block): ``wide_cnn`` holds at most one pool per block.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kd.trainer import evaluate
from models import Complexity, profile
from models.common import Batches
from pruning.fitting import fit_pointwise, recalibrate_bn
from pruning.wide_config import block_names, build_wide, check_wide_cnn, wide_config



@dataclass
class BlockScore:
    """One conv block's bypass test: accuracy (percent) of the model without it and the drop from the full model."""

    name: str
    index: int
    removable: bool
    accuracy: float = float("nan")
    drop: float = float("nan")
    flops_after: int = 0
    reason: str = ""


@dataclass
class LayerRemovalResult:
    """The smaller model, its complexity before/after, removed block names (original numbering) and each round's
    scores."""

    model: nn.Module
    before: Complexity
    after: Complexity
    removed: list[str] = field(default_factory=list)
    rounds: list[list[BlockScore]] = field(default_factory=list)


def removable(model: nn.Module, index: int) -> tuple[bool, str]:
    """Whether block ``index`` can be removed from this ``wide_cnn``, and why not."""
    cfg = wide_config(model)
    pools = set(cfg["pool_after"])
    if len(cfg["widths"]) == 1:
        return False, "the only conv block"
    if index in pools and (index == 0 or index - 1 in pools):
        return False, "its pool has no previous pool-free block to move to"
    return True, ""


def _projection(model: nn.Module, index: int, calibration: Batches, device: torch.device) -> torch.Tensor:
    """P (C_i, C_{i-1}): identity when channels match, else least squares from the (pooled) block input to output."""
    block = getattr(model.features, f"conv{index + 1}")
    c_in, c_out = block.conv.in_channels, block.conv.out_channels
    if c_in == c_out:
        return torch.eye(c_out)
    has_pool = hasattr(block, "pool")

    def pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.max_pool2d(x, 2) if has_pool else x), y  # x (B, C_{i-1}, H, W) → y (B, C_i, H', W')

    return fit_pointwise(model, block, calibration, pair, device).cpu()


@torch.no_grad()
def remove_block(model: nn.Module, index: int, calibration: Batches, device: str | torch.device = "cpu") -> nn.Module:
    """A new ``wide_cnn`` without conv block ``index`` (0-based), the bypass folded into the next layer.

    The input model is not changed. BatchNorm statistics are the old ones; call
    :func:`pruning.fitting.recalibrate_bn` to re-estimate them.

    Raises:
        ValueError: for a non-``wide_cnn`` model, an index out of range, or a block that cannot be removed.
    """
    check_wide_cnn(model, "layer removal")
    cfg = wide_config(model)
    n = len(cfg["widths"])
    if not 0 <= index < n:
        raise ValueError(f"block index {index} is out of range for a wide_cnn with {n} blocks (0..{n - 1})")
    ok, why = removable(model, index)
    if not ok:
        raise ValueError(f"block {index} (conv{index + 1}) cannot be removed: {why}")
    device = torch.device(device)
    proj = _projection(model, index, calibration, device)  # (C_i, C_{i-1})
    new_cfg = copy.deepcopy(cfg)
    del new_cfg["widths"][index], new_cfg["kernel_sizes"][index]
    pools = [p - (p > index) for p in cfg["pool_after"] if p != index]  # indices after the removed block shift left
    if index in cfg["pool_after"]:
        pools.append(index - 1)
    new_cfg["pool_after"] = sorted(pools)
    new = build_wide(new_cfg).to(device)
    state = _renumbered_state(model, index)
    if index + 1 < n:  # fold P into the next conv: (C_{i+1}, C_i, k, k) → (C_{i+1}, C_{i-1}, k, k)
        key = f"features.conv{index + 1}.conv.weight"  # the next block, already renumbered
        state[key] = torch.einsum("ockl,cj->ojkl", state[key], proj.to(device))
    else:  # fold P into the first head layer: columns are channel-major (C_i · head_pool²)
        head = "fc.0.weight" if cfg["hidden"] > 0 else "classifier.weight"
        w = state[head]
        w = w.view(w.shape[0], proj.shape[0], -1)  # (H, C_i, head_pool²)
        state[head] = torch.einsum("hcs,cj->hjs", w, proj.to(device)).reshape(w.shape[0], -1)
    new.load_state_dict(state)
    return new


def _renumbered_state(model: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """The state dict without block ``index``; later blocks renamed conv{k+1} → conv{k}."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("features.conv"):
            block, rest = key[len("features.conv"):].split(".", 1)
            k = int(block) - 1
            if k == index:
                continue
            key = f"features.conv{k + (k < index)}.{rest}"
        state[key] = value.clone()
    return state


def rank_blocks(model: nn.Module, calibration: Batches, val: Batches, device: str | torch.device = "cpu",
                input_size: tuple[int, ...] | None = None) -> list[BlockScore]:
    """Bypass test of every block: accuracy on ``val`` of the model without it, least important first.

    ``calibration`` fits the projections and re-estimates BatchNorm statistics; ``val`` scores (a split of the
    training data, not the test set). Ties in the drop go to the block whose removal saves more FLOPs.
    """
    calibration = list(calibration)
    input_size = input_size or (1, *calibration[0][0].shape[1:])
    base = evaluate(model, val, device).accuracy
    scores = []
    for i, name in enumerate(block_names(model)):
        ok, why = removable(model, i)
        if not ok:
            scores.append(BlockScore(name, i, False, reason=why))
            continue
        candidate = recalibrate_bn(remove_block(model, i, calibration, device), calibration, device)
        acc = evaluate(candidate, val, device).accuracy
        scores.append(BlockScore(name, i, True, acc, base - acc, profile(candidate, input_size).flops))
    return sorted(scores, key=lambda s: (not s.removable, s.drop if s.removable else 0.0, s.flops_after))


def remove_layers(model: nn.Module, calibration: Batches, val: Batches, *, target_flops: int | None = None,
                  num_blocks: int | None = None, device: str | torch.device = "cpu") -> LayerRemovalResult:
    """Greedy layer removal: rank the blocks, remove the least important, re-rank, until ``target_flops`` is met or
    ``num_blocks`` blocks are gone (give exactly one). The input model is not changed.

    The result may land below ``target_flops`` (a block is all or nothing) and stops early when no block can be
    removed; read the real complexity in ``result.after``.
    """
    if (target_flops is None) == (num_blocks is None):
        raise ValueError("remove_layers needs exactly one of target_flops or num_blocks")
    check_wide_cnn(model, "layer removal")
    calibration = list(calibration)
    input_size = (1, *calibration[0][0].shape[1:])
    current = copy.deepcopy(model).to(device)
    before = profile(current, input_size)
    original = block_names(current)  # conv names of the input model, to report removals in its numbering
    result = LayerRemovalResult(current, before, before)
    while True:
        flops = profile(current, input_size).flops
        if (target_flops is not None and flops <= target_flops) or (num_blocks is not None and
                                                                     len(result.removed) >= num_blocks):
            break
        scores = rank_blocks(current, calibration, val, device, input_size)
        result.rounds.append(scores)
        if not scores[0].removable:
            break
        i = scores[0].index
        current = recalibrate_bn(remove_block(current, i, calibration, device), calibration, device)
        result.removed.append(original.pop(i))
    result.model, result.after = current, profile(current, input_size)
    return result
