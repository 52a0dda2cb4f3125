"""Per-epoch metrics on disk: :class:`MetricsLogger` (``metrics.csv`` and ``curves.png``) and
:class:`TensorBoardLogger`.

Both log the scalars of :func:`epoch_scalars`: every number field of :class:`kd.EpochRecord` in its field order
(``epoch, train_loss, train_accuracy, val_loss, val_accuracy, images_per_s, seconds, lr``), then one ``loss_<name>``
per part of the training loss in ``record.train_parts`` (e.g. ``loss_kd``, ``loss_ce``), a dict the record may carry.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kd.callbacks import Callback
from models.checkpoint import atomic_write

if TYPE_CHECKING:
    from kd.trainer import EpochRecord, Trainer

Row = dict[str, Any]  # column → number (None where a column did not exist yet)


def epoch_scalars(record: "EpochRecord") -> dict[str, float]:
    """``{"epoch": 3, "train_loss": ..., ..., "lr": ..., "loss_kd": ..., "loss_ce": ...}`` for one epoch."""
    fields = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(vars(record))
    row = {"epoch": record.epoch}
    row.update({k: v for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    parts = getattr(record, "train_parts", None) or {}
    row.update({f"loss_{name}": float(value) for name, value in parts.items()})
    return row


class MetricsLogger(Callback):
    """Appends one row per epoch to ``out_dir/metrics.csv`` and redraws ``out_dir/curves.png``.

    The CSV has one header line and one row per epoch, flushed as the epoch ends; numbers are written exactly
    (``repr``), NaN as ``nan``. Resume-safe: when an epoch arrives and the file already holds rows for that epoch or
    later ones (an interrupted run resumed, or a run started again in the same folder), those rows are dropped and
    the file is rewritten atomically before the new row goes in, so each epoch appears once; earlier epochs missing
    from the file but in the resumed trainer's history are filled in from it. A loss part that appears later adds a
    column (the file is rewritten with the earlier rows' cells empty).

    ``curves.png`` (matplotlib, Agg) has three panels against epoch: losses (train, validation and each part),
    train/validation accuracy, learning rate.
    """

    main_only = True  # under torchrun only rank 0 writes

    def __init__(self, out_dir: str | os.PathLike, *, plot: bool = True) -> None:
        self.dir = Path(out_dir)
        self.csv_path = self.dir / "metrics.csv"
        self.png_path = self.dir / "curves.png"
        self.plot = plot
        self._rows: list[Row] | None = None  # what the CSV holds; read from disk on the first epoch
        self._columns: list[str] = []

    def on_epoch_end(self, trainer: "Trainer", record: "EpochRecord") -> None:
        self.log(record, history=getattr(getattr(trainer, "result", None), "history", ()))

    def log(self, record: "EpochRecord", history: Sequence["EpochRecord"] = ()) -> None:
        """Writes one epoch (what :meth:`on_epoch_end` does, callable without a trainer).

        ``history``: the trainer's records so far (restored with a resumed checkpoint); on the first call, earlier
        epochs it has and the CSV lacks (a run stopped between its checkpoint and this row) are filled in from it.
        """
        first = self._rows is None
        if first:  # whatever an earlier run left is parsed once and written back clean (a crash may cut a line)
            self._rows, self._columns = read_metrics(self.csv_path)
            self._fill_in(history, before=record.epoch)
        row = epoch_scalars(record)
        kept = [r for r in self._rows if r["epoch"] < row["epoch"]]
        new_columns = [c for c in row if c not in self._columns]
        rewrite = first or len(kept) < len(self._rows) or bool(new_columns)
        self._rows, self._columns = [*kept, row], self._columns + new_columns
        if rewrite:
            atomic_write(self.csv_path, lambda tmp: self._write(tmp, self._rows, "w"))
        else:
            self._write(self.csv_path, [row], "a")
        if self.plot:
            self.plot_curves()

    def _fill_in(self, history: Sequence["EpochRecord"], before: int) -> None:
        have = {r["epoch"] for r in self._rows}
        missing = [epoch_scalars(h) for h in history if h.epoch < before and h.epoch not in have]
        for row in missing:
            self._columns += [c for c in row if c not in self._columns]
        self._rows = sorted([*self._rows, *missing], key=lambda r: r["epoch"])

    def _write(self, path: str | Path, rows: list[Row], mode: str) -> None:
        with open(path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)
            f.flush()

    def plot_curves(self) -> Path:
        """Draws ``curves.png`` from the rows logged so far (atomically replaced)."""
        from matplotlib.figure import Figure  # the object API draws with Agg and leaves pyplot's global state alone
        from matplotlib.ticker import MaxNLocator

        rows = self._rows or []
        epochs = [r["epoch"] for r in rows]
        fig = Figure(figsize=(13, 3.8))
        panels = fig.subplots(1, 3)
        losses = ["train_loss", "val_loss", *[c for c in self._columns if c.startswith("loss_")]]
        for ax, columns, title in ((panels[0], losses, "loss"),
                                   (panels[1], ["train_accuracy", "val_accuracy"], "accuracy %"),
                                   (panels[2], ["lr"], "learning rate")):
            for column in columns:
                values = [_number(r.get(column)) for r in rows]
                if any(not math.isnan(v) for v in values):
                    ax.plot(epochs, values, marker="o", markersize=3, label=column)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        return atomic_write(self.png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


class TensorBoardLogger(Callback):
    """Writes :func:`epoch_scalars` to TensorBoard (``add_scalar(column, value, epoch)``) and flushes each epoch.

    Raises ImportError when the ``tensorboard`` package is not installed.
    """

    main_only = True

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoardLogger needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, trainer: "Trainer", record: "EpochRecord") -> None:
        scalars = epoch_scalars(record)
        epoch = int(scalars.pop("epoch"))
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_metrics(path: Path) -> tuple[list[Row], list[str]]:
    """Rows (``{"epoch": int, column: float or None}``) and header of a metrics.csv (none when absent); a row whose
    epoch cannot be read is dropped (a line cut short by a crash)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for raw in reader:
            try:
                row: Row = {"epoch": int(raw["epoch"])}
            except (KeyError, TypeError, ValueError):
                continue
            row.update({k: _cell(v) for k, v in raw.items() if k not in ("epoch", None)})
            rows.append(row)
    return rows, columns


def _cell(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
