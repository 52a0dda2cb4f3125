"""A student that leaves the project: ``student.safetensors`` + ``student.json``, rebuilt with plain torch and timm
(or the user's own class), without this package.

``student.safetensors`` holds the state dict, every tensor made contiguous (a channels-last student's conv weights
are not, and safetensors refuses those). ``student.json`` holds what rebuilds it::

    {"format": "prune-then-distill portable 1",
     "architecture": {"source": "timm" | "import" | "registry" | "instance", "name": "resnet18", "num_classes": 10,
                      "kwargs": {...}, "class": "timm.models.resnet:ResNet"},
     "widths": {"layer1.0.conv1": {"in_channels": 32, "out_channels": 16, ...}, ...},
     "mean": [...], "std": [...], "classes": [...], "image_size": 32,
     "input": "(B, C, H, W) float32 images scaled to [0, 1], then (x - mean) / std per channel"}

Rebuilding (the README's lines): build the architecture unpruned (``timm.create_model(name, num_classes=...,
**kwargs)`` for ``source: timm``; ``module:qualname`` imported and called for ``import``; the user's own instance for
``instance``; this package's ``models.create_model`` for ``registry``), set every recorded width attribute, then put
each tensor of the safetensors file in place of the parameter or buffer of that name (:func:`rebuild` does exactly
that, in a dozen lines of plain torch, so a test can check that the README's recipe gives the same outputs).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import architecture_of, atomic_write, atomic_write_text, check_finite, module_widths
from models.registry import TIMM_PREFIX

FORMAT = "prune-then-distill portable 1"
INPUT = "(B, C, H, W) float32 images scaled to [0, 1], then (x - mean) / std per channel"


def describe(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``student.json`` for ``model`` (see the module docstring); ``meta`` gives ``mean``, ``std``,
    ``classes`` and ``image_size`` (a data set's :meth:`~kd.data.DataSplits.meta`)."""
    spec = architecture_of(model)
    name = spec["name"]
    if name is None:
        source = "instance"
    elif name.startswith(TIMM_PREFIX):
        source, name = "timm", name[len(TIMM_PREFIX):]
    else:
        source = "import" if ":" in name else "registry"
    meta = meta or {}
    return {
        "format": FORMAT,
        "architecture": {"source": source, "name": name, "num_classes": spec["num_classes"],
                         "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["kwargs"].items()},
                         "class": f"{type(model).__module__}:{type(model).__qualname__}"},
        "widths": module_widths(model),
        **{k: meta[k] for k in ("mean", "std", "classes", "image_size") if k in meta},
        "input": INPUT,
    }


def save_portable(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Writes ``path`` with ``.safetensors`` and ``.json`` suffixes (``student`` → ``student.safetensors``,
    ``student.json``), atomically; returns both paths.

    Raises:
        NonFiniteError: a weight is NaN or infinite (nothing is written).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    check_finite(tensors, f"the model for {str(path)!r}")
    weights, spec = path.with_suffix(".safetensors"), path.with_suffix(".json")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    atomic_write_text(json.dumps(describe(model, meta), indent=1) + "\n", spec)
    return weights, spec


def rebuild(model: nn.Module, widths: dict[str, dict[str, Any]], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The README's recipe in plain torch: ``model`` (the unpruned architecture) given the recorded ``widths`` and
    every tensor of ``tensors`` in place of its parameter or buffer; returned in eval mode."""
    for name, attrs in widths.items():
        for attr, value in attrs.items():
            setattr(model.get_submodule(name), attr, tuple(value) if isinstance(value, list) else value)
    for key, tensor in tensors.items():
        owner, _, attr = key.rpartition(".")
        module = model.get_submodule(owner)
        setattr(module, attr, nn.Parameter(tensor) if attr in module._parameters else tensor)
    return model.eval()
