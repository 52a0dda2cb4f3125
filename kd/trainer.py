"""``kd.Trainer``: supervised training or distillation of a student, with checkpoints, resume and progress bars.

The trainer knows nothing of the architecture: it takes a student, an optional frozen teacher, a loss from
:mod:`kd.losses` (called as ``loss(student_logits, teacher_logits | None, targets, state)``, returning named parts), an
optimizer and a per-step scheduler. Batches are ``(x, y)`` or, from a teacher cache, ``(x, y, teacher_logits)``: then
the teacher is not run at all.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from timm.utils.model_ema import ModelEmaV3

from kd import distributed
from kd.batchnorm import set_bn_momentum
from kd.callbacks import Callback
from kd.lookahead import Lookahead
from kd.losses import CrossEntropy, DistillLoss, TrainState, create_loss, hard_labels, total_loss
from kd.optim import MUON_LR_SCALE, MUON_MOMENTUM, make_scheduler, optimizer_for
from kd.precision import Hardware, autocast, resolve_precision
from kd.progress import progress_bar
from kd.stem_bias import StemBiasHold
from kd.tta import TTA_MODES, tta_logits
from models.checkpoint import atomic_save, check_finite
from models.common import Batches, batch_count, eval_mode
from models.errors import NonFiniteError

CHECKPOINT_FORMAT = 1
DEFAULT_LOSS = "kd"  # the loss a Trainer with a teacher uses when none is given


class DivergedError(NonFiniteError):
    """The training or validation loss stopped being finite, or the training accuracy collapsed to chance
    (:func:`collapse_reason`): the run diverged. Raised before that epoch's checkpoint, metrics row or model is
    written, so nothing non-finite is saved; the message names the epoch."""


COLLAPSE_MARGIN = 2.0  # points above chance that still count as chance
COLLAPSE_PEAK = 20.0  # points above chance the run must have reached before, for a fall to chance to be a collapse


def collapse_reason(train_accuracies: Sequence[float], num_classes: int, first_epoch: int = 1) -> str | None:
    """Why the run has collapsed, or None: the training accuracy (percent) of the last two epochs is within
    ``COLLAPSE_MARGIN`` points of chance (100 / K) after an earlier epoch was ``COLLAPSE_PEAK`` points above it.

    A network that learned and then fell back to guessing for two whole epochs has lost its weights (an exploding
    BatchNorm variance, a loss of 10⁶ that settles): it does not come back, and every further epoch is wasted. The
    losses may still be finite, so :meth:`Trainer.fit`'s finiteness check does not see it.

    Args:
        train_accuracies: one per epoch so far, in order, the first being epoch ``first_epoch``.
    """
    chance = 100.0 / max(num_classes, 1)
    if len(train_accuracies) < 3 or not all(a <= chance + COLLAPSE_MARGIN for a in train_accuracies[-2:]):
        return None
    earlier = list(train_accuracies[:-2])
    peak = max(earlier)
    if peak < chance + COLLAPSE_PEAK:
        return None
    last = first_epoch + len(train_accuracies) - 1
    return (f"the training accuracy fell from {peak:.2f} % (epoch {first_epoch + earlier.index(peak)}) to chance "
            f"({train_accuracies[-2]:.2f} and {train_accuracies[-1]:.2f} % in epochs {last - 1} and {last}; chance "
            f"is {chance:.2f} %)")


@dataclass
class EvalResult:
    """loss: mean cross-entropy; accuracy: top-1 in percent; samples: how many images were scored."""

    loss: float
    accuracy: float
    samples: int


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    images_per_s: float
    seconds: float
    lr: float
    train_parts: dict[str, float] = field(default_factory=dict)  # mean of each named loss part over the epoch


@dataclass
class FitResult:
    """Per-epoch history, best and last validation accuracy (percent), and where the checkpoints went."""

    history: list[EpochRecord] = field(default_factory=list)
    best_accuracy: float = 0.0
    best_epoch: int = 0
    last_accuracy: float = 0.0
    checkpoint_dir: str | None = None
    tta_accuracy: float | None = None  # the final model's test-time-augmented accuracy, when the Trainer has a tta

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Trains ``student`` on batches of ``(x (B, C, H, W), y (B,))``, distilling from ``teacher`` when given.

    The teacher is frozen: moved to the device, kept in ``eval()`` for the whole fit (also after the student is put in
    train mode) and run under ``torch.inference_mode()``, so it never gets gradients; it is never given to the
    optimizer, and its parameters are ``requires_grad=False`` during ``fit`` (their flags are given back afterwards,
    so the caller's teacher can still be pruned or fine-tuned). It is left in ``eval()``.

    Args:
        student: the model being trained.
        teacher: optional frozen teacher; ``None`` is supervised training (or distillation from cached logits).
        loss: a :class:`kd.losses.DistillLoss` (or any module returning a scalar or a dict of scalar parts);
            defaults to ``create_loss(DEFAULT_LOSS)`` with a teacher and cross-entropy without one.
        optimizer: defaults to SGD (lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4) over the student's (and the
            feature loss's) parameters.
        scheduler: stepped once per batch; defaults to cosine annealing over ``epochs × len(train)`` steps.
        epochs: number of epochs of ``fit``.
        device: where training runs; models and batches are moved there.
        out_dir: when given, ``last.pt`` (every epoch) and ``best.pt`` (best validation accuracy) go there, written
            atomically; ``fit(resume=True)`` continues from ``last.pt``.
        feature_loss: optional extra term (e.g. :class:`kd.HintLoss`) called with no arguments after each forward.
        callbacks: objects with ``on_step_end`` / ``on_epoch_end`` (see :class:`kd.Callback`).
        precision: ``auto`` (bf16 autocast where the hardware has native bf16, see :mod:`kd.precision`), ``fp32``
            or ``bf16``. Losses and metrics stay fp32.
        channels_last: run student, teacher and batches channels-last; None picks by hardware and precision.
        compile: train through ``torch.compile(student)`` (checkpoints still hold the plain module's weights).
        progress: show tqdm bars (on a terminal only, :mod:`kd.progress`; on rank 0 only under torchrun).
        grad_clip: clip the gradient norm to this value when given.
        sync_bn: under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only) instead of
            each rank's slice; the student gets its BatchNorm layers back after ``fit``.
        ema: keep an exponential moving average of the student's weights and buffers (timm's ``ModelEmaV3``),
            updated after every step ``t`` (1-based) as ``ema ← d_t·ema + (1 − d_t)·student`` with
            ``d_t = min(ema, 1 − t^(−3/4))`` (``d_1 = 0``: a copy); the average is what is evaluated, what
            ``best.pt`` holds, and what the student's weights become when ``fit`` ends. None: no average.
        tta: test-time augmentation of the final evaluation (:data:`kd.tta.TTA_MODES`): after the last epoch the
            model is also scored with it, into ``FitResult.tta_accuracy``; per-epoch accuracy stays single-view.
        lookahead: airbench94's lookahead (:class:`kd.lookahead.Lookahead`): every 5 steps the weights and BatchNorm
            statistics are pulled to a slow average with decay ``0.95⁵ · (t / T)³``, and once more after the last
            step; the model itself is the average (``ema`` may be kept as well).
        bn_momentum: sets every BatchNorm layer's running-statistics momentum (PyTorch's convention, airbench: 0.4;
            :mod:`kd.batchnorm`); None leaves the layers' own.
        stem_bias_epochs: the first conv's bias (the whitening stem's) trains in the first ``stem_bias_epochs``
            epochs only and is then held (:class:`kd.stem_bias.StemBiasHold`; airbench: 3); 0 trains it throughout.
            A model whose first conv has no bias is left alone.

    Under ``torchrun`` (a process group with more than one rank, see :mod:`kd.distributed`), ``fit`` trains the
    student through DistributedDataParallel, with every rank on its slice of each global batch
    (``train.shard(rank, world)``: ``batch_size`` stays the global batch); ``self.student`` stays the plain module.
    Epoch loss, accuracy and loss parts are summed over the ranks, validation runs on each rank's share of ``val``
    and is summed too, so every rank sees the numbers of the whole data. Only rank 0 writes checkpoints and runs
    callbacks whose ``main_only`` is true (printing, metrics files); after ``fit`` every rank holds rank 0's weights
    and buffers.

    Raises:
        DivergedError: (a ``models.errors.NonFiniteError``) from ``fit`` when the training or validation loss becomes
            NaN or infinite; no checkpoint of that epoch is written, so ``best.pt`` and ``last.pt`` only ever hold
            finite weights.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, loss: nn.Module | None = None, *,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, epochs: int = 10,
                 device: str | torch.device = "cpu", out_dir: str | Path | None = None,
                 feature_loss: nn.Module | None = None, callbacks: Sequence[Callback] = (), precision: str = "auto",
                 channels_last: bool | None = None, compile: bool = False, progress: bool = True,
                 grad_clip: float | None = None, sync_bn: bool = False, ema: float | None = None,
                 tta: str = "none", lookahead: bool = False, bn_momentum: float | None = None,
                 stem_bias_epochs: int = 0) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {ema}")
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.device = torch.device(device)
        self.hardware = Hardware.detect(precision, self.device, channels_last)
        self.precision, self.channels_last = self.hardware.precision, self.hardware.channels_last
        self.student = _to(student, self.device, self.channels_last)
        self.teacher = _to(teacher, self.device, self.channels_last).eval() if teacher is not None else None
        self.loss = loss if loss is not None else (create_loss(DEFAULT_LOSS) if teacher is not None else CrossEntropy())
        self.feature_loss = feature_loss.to(self.device) if feature_loss is not None else None
        if self.feature_loss is not None and self.teacher is None:
            raise ValueError("a feature loss needs a teacher")
        if sync_bn and self.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA (SyncBatchNorm trains on GPUs only)")
        self.epochs, self.out_dir = epochs, Path(out_dir) if out_dir else None
        self.progress = progress and distributed.is_main()
        self.grad_clip, self.sync_bn = grad_clip, sync_bn
        self.callbacks = [cb for cb in callbacks if distributed.is_main() or not getattr(cb, "main_only", False)]
        self.optimizer = optimizer or torch.optim.SGD(self._trainable(), lr=0.05, momentum=0.9, nesterov=True,
                                                      weight_decay=5e-4)
        self.scheduler = scheduler
        self._forward = torch.compile(self.student) if compile else self.student
        self.ema = ModelEmaV3(self.student, decay=ema, use_warmup=True, warmup_power=0.75) if ema else None
        self.tta = tta
        if bn_momentum is not None:
            set_bn_momentum(self.student, bn_momentum)
        self.use_lookahead, self.lookahead = lookahead, None  # built in fit, when the steps are known
        self.stem_bias = StemBiasHold(self.student, stem_bias_epochs)
        self._step_count = 0  # optimizer steps so far, the EMA's t
        self.should_stop = False  # a callback may set it to end fit after the current epoch
        self.epoch = 0
        self._num_classes = 0  # the student's outputs K, known after its first training step (0: not yet)
        self.result = FitResult(checkpoint_dir=str(self.out_dir) if self.out_dir else None)

    def _trainable(self) -> list[nn.Parameter]:
        params = list(self.student.parameters())
        if self.feature_loss is not None:
            params += list(self.feature_loss.parameters())
        return params

    # ------------------------------------------------------------------------------------------------------- fit

    def fit(self, train: Batches, val: Batches | None = None, *, resume: bool | str | Path = False) -> FitResult:
        """Trains for ``epochs`` epochs, evaluating on ``val`` after each, and returns the history.

        Args:
            train: batches for one epoch per iteration (a :class:`kd.data.BatchIterator` or any re-iterable).
            val: batches to evaluate on after each epoch (accuracy is reported on it).
            resume: True continues from ``out_dir/last.pt``, a path from that file: model, optimizer, scheduler,
                history and random state are restored, so the run ends as an uninterrupted one would.
        """
        total_steps = self.epochs * (batch_count(train) or 1)
        if self.scheduler is None:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        if self.use_lookahead and self.lookahead is None:
            self.lookahead = Lookahead(self.student, total_steps)
        world = distributed.world_size()
        if world == 1:
            if resume:
                self._load_checkpoint(resume, train)
            return self._epochs(train, val)
        train, val = _shard(train, world), _shard(val, world) if val is not None else None
        cuda = [torch.cuda.current_device()] if self.device.type == "cuda" else []
        # Random draws during training (dropout) differ between ranks, whose slices are different images: each rank
        # seeds its own stream (deterministic from the common state; kept per rank in last.pt). Afterwards every
        # rank is back on the common stream, so what follows (pruning, new models) draws alike on all of them.
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(torch.randint(2**62, (1,))) + distributed.rank())
            if resume:
                self._load_checkpoint(resume, train)
            plain_forward = self._forward
            self._forward = self._data_parallel()
            try:
                self._epochs(train, val)
            finally:
                self._forward = plain_forward
                if self.sync_bn:
                    distributed.from_sync_batchnorm(self.student)
        distributed.broadcast_module(self.student)  # BatchNorm running statistics: each rank updated its own
        return self.result

    def _epochs(self, train: Batches, val: Batches | None) -> FitResult:
        with _frozen(self.teacher):
            while self.epoch < self.epochs and not self.should_stop:
                self.epoch += 1
                self.stem_bias.begin_epoch(self.epoch)
                record = self._train_epoch(train)
                if val is not None:
                    ev = self.evaluate(val)
                    record.val_loss, record.val_accuracy = ev.loss, ev.accuracy
                self._check_losses_finite(record, validated=val is not None)
                self._check_not_collapsed(record)
                self._record(record, train)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, record)
            if self.ema is not None:
                self.student.load_state_dict(self.ema.module.state_dict())
            if self.tta != "none" and val is not None and self.epoch == self.epochs:
                self.result.tta_accuracy = self.evaluate(val, tta=self.tta).accuracy
        return self.result

    def _check_losses_finite(self, record: EpochRecord, validated: bool) -> None:
        """Every step's loss was finite, yet the epoch's mean or the validation loss may not be (weights that
        overflow only on unseen images): then no checkpoint or metrics row of the epoch is written."""
        peak = self._peak_lr(record)
        for name, value in (("training", record.train_loss), ("validation", record.val_loss)):
            if (name == "training" or validated) and not math.isfinite(value):
                raise DivergedError(f"the {name} loss became {value} at epoch {record.epoch} (peak lr {peak:.3g}): "
                                    "the run diverged")

    def _check_not_collapsed(self, record: EpochRecord) -> None:
        """:func:`collapse_reason` over the epochs of the history and ``record`` (the epoch just trained)."""
        history = [*self.result.history, record]
        reason = collapse_reason([r.train_accuracy for r in history], self._num_classes, history[0].epoch)
        if reason is not None:
            raise DivergedError(f"{reason} (peak lr {self._peak_lr(record):.3g}): the run collapsed")

    def _peak_lr(self, record: EpochRecord) -> float:
        """The schedule's base learning rate, not its value at the end of ``record``'s epoch."""
        return self.optimizer.param_groups[0].get("initial_lr", record.lr)

    def _data_parallel(self) -> nn.Module:
        """The student (and the feature loss, whose regressor trains too) in DistributedDataParallel, so backward
        averages their gradients over the ranks; the wrapper's forward is the student's."""
        if self.sync_bn:
            distributed.to_sync_batchnorm(self.student)
        model = _Trained(self.student, self.feature_loss)
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(ddp) if self._forward is not self.student else ddp

    def _train_epoch(self, train: Batches) -> EpochRecord:
        self.student.train()
        if self.teacher is not None:
            self.teacher.eval()  # student.train() does not reach it, but a user's callback might; re-assert
        parts_sum: dict[str, float] = {}
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        steps = batch_count(train)
        bar = progress_bar(train, total=steps, desc=f"epoch {self.epoch}/{self.epochs}", enabled=self.progress,
                           leave=False, unit="batch")
        for step, batch in enumerate(bar):
            x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
            cached = batch[2].to(self.device, non_blocking=True) if len(batch) > 2 else None
            state = TrainState(self.epoch, self.epochs, (self.epoch - 1) * (steps or 0) + step, steps)
            parts, logits = self._step(x, y, cached, state)
            b = y.shape[0]  # y is (B,) labels or, mixed, (B, K) soft targets
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value * b
            loss = sum(parts.values())
            loss_sum += loss * b
            correct += int((logits.argmax(1) == hard_labels(y)).sum())
            seen += b
            rate = seen / max(time.perf_counter() - start, 1e-9)
            shown = {k: f"{v / seen:.3f}" for k, v in parts_sum.items()} if len(parts_sum) > 1 else {}
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", **shown, acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{rate:.0f}")
            for cb in self.callbacks:
                cb.on_step_end(self, step, loss)
        seconds = time.perf_counter() - start
        if seen:
            self._num_classes = logits.shape[1]
        if getattr(train, "world_size", 1) > 1:  # each rank saw its slice: the epoch's numbers are the sums
            names = sorted(parts_sum)
            total = distributed.all_reduce_sum([loss_sum, correct, seen, *(parts_sum[k] for k in names)], self.device)
            loss_sum, correct, seen = total[0], int(total[1]), int(total[2])
            parts_sum = dict(zip(names, total[3:]))
        n = max(seen, 1)
        return EpochRecord(self.epoch, loss_sum / n, 100 * correct / n, float("nan"), float("nan"),
                           seen / max(seconds, 1e-9), seconds, self.optimizer.param_groups[0]["lr"],
                           {k: v / n for k, v in parts_sum.items()})

    def _step(self, x: torch.Tensor, y: torch.Tensor, cached: torch.Tensor | None,
              state: TrainState) -> tuple[dict[str, float], torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            logits = self._forward(x)  # (B, K)
            teacher_logits = cached
            if teacher_logits is None and self.teacher is not None:
                with torch.inference_mode():
                    teacher_logits = self.teacher(x)
                teacher_logits = teacher_logits.clone()  # an ordinary tensor, usable by autograd
            parts = _as_parts(self._call_loss(logits, teacher_logits, y, state))
            if self.feature_loss is not None:
                parts["hint"] = self.feature_loss()
        loss = total_loss(parts)
        if not torch.isfinite(loss):
            raise DivergedError(
                f"the training loss became {float(loss.detach())} at epoch {state.epoch}, step {state.step + 1} (lr "
                f"{self.optimizer.param_groups[0]['lr']:.3g}): the run diverged")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self._trainable(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self._step_count += 1
        if self.lookahead is not None:
            self.lookahead.update(self.student, self._step_count)
        self.stem_bias.after_step()
        if self.ema is not None:
            self.ema.update(self.student, step=self._step_count)
        return {k: float(v.detach()) for k, v in parts.items()}, logits.detach()

    def _call_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor,
                   state: TrainState) -> Any:
        if isinstance(self.loss, DistillLoss):
            return self.loss(logits, teacher_logits, y, state)
        return self.loss(logits, teacher_logits, y)  # a user's module with the three-argument signature

    # -------------------------------------------------------------------------------------------------- evaluate

    @torch.inference_mode()
    def evaluate(self, data: Batches, model: nn.Module | None = None, tta: str = "none") -> EvalResult:
        """Mean cross-entropy and top-1 accuracy (percent) of ``model`` (default: the weight average when the Trainer
        keeps one, else the student) on ``data``."""
        default = self.ema.module if self.ema is not None else self.student
        return evaluate(model or default, data, self.device, precision=self.precision,
                        channels_last=self.channels_last, progress=self.progress, tta=tta)

    # ----------------------------------------------------------------------------------------------- checkpoints

    def _record(self, record: EpochRecord, train: Batches) -> None:
        res = self.result
        res.history.append(record)
        res.last_accuracy = record.val_accuracy
        improved = record.val_accuracy > res.best_accuracy or res.best_epoch == 0
        if improved:
            res.best_accuracy, res.best_epoch = record.val_accuracy, record.epoch
        if self.out_dir is None:
            return
        check_finite(self.student.state_dict(), "the student")  # nothing non-finite becomes last.pt or best.pt
        if self.ema is not None:
            check_finite(self.ema.module.state_dict(), "the student's weight average")
        state = self._checkpoint_state(train)  # on every rank: it gathers each rank's random state
        if not distributed.is_main():
            return
        atomic_save(state, self.out_dir / "last.pt")
        if improved:  # the model that was scored: the weight average when there is one
            atomic_save({"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "student": state["ema"] or state["student"],
                         "accuracy": record.val_accuracy}, self.out_dir / "best.pt")

    def _checkpoint_state(self, train: Batches) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if distributed.world_size() > 1:
            rng["torch_per_rank"] = distributed.gather_objects(torch.get_rng_state())
        if hasattr(train, "state_dict"):
            rng["train_iterator"] = train.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema else None,
            "steps": self._step_count,
            "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None,
            "feature_loss": self.feature_loss.state_dict() if self.feature_loss is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "result": self.result.to_dict(),
            "rng": rng,
        }

    def _load_checkpoint(self, resume: bool | str | Path, train: Batches) -> None:
        path = Path(resume) if not isinstance(resume, bool) else (self.out_dir or Path(".")) / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {str(path)!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or "optimizer" not in state:
            raise ValueError(f"{str(path)!r} is not a kd.Trainer last.pt checkpoint")
        self.student.load_state_dict(state["student"])
        if self.feature_loss is not None and state.get("feature_loss") is not None:
            self.feature_loss.load_state_dict(state["feature_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{str(path)!r} was written without a weight average (ema); resume with the options "
                                 "it was started with")
            self.ema.module.load_state_dict(state["ema"])
        if self.lookahead is not None:
            if state.get("lookahead") is None:
                raise ValueError(f"{str(path)!r} was written without lookahead; resume with the options it was "
                                 "started with")
            self.lookahead.load_state_dict(state["lookahead"])
        self._step_count = int(state.get("steps", 0))
        self.epoch = int(state["epoch"])
        saved = state["result"]
        self.result = FitResult(history=[EpochRecord(**r) for r in saved["history"]],
                                best_accuracy=saved["best_accuracy"], best_epoch=saved["best_epoch"],
                                last_accuracy=saved["last_accuracy"], checkpoint_dir=saved["checkpoint_dir"],
                                tta_accuracy=saved.get("tta_accuracy"))
        per_rank = state["rng"].get("torch_per_rank")
        if per_rank is not None and len(per_rank) == distributed.world_size():
            torch.set_rng_state(per_rank[distributed.rank()])
        else:
            torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if "train_iterator" in state["rng"] and hasattr(train, "load_state_dict"):
            train.load_state_dict(state["rng"]["train_iterator"])

    def load_best(self) -> None:
        """Loads the student weights of the best epoch from ``out_dir/best.pt``."""
        distributed.barrier()  # rank 0 may still be writing it
        if self.out_dir is None or not (self.out_dir / "best.pt").is_file():
            raise FileNotFoundError("no best.pt: give the Trainer an out_dir and run fit first")
        self.student.load_state_dict(torch.load(self.out_dir / "best.pt", map_location="cpu",
                                                weights_only=True)["student"])


class _Trained(nn.Module):
    """The student and the feature loss as one module for DistributedDataParallel; its forward is the student's."""

    def __init__(self, student: nn.Module, feature_loss: nn.Module | None) -> None:
        super().__init__()
        self.student, self.feature_loss = student, feature_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def _shard(batches: Batches, world: int) -> Batches:
    """This rank's view of ``batches`` (one that has ``shard``, e.g. :class:`kd.data.BatchIterator`), unless it is
    sharded already; other iterables are used as they are (every rank then trains on whole batches: correct, as
    DDP averages equal gradients, but without a speed-up)."""
    if getattr(batches, "world_size", 1) > 1 or not hasattr(batches, "shard"):
        return batches
    return batches.shard(distributed.rank(), world)


def _to(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _as_parts(out: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A loss's output as named parts: a plain scalar becomes ``{"loss": value}``."""
    return dict(out) if isinstance(out, dict) else {"loss": out}


@contextlib.contextmanager
def _frozen(teacher: nn.Module | None) -> Iterator[None]:
    """``requires_grad=False`` on the teacher's parameters inside the block; their own flags come back after it."""
    if teacher is None:
        yield
        return
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(teacher.parameters(), flags):
            p.requires_grad_(flag)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Batches, device: str | torch.device = "cpu", *, precision: str = "fp32",
             channels_last: bool = False, progress: bool = False, tta: str = "none") -> EvalResult:
    """Mean cross-entropy and top-1 accuracy (percent) of ``model`` in eval mode on ``data``.

    ``precision`` (``fp32``, ``bf16`` or ``auto``) and ``channels_last`` apply to the forward pass only; the loss is
    computed in fp32. ``tta`` averages the logits over augmented views (:func:`kd.tta.tta_logits`). The model's
    train/eval mode is restored afterwards; the model is moved to ``device`` (as :class:`Trainer` moves it). When
    ``data`` is one rank's shard (``data.world_size > 1``) the sums are taken over all ranks, so every rank must call
    it.
    """
    device = torch.device(device)
    loss_sum, correct, seen = 0.0, 0, 0
    precision = resolve_precision(precision, device)
    model.to(device)
    with eval_mode(model):
        for batch in progress_bar(data, total=batch_count(data), desc="eval", enabled=progress, leave=False,
                                  unit="batch"):
            x, y = batch[0].to(device), batch[1].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                logits = tta_logits(model, x, tta)  # (B, K) fp32
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
    if getattr(data, "world_size", 1) > 1:  # this rank scored its share: sum over the ranks
        loss_sum, correct, seen = distributed.all_reduce_sum([loss_sum, correct, seen], device)
        seen = int(seen)
    return EvalResult(loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), seen)


def fit_model(student: nn.Module, train: Batches, val: Batches | None = None, *, epochs: int, lr: float,
              teacher: nn.Module | None = None, loss: nn.Module | None = None, optimizer: str = "sgd",
              schedule: str = "cosine", weight_decay: float = 5e-4, feature_loss: nn.Module | None = None,
              resume: bool | str | Path = False, momentum: float = 0.9, decay_norm_and_bias: bool = True,
              bn_bias_lr_scale: float = 1.0, bn_weight_lr_scale: float = 1.0, warmup: float = 0.23,
              muon_lr_scale: float = MUON_LR_SCALE, muon_momentum: float = MUON_MOMENTUM,
              **trainer_options: Any) -> FitResult:
    """The one training entry: optimizer by name over the student's (and the feature loss's) trainable parameters in
    :func:`kd.optim.param_groups` (:func:`kd.optim.optimizer_for`: ``decay_norm_and_bias``, ``bn_bias_lr_scale``,
    ``bn_weight_lr_scale``; with ``optimizer="muon"`` the filters at ``lr · muon_lr_scale`` and ``muon_momentum``:
    :class:`kd.optim.Muon`), a per-step schedule over ``epochs × len(train)`` steps (``warmup``: the ``triangular``
    schedule's warm-up fraction), and ``loss`` (default: the Trainer's — ``DEFAULT_LOSS`` with a teacher,
    cross-entropy without one). A teacher is only run when the loss or a feature loss needs it. ``trainer_options`` go
    to :class:`Trainer` (``device``, ``out_dir``, ``precision``, ``progress``, ``callbacks``, ``ema``, ``tta`` ...)."""
    modules = [student] + ([feature_loss] if feature_loss is not None else [])
    opt = optimizer_for(optimizer, modules, lr, weight_decay, momentum, muon_lr_scale=muon_lr_scale,
                        muon_momentum=muon_momentum, decay_norm_and_bias=decay_norm_and_bias,
                        bn_bias_lr_scale=bn_bias_lr_scale, bn_weight_lr_scale=bn_weight_lr_scale)
    sched = make_scheduler(schedule, opt, epochs * (batch_count(train) or 1), warmup)
    if loss is not None and not getattr(loss, "needs_teacher", True) and feature_loss is None:
        teacher = None  # e.g. alpha = 0: running the teacher would cost time for nothing
    trainer = Trainer(student, teacher, loss, optimizer=opt, scheduler=sched, epochs=epochs,
                      feature_loss=feature_loss, **trainer_options)
    return trainer.fit(train, val, resume=resume)


def fine_tuner(train: Batches, *, epochs: int, lr: float, teacher: nn.Module | None = None,
               loss: nn.Module | None = None, optimizer: str = "sgd", weight_decay: float = 5e-4,
               **trainer_options: Any) -> Callable[[nn.Module], None]:
    """The usual ``fine_tune`` of the prune → fine-tune loops (:func:`pruning.progressive.progressive_prune`, the
    method comparison): a callable that fits the model it is given in place with :func:`fit_model` on ``train`` for
    ``epochs`` (``optimizer`` + cosine schedule at ``lr``), with ``loss`` and ``teacher`` as :func:`fit_model` takes
    them (both None: cross-entropy; batches from a teacher cache: a loss and no teacher). ``trainer_options`` go to
    :class:`Trainer` (``device`` ...); there is no progress bar unless they ask for one."""
    trainer_options.setdefault("progress", False)

    def fine_tune(model: nn.Module) -> None:
        fit_model(model, train, epochs=epochs, lr=lr, teacher=teacher, loss=loss, optimizer=optimizer,
                  weight_decay=weight_decay, **trainer_options)

    return fine_tune
