"""Hyperparameter picks on a validation split carved out of the training data (never the test split).

:func:`validation_split` holds out a class-balanced part of the training tensors; :func:`sweep_dropout` trains one
copy of a model per dropout rate on the rest and keeps the rate with the best validation accuracy. It lives in
``kd`` because picking a training hyperparameter is training, not pruning; its functions take only training tensors,
so the test split cannot leak into the pick.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kd.data import BatchIterator, ImageTensors, balanced_indices
from kd.trainer import evaluate, fit_model


def validation_split(data: ImageTensors, size: int | float, seed: int = 0
                     ) -> tuple[ImageTensors, ImageTensors, torch.Tensor]:
    """(train without validation, validation, validation indices into ``data``): a class-balanced hold-out.

    ``size`` is a number of images (int ≥ 1) or a fraction of ``data`` (float in (0, 1)).
    """
    n = len(data)
    count = round(n * size) if isinstance(size, float) else int(size)
    if isinstance(size, float) and not 0.0 < size < 1.0:
        raise ValueError(f"a validation fraction must be in (0, 1), got {size}")
    if not 1 <= count < n:
        raise ValueError(f"validation size must leave training images: got {count} of {n}")
    val_idx = balanced_indices(data.labels, count, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    train_idx = torch.nonzero(keep).flatten()
    return (ImageTensors(data.images[train_idx], data.labels[train_idx], data.classes),
            ImageTensors(data.images[val_idx], data.labels[val_idx], data.classes), val_idx)


def set_dropout(model: nn.Module, rate: float) -> nn.Module:
    """A copy of ``model`` whose every ``nn.Dropout`` has probability ``rate`` (and ``arch_spec`` says so, so
    ``models.save_model`` records it)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    new = copy.deepcopy(model)
    drops = [m for m in new.modules() if isinstance(m, nn.Dropout)]
    if not drops:
        raise ValueError(f"{type(model).__name__} has no nn.Dropout layer to set")
    for m in drops:
        m.p = float(rate)
    spec = getattr(new, "arch_spec", None)
    if spec is not None and (spec["name"] == "wide_cnn" or "dropout" in spec["kwargs"]):
        spec["kwargs"]["dropout"] = float(rate)
    return new


@dataclass
class DropoutSweep:
    """best_rate: the pick; accuracies: {rate: validation accuracy %}; model: the trained model of the best rate;
    val_indices: which training images were held out."""

    best_rate: float
    accuracies: dict[float, float]
    model: nn.Module
    val_indices: torch.Tensor = field(repr=False)


def sweep_dropout(model: nn.Module, rates: Sequence[float], train: ImageTensors, *, mean: Sequence[float],
                  std: Sequence[float], val_size: int | float = 0.1, epochs: int = 2, lr: float = 0.01,
                  batch_size: int = 128, teacher: nn.Module | None = None, loss: nn.Module | None = None,
                  device: str | torch.device = "cpu", seed: int = 0) -> DropoutSweep:
    """Trains a copy of ``model`` per dropout rate on ``train`` minus a validation split and picks the best rate.

    Every copy starts from the same weights, sees the same batches (same seed) and is trained for ``epochs`` with
    SGD + cosine at ``lr``, distilling from ``teacher`` with ``loss`` when given (default: the Trainer's), else cross-entropy.
    Only training tensors are passed in: the pick never sees the test split.
    """
    if not rates:
        raise ValueError("sweep_dropout needs at least one dropout rate")
    fit_part, val_part, val_idx = validation_split(train, val_size, seed)
    val_batches = BatchIterator(val_part, 2 * batch_size, train=False, mean=mean, std=std, device=device)
    accuracies, models = {}, {}
    for rate in rates:
        torch.manual_seed(seed)
        candidate = set_dropout(model, rate)
        batches = BatchIterator(fit_part, batch_size, train=True, mean=mean, std=std, device=device, seed=seed)
        fit_model(candidate, batches, epochs=epochs, lr=lr, teacher=teacher, loss=loss,
                  device=device, progress=False)
        accuracies[float(rate)] = evaluate(candidate, val_batches, device).accuracy
        models[float(rate)] = candidate
    best = max(accuracies, key=lambda r: (accuracies[r], -r))  # ties: the smaller rate
    return DropoutSweep(best, accuracies, models[best], val_idx)
