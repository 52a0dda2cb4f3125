"""A model file checked against the architecture it declares, before any weight is copied.

A file names an architecture (``arch``, ``num_classes``, ``arch_kwargs``), the widths pruning gave its layers and
a state dict. Each part is checked against the others: the widths may only set width attributes (:data:`WIDTH_ATTRS`)
of layers the architecture has, to positive whole numbers; every tensor's shape must be the one its layer's widths
and kernel imply (not whatever the file holds); the keys must be exactly the architecture's; the rebuilt model must
map an image to ``num_classes`` outputs. Every failure is a :class:`models.errors.FileFormatError` naming the file
and the first mismatch, so a damaged or edited file never trains, reports wrong FLOPs or ends in a raw traceback.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.errors import FileFormatError

# Integer (or shape) attributes that pruning changes; recorded for every module that has one of them.
WIDTH_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features",
    "num_features", "num_channels", "num_groups", "normalized_shape",
    "num_heads", "head_dim", "attn_dim",  # attention whose head dims pruning shrank (pruning.passthrough)
)


def check_payload(payload: Mapping[str, Any], where: str) -> None:
    """The types of a model file's parts: ``num_classes`` a whole number >= 1, ``arch_kwargs`` and ``meta`` objects
    with text keys, ``widths`` ``{layer: {attribute: whole number or list}}``, ``state_dict`` ``{name: tensor}``.

    Raises:
        FileFormatError: naming ``where`` and the part that is wrong.
    """
    def bad(what: str) -> FileFormatError:
        return FileFormatError(f"{where} is damaged or edited: {what}; write it again with models.save_model or "
                               "pruning.save")

    if not isinstance(payload.get("arch"), str):
        raise bad("its 'arch' is not an architecture name")
    classes = payload.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise bad(f"its num_classes {classes!r} is not a whole number >= 1")
    for part in ("arch_kwargs", "widths", "meta"):
        value = payload.get(part, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad(f"its {part!r} is not an object with text keys")
    for layer, attrs in payload.get("widths", {}).items():
        if not isinstance(attrs, dict):
            raise bad(f"its stored widths of layer {layer!r} are not an object")
    for name, value in payload["state_dict"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise bad(f"its state dict entry {name!r} is not a tensor")
    problem = _meta_problem(payload.get("meta", {}), int(payload.get("arch_kwargs", {}).get("in_chans", 3)))
    if problem:
        raise bad(problem)


def _meta_problem(meta: Mapping[str, Any], channels: int) -> str | None:
    """What is wrong with the meta entries the recipes read (normalisation, classes, image size), or None."""
    for key in ("mean", "std"):
        if key in meta:
            value = meta[key]
            if not isinstance(value, list) or len(value) != channels or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                return f"its meta {key!r} {value!r} is not a list of {channels} finite numbers"
    if "std" in meta and any(v <= 0 for v in meta["std"]):
        return f"its meta 'std' {meta['std']!r} has a value <= 0"
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        return f"its meta 'classes' {classes!r} is not a list of class names"
    size = meta.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        return f"its meta 'image_size' {size!r} is not a whole number >= 1"
    return None


def apply_widths(model: nn.Module, widths: Mapping[str, Mapping[str, Any]], state_dict: Mapping[str, torch.Tensor],
                 where: str) -> None:
    """Sets the recorded width attributes on ``model``'s layers, then gives each conv, linear and normalisation
    layer parameters and buffers of the shapes those widths imply (empty; the weights are loaded afterwards).

    A tensor of another kind of layer (a layer scale, a position embedding) has no width to follow: it takes the
    file's shape when that is the architecture's with some sizes smaller (pruning only removes channels), and
    keeps the architecture's otherwise (so :func:`check_state_dict` names it).

    Raises:
        FileFormatError: a layer the architecture lacks, an attribute that is not a width of that layer, a value
            that is not a positive whole number.
    """
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        module = modules.get(name)
        if module is None:
            raise FileFormatError(f"{where}: its stored widths name layer {name!r}, which architecture "
                                  f"{_arch(model)!r} does not have")
        for attr, value in attrs.items():
            _set_width(module, name, attr, value, where)
    for name, module in modules.items():
        _resize(module, f"{name}." if name else "", state_dict)
        _follow_pruned(module, f"{name}." if name else "", state_dict)


def _set_width(module: nn.Module, name: str, attr: str, value: Any, where: str) -> None:
    if attr not in WIDTH_ATTRS or attr not in vars(module):
        known = [a for a in WIDTH_ATTRS if a in vars(module)]
        raise FileFormatError(f"{where}: its stored widths give layer {name!r} an entry {attr!r}, which is not one of "
                              f"its widths ({', '.join(known) or 'none'})")
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
        raise FileFormatError(f"{where}: its stored width {name}.{attr} = {value!r} is not a positive whole number")
    if isinstance(vars(module)[attr], tuple) != isinstance(value, list):
        raise FileFormatError(f"{where}: its stored width {name}.{attr} = {value!r} has the wrong form (expected "
                              f"{'a list' if isinstance(vars(module)[attr], tuple) else 'a number'})")
    setattr(module, attr, tuple(value) if isinstance(value, list) else value)


def _expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shapes of ``module``'s own parameters and buffers implied by its width attributes (known layer types)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        cin, cout = module.in_channels, module.out_channels
        weight = (cin, cout // module.groups) if module.transposed else (cout, cin // module.groups)
        return {"weight": (*weight, *module.kernel_size), "bias": (cout,)}
    if isinstance(module, nn.Linear):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        n = (module.num_features,)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n, "num_batches_tracked": ()}
    if isinstance(module, nn.GroupNorm):
        return {"weight": (module.num_channels,), "bias": (module.num_channels,)}
    if isinstance(module, nn.LayerNorm):
        return {"weight": tuple(module.normalized_shape), "bias": tuple(module.normalized_shape)}
    return {}


def _resize(module: nn.Module, prefix: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    for name, shape in _expected_shapes(module).items():
        store = module._parameters if name in module._parameters else module._buffers
        current = store.get(name)
        if current is None or tuple(current.shape) == shape:
            continue
        saved = state_dict.get(prefix + name)
        # the saved tensor's layout when it has the declared shape (a channels-last student loads bit-exactly)
        empty = torch.empty_like(saved) if saved is not None and tuple(saved.shape) == shape else \
            current.new_empty(shape)
        store[name] = nn.Parameter(empty, requires_grad=current.requires_grad) \
            if isinstance(current, nn.Parameter) else empty


def _follow_pruned(module: nn.Module, prefix: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    known = _expected_shapes(module)
    for store in (module._parameters, module._buffers):
        for name, current in store.items():
            saved = state_dict.get(prefix + name)
            if name in known or current is None or saved is None or saved.shape == current.shape:
                continue
            if saved.dim() == current.dim() and all(s <= c for s, c in zip(saved.shape, current.shape)):
                empty = current.new_empty(saved.shape)
                store[name] = nn.Parameter(empty, requires_grad=current.requires_grad) \
                    if isinstance(current, nn.Parameter) else empty


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """The file's tensors are exactly ``model``'s (same names) with exactly its shapes.

    Raises:
        FileFormatError: naming the first unknown or missing key or the first tensor of another shape.
    """
    own = model.state_dict()
    unknown = [k for k in state_dict if k not in own]
    if unknown:
        raise FileFormatError(f"{where}: {unknown[0]!r} is not a parameter or buffer of architecture "
                              f"{_arch(model)!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1
                                                                else ""))
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise FileFormatError(f"{where}: it lacks {missing[0]!r} of architecture {_arch(model)!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise FileFormatError(f"{where}: {key!r} has shape {_shape(tensor.shape)} but its layer, as the file "
                                  f"declares it, needs {_shape(own[key].shape)}")


def check_output(model: nn.Module, num_classes: int, image_size: int, where: str) -> None:
    """One forward pass of a zero image: the declared layers fit together and give ``num_classes`` outputs.

    Raises:
        FileFormatError: naming what does not fit.
    """
    in_chans = in_channels(model)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, ValueError, TypeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileFormatError(f"{where}: its layers do not fit together ({text[:200]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = _shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FileFormatError(f"{where}: it gives outputs of shape {shape} for one image, but declares "
                              f"num_classes {num_classes}")


def _arch(model: nn.Module) -> str:
    """The architecture name of ``model`` (its ``arch_spec``'s), else its class name."""
    return (getattr(model, "arch_spec", None) or {}).get("name") or type(model).__name__


def in_channels(model: nn.Module) -> int:
    """Image channels ``model`` takes: its ``in_chans`` argument, else the first conv layer's input channels, else 3."""
    kwargs = (getattr(model, "arch_spec", None) or {}).get("kwargs", {})
    if "in_chans" in kwargs:
        return int(kwargs["in_chans"])
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return int(conv.in_channels) if conv is not None else 3


def _shape(shape: Any) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def input_size(meta: Mapping[str, Any], default: int = 32) -> int:
    """The image size a model file's meta records (its data's), else ``default``."""
    size = meta.get("image_size", default)
    return size if isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= 4096 else default

