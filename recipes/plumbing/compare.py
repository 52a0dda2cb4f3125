"""Line the compression methods up at one FLOPs budget and one epoch budget on one data set (the harness behind
``recipes/compare_methods.py`` and ``benchmarks/cifar10_budget.py``; the methods themselves are in ``pruning``).

Every method starts from the same teacher and data, trains for the same number of epochs on the same training
batches (the training split minus a held-out validation split), and is scored on the test split. Decisions a method
makes on its own (progressive steps, which blocks to remove) use the validation split or calibration batches from the
training split, never the test split. A method that cannot land on the budget exactly (a block is all or nothing, a
ShuffleNet width is a fixed menu) reports the FLOPs it really has.

Methods (names for ``--methods``):
    l1+kd, l1+ce            one-shot Torch-Pruning to the budget (filter L1 norm), then distillation / cross-entropy
    random+kd               the same with random importance (a control for the criterion)
    activation-progressive  prune → distil-fine-tune steps with mean-|activation| importance, epochs split over steps
    layer-removal+kd        remove the blocks whose bypass costs least validation accuracy, then distil
    1x1+kd                  turn the costliest 3×3 blocks into 1×1, then distil
    scratch+kd, scratch+ce  a wide_cnn with all widths scaled to the budget, trained from random weights
    shufflenet+kd           the CIFAR ShuffleNetV2 width closest below the budget, trained from random weights
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kd.data import BatchIterator, DataSplits
from kd.losses import CrossEntropy, create_loss
from kd.sweep import validation_split
from kd.teacher_cache import CachedBatchIterator, TeacherCache
from kd.trainer import evaluate, fit_model
from models import create_model, profile
from models.common import Batches
from models.checkpoint import atomic_write
from models.shufflenet import STAGE_CHANNELS
from pruning.kernels import compress_kernels
from pruning.layer_removal import remove_layers
from pruning.progressive import progressive_prune
from pruning.prune import prune
from pruning.wide_config import scaled_wide_cnn, wide_config


class StageFit(Protocol):
    """Trains ``model`` in place on ``batches``; ``stage`` names the training (a folder for its checkpoints)."""

    def __call__(self, model: nn.Module, batches: Batches, *, epochs: int, lr: float, teacher: nn.Module | None,
                 loss: nn.Module, stage: str) -> None: ...


def plain_fit(device: torch.device) -> StageFit:
    """:func:`kd.trainer.fit_model` with its defaults (SGD, cosine, fp32 or the hardware's precision) on ``device``,
    no checkpoints and no progress bar: the harness without a recipe config (benchmarks, tests)."""

    def fit(model: nn.Module, batches: Batches, *, epochs: int, lr: float, teacher: nn.Module | None,
            loss: nn.Module, stage: str) -> None:
        fit_model(model, batches, epochs=epochs, lr=lr, teacher=teacher, loss=loss, device=device, progress=False)

    return fit


@dataclass
class CompareSetup:
    """What every method shares. ``train`` excludes the ``val`` images; ``calibration`` is a few training batches."""

    teacher: nn.Module
    train: BatchIterator
    val: BatchIterator
    test: BatchIterator
    calibration: list[tuple[torch.Tensor, torch.Tensor]]
    target_flops: int
    epochs: int
    lr: float = 0.05
    finetune_lr: float = 0.01
    loss: nn.Module | None = None  # the distillation loss of the "+kd" methods (None: the Trainer's default)
    cache: TeacherCache | None = None  # teacher logits on augmented views of ``train``: KD then never runs the teacher
    progressive_steps: int = 2
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fit: StageFit | None = None  # how a student trains (a recipe's: every option of its config); None: plain_fit

    def fitter(self) -> StageFit:
        return self.fit or plain_fit(self.device)

    @property
    def input_size(self) -> tuple[int, ...]:
        return (1, *self.calibration[0][0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def teacher_copy(self) -> nn.Module:
        """A trainable copy of the teacher to compress (the shared teacher stays as given, frozen or not; the copy
        is pruned or transformed, then fine-tuned)."""
        return copy.deepcopy(self.teacher).requires_grad_(True)


def make_setup(teacher: nn.Module, data: DataSplits, *, target_flops: int, epochs: int, batch_size: int = 128,
               val_size: int | float = 0.1, calibration_batches: int = 4, seed: int = 0,
               device: str | torch.device = "cpu", pad: int = 4, flip: str = "random", pad_mode: str = "zeros",
               cutout: int = 0, **options) -> CompareSetup:
    """Splits ``data.train`` into training and validation (class-balanced, by ``seed``) and builds the iterators (the
    training one with a pad-``pad`` ``pad_mode`` crop, ``flip`` and ``cutout``); ``options`` go to
    :class:`CompareSetup` (``lr``, ``finetune_lr``, ``loss``, ``progressive_steps``)."""
    device = torch.device(device)
    fit, val, _ = validation_split(data.train, val_size, seed)
    norm = {"mean": data.mean, "std": data.std, "device": device}
    train = BatchIterator(fit, batch_size, train=True, seed=seed, pad=pad, flip=flip, pad_mode=pad_mode,
                          cutout=cutout, **norm)
    calib_iter = BatchIterator(fit, batch_size, train=True, seed=seed + 1, **norm)  # shuffled: every class present
    calibration = [b for _, b in zip(range(calibration_batches), calib_iter)]
    return CompareSetup(teacher.to(device).eval(), train, BatchIterator(val, 2 * batch_size, train=False, **norm),
                        BatchIterator(data.test, 2 * batch_size, train=False, **norm), calibration, target_flops,
                        epochs, seed=seed, device=device, **options)


@dataclass
class MethodResult:
    """One method on one seed: test accuracy (percent) and wall time (seconds, compression + training + test)."""

    method: str
    seed: int
    flops: int
    params: int
    param_size_kb: float
    accuracy: float
    seconds: float
    note: str = ""
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The numbers, without the model (for report.json)."""
        return {k: v for k, v in self.__dict__.items() if k != "model"}


def fit_student(student: nn.Module, setup: CompareSetup, *, distill: bool, lr: float, stage: str,
                epochs: int | None = None) -> None:
    """How every method trains its student: ``epochs`` (default: the budget) at ``lr`` on the training batches
    through ``setup``'s fitter, distilling with ``setup.loss`` (default ``kd``) when ``distill`` (from
    ``setup.cache`` when there is one), else with cross-entropy."""
    cached = distill and setup.cache is not None
    batches = CachedBatchIterator(setup.cache, setup.train) if cached else setup.train
    setup.fitter()(student, batches, epochs=epochs or setup.epochs, lr=lr,
                   teacher=setup.teacher if distill and not cached else None,
                   loss=(setup.loss or create_loss("kd")) if distill else CrossEntropy(), stage=stage)


def _one_shot(importance: str, distill: bool) -> Callable[[CompareSetup], tuple[nn.Module, str]]:
    def method(setup: CompareSetup) -> tuple[nn.Module, str]:
        example = torch.zeros(setup.input_size, device=setup.device)
        student = prune(setup.teacher_copy(), example, target_flops=setup.target_flops, importance=importance,
                        calibration=setup.calibration, seed=setup.seed).model
        fit_student(student, setup, distill=distill, lr=setup.finetune_lr, stage=_stage(importance, distill, setup))
        return student, f"one-shot {importance} prune"
    return method


def _stage(importance: str, distill: bool, setup: CompareSetup) -> str:
    return f"{importance}+{'kd' if distill else 'ce'}_seed{setup.seed}"


def _progressive(setup: CompareSetup) -> tuple[nn.Module, str]:
    steps = max(1, min(setup.progressive_steps, setup.epochs))
    done = iter(range(1, steps + 1))

    def each(model: nn.Module) -> None:
        fit_student(model, setup, distill=True, lr=setup.finetune_lr, epochs=max(1, setup.epochs // steps),
                    stage=f"activation-progressive_seed{setup.seed}_step{next(done)}")

    res = progressive_prune(setup.teacher_copy(), torch.zeros(setup.input_size), each, setup.val,
                            target_flops=setup.target_flops, num_steps=steps, importance="activation",
                            calibration=setup.calibration, max_steps=steps, device=setup.device)
    used = (len(res.steps) - 1) * max(1, setup.epochs // steps)
    return res.model, f"{len(res.steps) - 1} steps, {used} epochs in all"


def _layer_removal(setup: CompareSetup) -> tuple[nn.Module, str]:
    res = remove_layers(setup.teacher_copy(), setup.calibration, setup.val, target_flops=setup.target_flops,
                        device=setup.device)
    fit_student(res.model, setup, distill=True, lr=setup.finetune_lr, stage=f"layer-removal+kd_seed{setup.seed}")
    return res.model, f"removed {', '.join(res.removed) or 'nothing'}"


def _kernels(setup: CompareSetup) -> tuple[nn.Module, str]:
    res = compress_kernels(setup.teacher_copy(), target_flops=setup.target_flops, calibration=setup.calibration,
                           device=setup.device)
    fit_student(res.model, setup, distill=True, lr=setup.finetune_lr, stage=f"1x1+kd_seed{setup.seed}")
    return res.model, f"1×1: {', '.join(res.converted)}"


def _scratch(distill: bool) -> Callable[[CompareSetup], tuple[nn.Module, str]]:
    def method(setup: CompareSetup) -> tuple[nn.Module, str]:
        student = scaled_wide_cnn(setup.teacher, setup.target_flops, setup.input_size).to(setup.device)
        fit_student(student, setup, distill=distill, lr=setup.lr,
                    stage=f"scratch+{'kd' if distill else 'ce'}_seed{setup.seed}")
        return student, f"widths {wide_config(student)['widths']}"
    return method


def _shufflenet(setup: CompareSetup) -> tuple[nn.Module, str]:
    sizes = {w: profile(create_model("shufflenet_v2", setup.num_classes, width_mult=w), setup.input_size).flops
             for w in STAGE_CHANNELS}
    fits = [w for w, f in sizes.items() if f <= setup.target_flops]
    width = max(fits) if fits else min(sizes)
    student = create_model("shufflenet_v2", setup.num_classes, width_mult=width).to(setup.device)
    fit_student(student, setup, distill=True, lr=setup.lr, stage=f"shufflenet+kd_seed{setup.seed}")
    return student, f"width_mult {width}"


METHODS: dict[str, Callable[[CompareSetup], tuple[nn.Module, str]]] = {
    "l1+kd": _one_shot("l1", True),
    "l1+ce": _one_shot("l1", False),
    "activation-progressive": _progressive,
    "random+kd": _one_shot("random", True),
    "layer-removal+kd": _layer_removal,
    "1x1+kd": _kernels,
    "scratch+kd": _scratch(True),
    "scratch+ce": _scratch(False),
    "shufflenet+kd": _shufflenet,
}


def run_method(name: str, setup: CompareSetup) -> MethodResult:
    """Runs method ``name`` with torch seeded by ``setup.seed``; accuracy is on ``setup.test``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    torch.manual_seed(setup.seed)
    setup.train.generator.manual_seed(setup.seed)  # every method sees the same shuffles, whatever ran before it
    start = time.perf_counter()
    student, note = METHODS[name](setup)
    accuracy = evaluate(student, setup.test, setup.device).accuracy
    seconds = time.perf_counter() - start
    c = profile(student, setup.input_size)
    return MethodResult(name, setup.seed, c.flops, c.params, c.param_size_kb, accuracy, seconds, note, student)


# ----------------------------------------------------------------------------------------------------- reporting


@dataclass
class Summary:
    """A method over seeds: mean and (sample) standard deviation of accuracy, mean wall time."""

    method: str
    flops: int
    param_size_kb: float
    accuracy: float
    accuracy_std: float
    seconds: float
    seeds: int
    note: str


def summarize(results: Sequence[MethodResult]) -> list[Summary]:
    """One :class:`Summary` per method, in first-seen order."""
    by: dict[str, list[MethodResult]] = {}
    for r in results:
        by.setdefault(r.method, []).append(r)
    out = []
    for name, rs in by.items():
        accs = [r.accuracy for r in rs]
        out.append(Summary(name, rs[0].flops, rs[0].param_size_kb, statistics.fmean(accs),
                           statistics.stdev(accs) if len(accs) > 1 else 0.0,
                           statistics.fmean(r.seconds for r in rs), len(rs), rs[0].note))
    return out


def markdown_table(rows: Sequence[Summary], target_flops: int) -> str:
    """``| method | flops | × budget | size kB | accuracy % | wall s | note |`` (accuracy as mean ± std over seeds)."""
    lines = ["| method | flops | × budget | size kB | accuracy % | wall s | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = f"{r.accuracy:.2f} ± {r.accuracy_std:.2f}" if r.seeds > 1 else f"{r.accuracy:.2f}"
        wall = "—" if math.isnan(r.seconds) else f"{r.seconds:.0f}"
        lines.append(f"| {r.method} | {r.flops:,} | {r.flops / target_flops:.2f} | {r.param_size_kb:.1f} | {acc} | "
                     f"{wall} | {r.note} |")
    return "\n".join(lines)


def plot(rows: Sequence[Summary], target_flops: int, path: str | Path) -> Path:
    """Saves accuracy against FLOPs (error bars: std over seeds; dashed line: the budget) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    markers = "*osD^vP<>Xh"  # methods at the same FLOPs (one-shot prunes) stay distinguishable in the legend
    for i, r in enumerate(rows):
        ax.errorbar(r.flops / 1e6, r.accuracy, yerr=r.accuracy_std, fmt=markers[i % len(markers)], capsize=3,
                    markersize=10 if i == 0 else 7, alpha=0.85, label=r.method)
    ax.axvline(target_flops / 1e6, linestyle="--", color="grey", label="FLOPs budget")
    ax.set_xlim(left=0)
    ax.set_xlabel("MFLOPs (thop MACs, one image)")
    ax.set_ylabel("test accuracy %")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path
