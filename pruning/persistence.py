"""Pickle-free files for pruned models: ``pruning.save`` / ``pruning.load``.

The file is :mod:`models.checkpoint`'s: the architecture name and arguments, every layer's widths (``in_channels``,
``out_channels``, ``groups``, ``num_features`` ...) and the state dict, read back with
``torch.load(path, weights_only=True)``. ``load`` rebuilds the architecture with :func:`models.create_model` (or
takes a fresh instance of the user's class, ``load(path, model=MyNet())``), resizes each layer to the recorded widths
and loads the weights, so a pruned student comes back without unpickling any code. Any ``nn.Module`` can be saved:
how it is rebuilt is :func:`models.checkpoint.architecture_of` (a registry name, ``timm:NAME``, an importable
``module:qualname``, or nothing, when only an instance rebuilds it).
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from models.checkpoint import load_model, save_model


def save(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Writes ``model`` (any ``nn.Module``, pruned or not) to ``path``, atomically (:func:`models.save_model`).

    ``meta`` must hold plain values (numbers, strings, lists, dicts, tensors).
    """
    save_model(model, path, meta=meta)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuilds the model saved at ``path`` (eval mode, CPU), or gives ``model`` (a fresh instance of its class) the
    saved widths and weights; ``model.meta`` holds the saved meta."""
    return load_model(path, model=model)
