"""Callbacks: subclass :class:`Callback` and override what you need; set ``trainer.should_stop = True`` to stop."""
from __future__ import annotations

import math
import time
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


class EstimatePrinter(Callback):
    """Prints one line, early in a long stage, estimating how long its training steps take: the mean seconds per
    step over the first ``measure`` steps after ``skip`` warm-up steps (compilation, caches, allocator), times the
    steps left (``steps_per_epoch`` × the epochs left). Evaluation after each epoch is not included. Quiet when the
    estimate is under ``min_seconds``."""

    main_only = True

    def __init__(self, steps_per_epoch: int, *, skip: int = 2, measure: int = 8, min_seconds: float = 120.0) -> None:
        self.steps_per_epoch, self.skip, self.measure, self.min_seconds = steps_per_epoch, skip, measure, min_seconds
        self._seen, self._start, self.done = 0, 0.0, False
        self.estimate: float | None = None  # seconds, once measured

    def on_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if self.done:
            return
        self._seen += 1
        if self._seen == self.skip:
            self._start = time.perf_counter()
            return
        if self._seen < self.skip + self.measure:
            return
        self.done = True
        per_step = (time.perf_counter() - self._start) / self.measure
        left = (trainer.epochs - trainer.epoch) * self.steps_per_epoch + max(self.steps_per_epoch - step - 1, 0)
        self.estimate = per_step * left
        if self.estimate >= self.min_seconds:
            print(f"  estimate: about {_duration(self.estimate)} of training left ({left} steps at {per_step:.2f} "
                  f"s/step, measured over {self.measure} steps; evaluation not included)", flush=True)


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
