"""Pickle-free files for pruned models: ``pruning.save`` / ``pruning.load``.

The file is :mod:`models.checkpoint`'s: the architecture name and arguments, every layer's widths (``in_channels``,
``out_channels``, ``groups``, ``num_features`` ...) and the state dict, read back with
``torch.load(path, weights_only=True)``. ``load`` rebuilds the architecture with :func:`models.create_model`,
resizes each layer to the recorded widths and loads the weights, so a pruned student comes back without unpickling
any code. A pruned model keeps ``arch_spec`` (``copy.deepcopy`` copies it), which is what ``save`` needs.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from models.checkpoint import load_model, save_model


def save(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Writes ``model`` (built by :func:`models.create_model`, pruned or not) to ``path``, atomically.

    ``meta`` must hold plain values (numbers, strings, lists, dicts, tensors). Raises ValueError for a model
    without ``arch_spec``.
    """
    save_model(model, path, meta=meta)


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuilds the model saved at ``path`` (eval mode, CPU); ``model.meta`` holds the saved meta."""
    return load_model(path)
