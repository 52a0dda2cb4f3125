"""Pickle-free model files: architecture name + arguments + per-layer widths + state dict.

A file is a plain dict of tensors, numbers, strings, lists and dicts::

    {"format": 1, "arch": "wide_cnn", "num_classes": 10, "arch_kwargs": {...},
     "widths": {"features.conv1.conv": {"in_channels": 3, "out_channels": 40, "groups": 1}, ...},
     "state_dict": {...}, "meta": {...}}

so ``torch.load(path, weights_only=True)`` reads it and no code is unpickled. :func:`load_model` rebuilds the
architecture with :func:`models.create_model`, resizes every layer to the recorded widths (a pruned student has fewer
channels than its architecture's defaults), then loads the weights.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.registry import create_model

FORMAT = 1
# Integer (or shape) attributes that pruning changes; recorded for every module that has one of them.
_WIDTH_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features",
    "num_features", "num_channels", "num_groups", "normalized_shape",
)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Calls ``write(tmp)`` on a temporary file in ``path``'s folder, then renames it to ``path``: a crash never leaves
    half a file. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared like any written file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def module_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per-module width attributes, e.g. ``{"features.conv1.conv": {"in_channels": 3, "out_channels": 40, ...}}``.

    Only attributes stored on the module itself count: a read-only property (timm's ``ConvNormAct.in_channels``
    reads its conv's) follows from the layers below it and cannot be set back.
    """
    widths: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs = {a: _plain(v) for a in _WIDTH_ATTRS if isinstance(v := vars(module).get(a), (int, tuple))}
        if attrs:
            widths[name] = attrs
    return widths


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else int(value)


def apply_widths(model: nn.Module, widths: dict[str, dict[str, Any]], state_dict: dict[str, torch.Tensor]) -> None:
    """Resizes ``model`` in place so that ``model.load_state_dict(state_dict)`` fits.

    Width attributes come from ``widths``; each parameter or buffer whose shape differs from ``state_dict`` is
    replaced by an empty tensor of the recorded shape (the weights themselves are loaded afterwards).
    """
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(f"the file records widths for layer {name!r}, which the rebuilt architecture lacks")
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for pname, param in list(module.named_parameters(recurse=False)):
            saved = state_dict.get(prefix + pname)
            if saved is not None and saved.shape != param.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(saved), requires_grad=param.requires_grad))
        for bname, buf in list(module.named_buffers(recurse=False)):
            saved = state_dict.get(prefix + bname)
            if saved is not None and buf is not None and saved.shape != buf.shape:
                module.register_buffer(bname, torch.empty_like(saved))


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Writes ``model`` (built by :func:`models.create_model`, pruned or not) to ``path`` without pickled code.

    Raises:
        ValueError: when the model has no ``arch_spec`` (it was not built by ``create_model``).
    """
    spec = getattr(model, "arch_spec", None)
    if spec is None:
        raise ValueError("save_model needs a model built by models.create_model (it records the architecture name)")
    payload = {
        "format": FORMAT,
        "arch": spec["name"],
        "num_classes": spec["num_classes"],
        "arch_kwargs": _plain_kwargs(spec["kwargs"]),
        "widths": module_widths(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    atomic_save(payload, path)


def _plain_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a model file with ``weights_only=True`` and checks its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "arch" not in payload:
        raise ValueError(f"{str(path)!r} is not a prune-then-distill model file (format {FORMAT}); "
                         "write one with models.save_model or pruning.save")
    return payload


def load_model(path: str | os.PathLike) -> nn.Module:
    """Rebuilds a model written by :func:`save_model`, on the CPU, in eval mode; ``model.meta`` holds its meta."""
    payload = read_model_file(path)
    model = create_model(payload["arch"], payload["num_classes"], **payload["arch_kwargs"])
    apply_widths(model, payload["widths"], payload["state_dict"])
    model.load_state_dict(payload["state_dict"])
    model.meta = payload.get("meta", {})
    return model.eval()
