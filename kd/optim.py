"""Optimizers, their parameter groups and per-step schedules, picked by name on the command line."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant", "triangular")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(modules: Iterable[nn.Module], lr: float, weight_decay: float, *, decay_norm_and_bias: bool = True,
                 bn_bias_lr_scale: float = 1.0, bn_weight_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The trainable parameters of ``modules`` as optimizer groups, each with its ``name``, ``lr`` and
    ``weight_decay``.

    - ``weights``: conv and linear weights (and any other parameter of 2+ dims): ``lr``, ``weight_decay``.
    - ``biases``: biases of conv and linear layers (and other 1-dim parameters): ``lr``.
    - ``norm_weights``: BatchNorm / GroupNorm / LayerNorm scales: ``lr · bn_weight_lr_scale`` (0 freezes them:
      they are left out, as airbench keeps its BatchNorm scales at 1). Frozen means kept as they are, not reset:
      a fresh model's stay at their init of 1, a pruned student's learned scales stay what the teacher learned.
    - ``norm_biases``: their shifts: ``lr · bn_bias_lr_scale`` (airbench: 64).

    Biases and norm parameters get no weight decay unless ``decay_norm_and_bias``; where they do, a group whose
    rate is scaled by ``s`` gets ``weight_decay / s``, so each step still shrinks it by ``lr · weight_decay``.
    Parameters with ``requires_grad = False`` and empty groups are left out; a parameter shared by two modules is
    listed once.
    """
    found: dict[str, list[nn.Parameter]] = {"weights": [], "biases": [], "norm_weights": [], "norm_biases": []}
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            for pname, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(sub, _NORMS):
                    found["norm_weights" if pname == "weight" else "norm_biases"].append(p)
                else:
                    found["weights" if p.ndim > 1 else "biases"].append(p)
    scales = {"weights": 1.0, "biases": 1.0, "norm_weights": bn_weight_lr_scale, "norm_biases": bn_bias_lr_scale}
    groups = []
    for name, params in found.items():
        scale = scales[name]
        if not params or scale == 0:
            continue
        decays = name == "weights" or decay_norm_and_bias
        groups.append({"name": name, "params": params, "lr": lr * scale,
                       "weight_decay": weight_decay / scale if decays else 0.0})
    return groups


def make_optimizer(name: str, params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float,
                   weight_decay: float = 5e-4, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd``: SGD with Nesterov momentum ``momentum`` (plain SGD at 0); ``adamw``: AdamW. ``params`` may be
    parameters (weight decay on all of them) or :func:`param_groups` (their own rates and decays)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def triangular(step: int, total_steps: int, warmup: float = 0.23, start: float = 0.2, end: float = 0.07) -> float:
    """The rate multiplier of the ``triangular`` schedule at 0-based ``step`` (airbench94's):
    linear from ``start`` to 1 over the first ``warmup · total`` steps, then linear from 1 to ``end`` at the last."""
    warm = int(total_steps * warmup)
    if step < warm:
        frac = step / warm
        return start + (1.0 - start) * frac
    frac = (step - warm) / max(1, total_steps - warm)
    return 1.0 + (end - 1.0) * min(frac, 1.0)


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup: float = 0.23) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule stepped once per batch over ``total_steps``; each group's own rate is its peak.

    ``cosine``: lr · (1 + cos(π t / total)) / 2; ``onecycle``: 30 % warm-up to lr then cosine annealing down
    (Smith, 2018); ``constant``: lr throughout; ``triangular``: :func:`triangular` (warm-up over ``warmup`` of the
    steps from 0.2·lr, then linear decay to 0.07·lr), the fast recipe's, meant for large batches.
    """
    total_steps = max(1, total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "triangular":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: triangular(step, total_steps, warmup))
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
