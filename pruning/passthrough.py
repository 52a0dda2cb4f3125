"""Torch-Pruning's own options, passed through :func:`pruning.prune` by layer name.

``prune`` works on copies of the model (a deep copy, then one copy per ratio the target search tries), so the layers
and parameters a caller names in ``num_heads``, ``unwrapped_parameters``, ``customized_pruners`` and
``pruning_ratio_dict`` are kept as dotted names of the input model and looked up again in each copy (and each
:class:`pruning.units.Unit` of it) when a Torch-Pruning pruner is built.

Multi-head attention follows Torch-Pruning's timm example (``examples/timm_models/prune_timm_models.py``): every
module with an integer ``num_heads`` and a ``qkv`` (or ``qkv_proj``) linear layer gives ``num_heads[qkv] = heads``,
so the qkv output channels are pruned alike in every head; after pruning the module's ``head_dim`` becomes
``qkv.out_features // (3 · num_heads)`` (and timm's ``attn_dim`` becomes ``num_heads · head_dim``), which its
forward reshapes by.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

_QKV_NAMES = ("qkv", "qkv_proj")


@dataclass(frozen=True)
class TorchPruningOptions:
    """Torch-Pruning options by dotted name (relative to the input model).

    heads: ``{qkv layer: number of heads}``; unwrapped: ``{parameter: pruned dim}``; pruners: ``{layer class or
    layer name: pruning function}``; ratios: ``{layer: fixed pruning ratio}``.
    """

    heads: dict[str, int] = field(default_factory=dict)
    unwrapped: dict[str, int] = field(default_factory=dict)
    pruners: dict[type | str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    @classmethod
    def named(cls, model: nn.Module, num_heads: Mapping[nn.Module | str, int] | None = None,
              unwrapped_parameters: Mapping[nn.Parameter | str, int] | None = None,
              customized_pruners: Mapping[type | nn.Module | str, Any] | None = None,
              pruning_ratio_dict: Mapping[nn.Module | str, float] | None = None) -> TorchPruningOptions:
        """The options with every module and parameter replaced by its dotted name in ``model``; ``num_heads=None``
        finds the attention layers (see the module docstring).

        Raises:
            ValueError: a module or parameter that is not ``model``'s, a name it lacks, a ratio outside [0, 1), a
                head count or dim that is not a whole number >= 0.
        """
        heads = find_num_heads(model) if num_heads is None else {
            _module_name(model, k, "num_heads"): _whole(v, "num_heads", 1) for k, v in num_heads.items()}
        unwrapped = {_parameter_name(model, k): _whole(v, "unwrapped_parameters", 0)
                     for k, v in (unwrapped_parameters or {}).items()}
        pruners = {k if isinstance(k, type) else _module_name(model, k, "customized_pruners"): v
                   for k, v in (customized_pruners or {}).items()}
        ratios = {}
        for k, v in (pruning_ratio_dict or {}).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ValueError(f"pruning_ratio_dict ratios must be in [0, 1), got {v!r}")
            ratios[_module_name(model, k, "pruning_ratio_dict")] = float(v)
        return cls(heads, unwrapped, pruners, ratios)

    def for_unit(self, sub: nn.Module, prefix: str) -> dict[str, Any]:
        """Torch-Pruning's keyword arguments for the unit ``sub`` (dotted names under ``prefix`` in the model),
        with ``sub``'s own modules and parameters."""
        def local(names: Mapping[str, Any]) -> dict[str, Any]:
            return {n.removeprefix(prefix): v for n, v in names.items() if n.startswith(prefix)}

        pruners = {k: v for k, v in self.pruners.items() if isinstance(k, type)}
        pruners.update({sub.get_submodule(n): v for n, v in local(
            {k: v for k, v in self.pruners.items() if isinstance(k, str)}).items()})
        return {"num_heads": {sub.get_submodule(n): v for n, v in local(self.heads).items()},
                "unwrapped_parameters": [(sub.get_parameter(n), d) for n, d in local(self.unwrapped).items()] or None,
                "customized_pruners": pruners or None}


def find_num_heads(model: nn.Module) -> dict[str, int]:
    """``{qkv layer name: heads}`` of every attention module (an integer ``num_heads`` and a ``qkv`` or
    ``qkv_proj`` linear layer), as Torch-Pruning's timm example finds them."""
    found = {}
    for name, module in model.named_modules():
        heads = vars(module).get("num_heads")
        qkv = next((q for q in (getattr(module, n, None) for n in _QKV_NAMES) if isinstance(q, nn.Linear)), None)
        if isinstance(heads, int) and qkv is not None:
            qkv_name = next(n for n in _QKV_NAMES if getattr(module, n, None) is qkv)
            found[f"{name}.{qkv_name}" if name else qkv_name] = heads
    return found


def sync_attention(model: nn.Module, heads: Mapping[nn.Module, int]) -> None:
    """After pruning: each attention module whose qkv layer is in ``heads`` (Torch-Pruning's ``pruner.num_heads``,
    updated when heads are removed) gets ``num_heads``, ``head_dim = qkv.out_features // (3 · num_heads)`` and, when
    it has one, ``attn_dim = num_heads · head_dim``."""
    for module in model.modules():
        qkv = next((q for q in (getattr(module, n, None) for n in _QKV_NAMES) if q in heads), None)
        if qkv is None or not isinstance(vars(module).get("num_heads"), int):
            continue
        module.num_heads = int(heads[qkv])
        if isinstance(vars(module).get("head_dim"), int):
            module.head_dim = qkv.out_features // (3 * module.num_heads)
        if isinstance(vars(module).get("attn_dim"), int):
            module.attn_dim = module.num_heads * module.head_dim


def _module_name(model: nn.Module, key: nn.Module | str, option: str) -> str:
    if isinstance(key, str):
        try:
            model.get_submodule(key)
        except AttributeError:
            raise ValueError(f"{option} names {key!r}, which is not a layer of {type(model).__name__}") from None
        return key
    names = {id(m): n for n, m in model.named_modules()}
    if id(key) not in names:
        raise ValueError(f"{option} holds a {type(key).__name__} that is not a layer of the model")
    return names[id(key)]


def _parameter_name(model: nn.Module, key: nn.Parameter | str) -> str:
    if isinstance(key, str):
        try:
            model.get_parameter(key)
        except AttributeError:
            raise ValueError(f"unwrapped_parameters names {key!r}, which is not a parameter of "
                             f"{type(model).__name__}") from None
        return key
    names = {id(p): n for n, p in model.named_parameters()}
    if id(key) not in names:
        raise ValueError("unwrapped_parameters holds a tensor that is not a parameter of the model")
    return names[id(key)]


def _whole(value: Any, option: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} values must be whole numbers >= {minimum}, got {value!r}")
    return value
