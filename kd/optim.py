"""Optimizers, their parameter groups and per-step schedules, picked by name on the command line."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.sgd import sgd

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("cosine", "onecycle", "constant", "triangular")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(modules: Iterable[nn.Module], lr: float, weight_decay: float, *, decay_norm_and_bias: bool = True,
                 bn_bias_lr_scale: float = 1.0, bn_weight_lr_scale: float = 1.0,
                 filter_lr_scale: float | None = None) -> list[dict[str, Any]]:
    """The trainable parameters of ``modules`` as optimizer groups, each with its ``name``, ``lr`` and
    ``weight_decay``.

    - ``weights``: conv and linear weights (and any other parameter of 2+ dims): ``lr``, ``weight_decay``.
    - ``biases``: biases of conv and linear layers (and other 1-dim parameters): ``lr``.
    - ``norm_weights``: BatchNorm / GroupNorm / LayerNorm scales: ``lr · bn_weight_lr_scale`` (0 freezes them:
      they are left out, as airbench keeps its BatchNorm scales at 1). Frozen means kept as they are, not reset:
      a fresh model's stay at their init of 1, a pruned student's learned scales stay what the teacher learned.
    - ``norm_biases``: their shifts: ``lr · bn_bias_lr_scale`` (airbench: 64).
    - ``filters``: only when ``filter_lr_scale`` is given (the ``muon`` optimizer): the weights of bias-free convs,
      which a norm layer follows, so their scale does not matter: ``lr · filter_lr_scale``, no weight decay,
      ``"muon": True``. A conv with a bias (the whitening stem) stays in ``weights``.

    Biases and norm parameters get no weight decay unless ``decay_norm_and_bias``; where they do, a group whose
    rate is scaled by ``s`` gets ``weight_decay / s``, so each step still shrinks it by ``lr · weight_decay``.
    Parameters with ``requires_grad = False`` and empty groups are left out; a parameter shared by two modules is
    listed once.
    """
    found: dict[str, list[nn.Parameter]] = {"weights": [], "biases": [], "norm_weights": [], "norm_biases": [],
                                            "filters": []}
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            for pname, p in sub.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(sub, _NORMS):
                    found["norm_weights" if pname == "weight" else "norm_biases"].append(p)
                elif filter_lr_scale is not None and _is_filter(sub, pname):
                    found["filters"].append(p)
                else:
                    found["weights" if p.ndim > 1 else "biases"].append(p)
    scales = {"weights": 1.0, "biases": 1.0, "norm_weights": bn_weight_lr_scale, "norm_biases": bn_bias_lr_scale,
              "filters": filter_lr_scale}
    groups = []
    for name, params in found.items():
        scale = scales[name]
        if not params or scale == 0:
            continue
        if name == "filters":
            groups.append({"name": name, "params": params, "lr": lr * scale, "weight_decay": 0.0, "muon": True})
            continue
        decays = name == "weights" or decay_norm_and_bias
        groups.append({"name": name, "params": params, "lr": lr * scale,
                       "weight_decay": weight_decay / scale if decays else 0.0})
    return groups


def _is_filter(module: nn.Module, pname: str) -> bool:
    """A bias-free conv's weight: the ``muon`` optimizer's share (see :func:`param_groups`)."""
    return isinstance(module, nn.modules.conv._ConvNd) and pname == "weight" and module.bias is None


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_LR_SCALE = 0.16  # the filters' rate per unit SGD rate: airbench94_muon's 0.24 at the fast recipe's 1.5
MUON_MOMENTUM = 0.6  # airbench94_muon's


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximate orthogonalisation of the 2-D ``g`` (m, n): with ``g = U S Vᵀ`` it returns about ``U S' Vᵀ``,
    ``S'`` near 1 (between ~0.5 and ~1.5: the iteration is tuned for speed, not convergence; Jordan et al., Muon).

    From ``X₀ = g / (‖g‖_F + eps)`` (transposed when m > n, so ``X Xᵀ`` is the small Gram matrix), each of ``steps``
    quintic steps is ``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ`` and (a, b, c) = :data:`NS_COEFFICIENTS`. Computed
    in float32 whatever ``g``'s dtype; returns ``g``'s shape and dtype.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024, as airbench94_muon uses it) on the groups marked ``"muon": True``, SGD with Nesterov
    momentum and coupled weight decay (``torch.optim.SGD``'s arithmetic) on the others.

    A Muon step on a filter ``W`` (out, in, kh, kw) with gradient ``G``, momentum ``μ`` (``muon_momentum``)::

        B ← μ B + G;   U = G + μ B                          (Nesterov)
        W ← W · sqrt(out) / ‖W‖_F                           (the scale a following norm layer ignores, held fixed)
        W ← W − lr · newton_schulz(U as (out, in·kh·kw))    (an update with all singular values near 1)

    Holding ‖W‖ fixed keeps the effective step of a scale-invariant filter constant, so Muon groups need no weight
    decay. The other groups: ``D = G + wd · W;  B ← m B + D (B = D at the first step);  W ← W − lr (D + m B)``.
    """

    def __init__(self, params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float, momentum: float = 0.85,
                 weight_decay: float = 0.0, muon_momentum: float = MUON_MOMENTUM, ns_steps: int = 3) -> None:
        if lr < 0 or not 0 <= momentum < 1 or not 0 <= muon_momentum < 1 or weight_decay < 0:
            raise ValueError(f"Muon needs lr >= 0, momenta in [0, 1) and weight_decay >= 0; got lr={lr}, "
                             f"momentum={momentum}, muon_momentum={muon_momentum}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "muon": False,
                                  "muon_momentum": muon_momentum, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102 - see the class docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            (self._muon_step if group["muon"] else self._sgd_step)(params, group)
        return loss

    def _muon_step(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        mu = group["muon_momentum"]
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu)
            p.mul_(math.sqrt(p.shape[0]) / p.norm().clamp_min(1e-12))
            p.add_(newton_schulz(update.reshape(len(update), -1), group["ns_steps"]).view_as(p), alpha=-group["lr"])

    def _sgd_step(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """torch.optim.SGD's own update (its functional form), the momentum buffers kept in this optimizer's state."""
        m = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"], momentum=m,
            lr=group["lr"], dampening=0.0, nesterov=m > 0, maximize=False)
        if m:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf


def make_optimizer(name: str, params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float,
                   weight_decay: float = 5e-4, momentum: float = 0.9,
                   muon_momentum: float = MUON_MOMENTUM) -> torch.optim.Optimizer:
    """``sgd``: SGD with Nesterov momentum ``momentum`` (plain SGD at 0); ``adamw``: AdamW; ``muon``: :class:`Muon`
    on the ``"muon"`` groups (``muon_momentum``), the same SGD on the rest. ``params`` may be parameters (weight
    decay on all of them) or :func:`param_groups` (their own rates and decays)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "muon":
        return Muon(params, lr=lr, momentum=momentum, weight_decay=weight_decay, muon_momentum=muon_momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def optimizer_for(name: str, modules: Iterable[nn.Module], lr: float, weight_decay: float, momentum: float, *,
                  muon_lr_scale: float = MUON_LR_SCALE, muon_momentum: float = MUON_MOMENTUM,
                  **group_options: Any) -> torch.optim.Optimizer:
    """:func:`make_optimizer` ``name`` over :func:`param_groups` of ``modules`` (``group_options``: its
    ``decay_norm_and_bias``, ``bn_bias_lr_scale``, ``bn_weight_lr_scale``); for ``muon`` the filters get their own
    group at ``lr · muon_lr_scale`` and ``muon_momentum``."""
    groups = param_groups(modules, lr, weight_decay, filter_lr_scale=muon_lr_scale if name == "muon" else None,
                          **group_options)
    return make_optimizer(name, groups, lr, weight_decay, momentum, muon_momentum)


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
