"""Callbacks: subclass :class:`Callback` and override what you need; set ``trainer.should_stop = True`` to stop."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kd.trainer import EpochRecord, Trainer


class Callback:
    """No-op hooks called by :class:`kd.Trainer`.

    ``main_only``: under torchrun the Trainer calls this callback on rank 0 only (set it on callbacks that print or
    write files); callbacks that steer training (early stopping) run on every rank, where they see the same
    all-reduced numbers and so decide alike.
    """

    main_only = False

    def on_step_end(self, trainer: "Trainer", step: int, loss: float) -> None:
        """After each optimizer step; ``loss`` is the batch loss."""

    def on_epoch_end(self, trainer: "Trainer", record: "EpochRecord") -> None:
        """After each epoch's evaluation and checkpoint."""


class EarlyStopping(Callback):
    """Stops when validation accuracy has not improved for ``patience`` epochs."""

    def __init__(self, patience: int = 5) -> None:
        self.patience = patience
        self._best, self._since = float("-inf"), 0

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        if record.val_accuracy > self._best:
            self._best, self._since = record.val_accuracy, 0
        else:
            self._since += 1
            trainer.should_stop = self._since >= self.patience


class EpochPrinter(Callback):
    """Prints one line per epoch as it ends: train loss and accuracy, the accuracy on the batches ``fit`` scored
    after the epoch (its ``val`` argument, labelled ``split``: ``test`` where a recipe scores the test split; left out
    when nothing was scored), images/s, seconds."""

    main_only = True

    def __init__(self, split: str = "val") -> None:
        self.split = split

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        scored = "" if math.isnan(record.val_accuracy) else f"{self.split} acc {record.val_accuracy:6.2f} %  "
        print(f"  epoch {record.epoch:3d}: train loss {record.train_loss:.4f}  train acc {record.train_accuracy:6.2f} %  "
              f"{scored}{record.images_per_s:7.1f} img/s  {record.seconds:7.1f} s", flush=True)
