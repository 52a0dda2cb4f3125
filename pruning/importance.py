"""Channel importance criteria, a registry picked by name on the command line (``l1``, ``l2``, ``random``, ``taylor``,
``activation``), the way timm registers models.

:data:`IMPORTANCES` maps each name to a Torch-Pruning importance class: called on a dependency group, an instance
returns one score per channel of the group (higher = keep). A criterion that reads calibration batches first has a
``calibrate(model, batches, max_batches)`` method, which :func:`pruning.prune` calls before scoring:

* ``taylor`` (Molchanov et al., 2019, "Importance Estimation for Neural Network Pruning"): ``|w · ∂L/∂w|`` summed
  over each channel's weights, with ``L`` the mean cross-entropy over the calibration batches
  (:func:`accumulate_gradients` fills ``.grad``; Torch-Pruning's ``TaylorImportance`` reads it).
* ``activation``: mean ``|a|`` of each channel's activation over the calibration batches, as seen by the layers that
  consume it (the input of the next conv/linear, i.e. after BN, ReLU and pooling); :func:`record_activations` stores
  the means on the layers and :class:`ActivationImportance` reads them.

To add a criterion: a class here with ``@register_importance("name")`` (and ``calibrate`` if it reads data); the
recipes' ``--importance`` choices read the registry.
"""
from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

from models.common import Batches, eval_mode, model_device

T = TypeVar("T", bound=type)

IMPORTANCES: dict[str, type] = {}

_ACT_IN = "_ptd_activation_in"  # (C_in,) mean |input| per input channel, on conv/linear layers
_ACT_OUT = "_ptd_activation_out"  # (C,) mean |output| per channel, on BatchNorm layers (fallback)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def register_importance(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_importance("l1")`` adds the class to :data:`IMPORTANCES` under ``name``."""
    def add(cls: T) -> T:
        if name in IMPORTANCES:
            raise ValueError(f"importance {name!r} is already registered ({IMPORTANCES[name].__name__})")
        IMPORTANCES[name] = cls
        return cls
    return add


def make_importance(importance: str | Any, seed: int = 0) -> tuple[str, Any]:
    """``(name, Torch-Pruning importance object)`` for a name in :data:`IMPORTANCES` (``seed`` goes to the criteria
    that draw random numbers), or an importance object passed through under its class name.

    Raises:
        ValueError: for an unknown name.
    """
    if not isinstance(importance, str):
        if not callable(importance):
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)} or a Torch-Pruning importance "
                             f"object, got {importance!r}")
        return type(importance).__name__, importance
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
    cls = IMPORTANCES[importance]
    return importance, cls(seed=seed) if "seed" in inspect.signature(cls).parameters else cls()


def needs_calibration(importance: str | Any) -> bool:
    """True for criteria (names or objects) that read calibration batches: those with a ``calibrate`` method, and
    Torch-Pruning's own Taylor objects (which read the gradients :func:`accumulate_gradients` leaves)."""
    if isinstance(importance, str):
        return hasattr(IMPORTANCES.get(importance), "calibrate")
    return hasattr(importance, "calibrate") or isinstance(importance, tp.importance.GroupTaylorImportance)


def calibrated_names() -> list[str]:
    """The registered criteria that read calibration batches."""
    return [name for name in IMPORTANCES if needs_calibration(name)]


def calibrate(importance: Any, model: nn.Module, batches: Batches, max_batches: int = 16) -> None:
    """Lets ``importance`` read ``batches`` on ``model`` before it scores groups (nothing for data-free criteria)."""
    if hasattr(importance, "calibrate"):
        importance.calibrate(model, batches, max_batches)
    elif isinstance(importance, tp.importance.GroupTaylorImportance):
        accumulate_gradients(model, batches, max_batches)


@register_importance("l1")
class L1Importance(tp.importance.MagnitudeImportance):
    """Group L1 norm of each channel's weights, mean over the group, mean-normalised (filter L1 norm)."""

    def __init__(self) -> None:
        super().__init__(p=1)


@register_importance("l2")
class L2Importance(tp.importance.MagnitudeImportance):
    """Group L2 norm of each channel's weights, mean over the group, mean-normalised."""

    def __init__(self) -> None:
        super().__init__(p=2)


@register_importance("random")
class SeededRandomImportance(tp.importance.Importance):
    """Random scores (a control for the other criteria), drawn from ``seed`` and the group's root layer name.

    The same group gets the same scores on every call, so pruning a copy of the model twice removes the same
    channels (Torch-Pruning's ``RandomImportance`` draws from the global generator instead).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor:
        root_module = group[0].dep.target.module
        name = group._DG._module2name.get(root_module, type(root_module).__name__)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.rand(len(group[0].idxs), generator=gen)


@register_importance("taylor")
class TaylorImportance(tp.importance.TaylorImportance):
    """First-order Taylor ``|w · ∂L/∂w|`` with the cross-entropy gradients of the calibration batches."""

    def calibrate(self, model: nn.Module, batches: Batches, max_batches: int = 16) -> None:
        accumulate_gradients(model, batches, max_batches)


@register_importance("activation")
class ActivationImportance(tp.importance.GroupMagnitudeImportance):
    """Mean ``|activation|`` of each channel over calibration batches (call :func:`record_activations` first).

    A channel's score is the mean absolute value of the inputs that consumer layers (conv, linear) receive on that
    channel, averaged over the group's consumers; a group without such consumers falls back to the mean ``|output|``
    of its BatchNorm layers. Scores are divided by their mean within the group (as for ``l1``), so
    ``global_pruning`` compares channels across layers on a common scale.
    """

    def __init__(self, group_reduction: str = "mean", normalizer: str | None = "mean") -> None:
        super().__init__(p=1, group_reduction=group_reduction, normalizer=normalizer)

    def calibrate(self, model: nn.Module, batches: Batches, max_batches: int = 16) -> None:
        record_activations(model, batches, max_batches)

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        consumers: tuple[list, list] = ([], [])  # (scores, root indices)
        fallback: tuple[list, list] = ([], [])
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root_idxs = dep.target.module, dep.handler, group[i].root_idxs
            depthwise_out = (fn == function.prune_conv_out_channels and isinstance(layer, nn.Conv2d)
                             and layer.groups > 1 and layer.groups == layer.in_channels)
            if (fn in _IN_FNS or depthwise_out) and hasattr(layer, _ACT_IN):
                consumers[0].append(getattr(layer, _ACT_IN)[idxs])
                consumers[1].append(root_idxs)
            elif fn == function.prune_batchnorm_out_channels and hasattr(layer, _ACT_OUT):
                fallback[0].append(getattr(layer, _ACT_OUT)[idxs])
                fallback[1].append(root_idxs)
        scores, roots = consumers if consumers[0] else fallback
        if not scores:
            return None
        return self._normalize(self._reduce(scores, roots), self.normalizer)


def _batches(calibration: Batches, max_batches: int, device: torch.device):
    for i, (x, y) in enumerate(calibration):
        if i >= max_batches:
            break
        yield x.to(device), y.to(device)


def record_activations(model: nn.Module, calibration: Batches, max_batches: int = 16) -> int:
    """Runs ``model`` (in eval mode) on up to ``max_batches`` calibration batches and stores on every conv/linear
    layer the mean ``|input|`` per input channel, and on every BatchNorm the mean ``|output|`` per channel.

    Returns the number of batches read. Raises ValueError when ``calibration`` yields none.
    """
    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def channel_mean(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().abs().float()
        if t.dim() == 4:  # (B, C, H, W) → (C,)
            return t.mean((0, 2, 3))
        return t.reshape(-1, t.shape[-1]).mean(0)  # (B, F) or (B, T, F) → (F,)

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        t = output if isinstance(module, nn.modules.batchnorm._BatchNorm) else inputs[0]
        sums[module] = sums.get(module, 0) + channel_mean(t)
        counts[module] = counts.get(module, 0) + 1

    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    n = 0
    try:
        with eval_mode(model), torch.no_grad():
            for x, _ in _batches(calibration, max_batches, model_device(model)):
                model(x)
                n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("importance='activation' needs calibration batches, but the calibration iterable was empty")
    for module, total in sums.items():
        attr = _ACT_OUT if isinstance(module, nn.modules.batchnorm._BatchNorm) else _ACT_IN
        setattr(module, attr, (total / counts[module]).cpu())
    return n


def accumulate_gradients(model: nn.Module, calibration: Batches, max_batches: int = 16) -> int:
    """Fills ``p.grad`` of every parameter with the gradient of the mean cross-entropy over up to ``max_batches``
    calibration batches (model in eval mode: BatchNorm statistics and dropout are left alone).

    Parameters are made trainable for the backward pass and their ``requires_grad`` restored afterwards.
    Returns the number of batches read. Raises ValueError when ``calibration`` yields none.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    n = 0
    for p in params:
        p.grad = None
        p.requires_grad_(True)
    try:
        with eval_mode(model):
            for x, y in _batches(calibration, max_batches, model_device(model)):
                nn.functional.cross_entropy(model(x), y).backward()  # gradients add up over the batches
                n += 1
        if n == 0:
            raise ValueError("importance='taylor' needs calibration batches, but the calibration iterable was empty")
        for p in params:
            if p.grad is not None:
                p.grad /= n  # the gradient of the mean loss over the batches
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return n


def clear_calibration(model: nn.Module) -> None:
    """Removes what :func:`record_activations` and :func:`accumulate_gradients` left on ``model``."""
    for module in model.modules():
        for attr in (_ACT_IN, _ACT_OUT):
            if hasattr(module, attr):
                delattr(module, attr)
    for p in model.parameters():
        p.grad = None
