"""What every recipe does: load the data a config names, build a Trainer from it, train, keep the results."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd.callbacks import EpochPrinter
from kd.config import KDConfig, RunConfig, resolve_device, save_config
from kd.data import BatchIterator, DataSplits, DataUnavailableError, load_dataset, make_loaders
from kd.losses import CrossEntropy, DistillLoss, create_loss, loss_arguments
from kd.precision import Hardware
from kd.report import ModelReport
from kd.teacher_cache import CachedBatchIterator, load_or_build
from kd.trainer import FitResult, evaluate, fit_model
from models import create_model, load_model, save_model


def load_data(cfg: RunConfig) -> DataSplits:
    """The data set named by ``cfg`` (``--dataset --data-dir --image-size --limit-train --limit-test --seed``)."""
    return load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, limit_train=cfg.limit_train,
                        limit_test=cfg.limit_test, seed=cfg.seed, cache_dir=cfg.cache_dir)


def start_run(cfg: RunConfig) -> tuple[DataSplits, Path]:
    """Seeds, loads the data (first, so a missing data set stops the run before anything is written), then writes
    ``OUT/config.json``; returns the data and the output folder."""
    seed_everything(cfg.seed)
    print(hardware(cfg).describe(), flush=True)
    data = load_data(cfg)
    out = Path(cfg.out)
    save_config(cfg, out / "config.json")
    return data, out


def loaders(cfg: RunConfig, data: DataSplits) -> tuple[BatchIterator, BatchIterator]:
    """Training and test iterators on ``cfg.device``."""
    return make_loaders(data, cfg.batch_size, resolve_device(cfg.device), seed=cfg.seed)


def model_args(text: str) -> dict[str, Any]:
    """Parses ``--model-args`` JSON (e.g. ``'{"widths": [32, 64, 128, 128]}'``) into keyword arguments."""
    return json_object(text, "--model-args", '{"widths": [32, 64]}')


def json_object(text: str, option: str, example: str) -> dict[str, Any]:
    """Parses an option's JSON object text into a dict; a one-sentence ValueError naming ``option`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option} must be a JSON object such as '{example}', got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object such as '{example}', got {text!r}")
    return value


def hardware(cfg: RunConfig) -> Hardware:
    """The CPU, device, precision and memory format this run trains with (``--precision --channels-last``)."""
    return Hardware.detect(cfg.precision, resolve_device(cfg.device), cfg.channels_last)


def make_loss(cfg: KDConfig) -> DistillLoss:
    """The loss of ``--kd-loss`` with ``--loss-args``. ``--temperature`` fills the ``temperature`` argument of the
    losses that have one and ``--alpha`` the soft-target weight of ``kd``, unless ``--loss-args`` sets them;
    ``--alpha 0`` is plain cross-entropy whatever the loss.

    Raises:
        ValueError: unknown loss, malformed ``--loss-args``, an argument the loss does not take, a bad value.
    """
    if cfg.alpha == 0:
        return CrossEntropy()
    kwargs = json_object(cfg.loss_args, "--loss-args", '{"beta": 6}')
    if cfg.alpha is not None and cfg.kd_loss != "kd":
        raise ValueError(f"--alpha is the soft-target weight of --kd-loss kd; set the weights of {cfg.kd_loss} with "
                         f"--loss-args (or --alpha 0 for plain cross-entropy)")
    if cfg.temperature is not None and "temperature" in loss_arguments(cfg.kd_loss):
        kwargs.setdefault("temperature", cfg.temperature)
    elif cfg.temperature is not None:
        raise ValueError(f"--kd-loss {cfg.kd_loss} has no temperature argument; set its arguments with --loss-args")
    if cfg.alpha is not None:
        kwargs.setdefault("alpha", cfg.alpha)
    return create_loss(cfg.kd_loss, **kwargs)


def train(model: nn.Module, cfg: RunConfig, train_batches: BatchIterator, test_batches: BatchIterator, *,
          out_dir: str | Path, teacher: nn.Module | None = None, loss: nn.Module | None = None,
          epochs: int | None = None, lr: float | None = None, feature_loss: nn.Module | None = None) -> FitResult:
    """Fits ``model`` with the optimizer, schedule and precision of ``cfg`` (``epochs``/``lr`` override it),
    checkpointing to ``out_dir`` and resuming from it when ``cfg.resume`` and a ``last.pt`` is there.

    With ``--teacher-cache K`` (and a loss that reads only the teacher's logits), the teacher's outputs on K views of
    every training image are taken from the cache (built first when missing) and the teacher is not run again.
    """
    resume = cfg.resume and (Path(out_dir) / "last.pt").is_file()
    if resume:
        print(f"  resuming from {Path(out_dir) / 'last.pt'}", flush=True)
    views = getattr(cfg, "teacher_cache", 0)
    if teacher is not None and views > 0 and getattr(loss, "needs_teacher", True):
        if feature_loss is not None:
            raise ValueError("--teacher-cache keeps only the teacher's logits; a FitNet hint needs its features "
                             "(drop --teacher-cache or the hint)")
        cache, reused = load_or_build(teacher, train_batches, views, cache_dir=cfg.cache_dir, seed=cfg.seed,
                                      precision=cfg.precision, progress=cfg.progress)
        how = "reused" if reused else f"built in {cache.seconds:.0f} s"
        print(f"  teacher cache: {views} views × {train_batches.num_samples} images, {cache.nbytes / 2**20:.1f} MiB, "
              f"{how}", flush=True)
        train_batches, teacher = CachedBatchIterator(cache, train_batches), None
    return fit_model(model, train_batches, test_batches, epochs=epochs if epochs is not None else cfg.epochs,
                     lr=lr if lr is not None else cfg.lr, teacher=teacher, loss=loss, optimizer=cfg.optimizer,
                     schedule=cfg.schedule, weight_decay=cfg.weight_decay, feature_loss=feature_loss, resume=resume,
                     device=resolve_device(cfg.device), out_dir=out_dir, precision=cfg.precision,
                     channels_last=cfg.channels_last, compile=cfg.compile, progress=cfg.progress,
                     callbacks=[EpochPrinter()])


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Runs a recipe's ``main``, turning data and argument errors into one line on stderr and exit status 2."""
    try:
        return main(argv)
    except (DataUnavailableError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def seed_everything(seed: int) -> None:
    """Seeds torch's CPU and CUDA generators (weights, dropout)."""
    torch.manual_seed(seed)


def fit_teacher(cfg: RunConfig, data: DataSplits, arch: str, arch_args: dict[str, Any], out: Path, *,
                epochs: int | None = None, label_smoothing: float = 0.0) -> tuple[nn.Module, ModelReport]:
    """Trains ``arch`` with cross-entropy on ``data``, saves it to ``out/teacher.pt`` (pickle-free, with the
    normalisation and classes in its meta) and returns it with its report (accuracy of the last epoch on test)."""
    train_batches, test_batches = loaders(cfg, data)
    model = create_model(arch, data.num_classes, **arch_args)
    print(f"teacher {arch}: {len(data.train)} training / {len(data.test)} test images, {data.num_classes} classes")
    result = train(model, cfg, train_batches, test_batches, out_dir=out / "teacher_train", epochs=epochs,
                   loss=CrossEntropy(label_smoothing=label_smoothing))
    report = ModelReport.measure("teacher", model, result.last_accuracy, data.input_size)
    save_model(model, out / "teacher.pt", meta={"accuracy": report.accuracy, **data.meta(),
                                                "history": result.to_dict()["history"]})
    return model, report


def obtain_teacher(cfg: KDConfig, data: DataSplits, out: Path) -> tuple[nn.Module, ModelReport]:
    """The teacher of a distillation recipe: ``--teacher FILE`` loaded (pickle-free) and scored on this test split,
    or, without it, one trained first (``--teacher-arch --teacher-model-args --teacher-epochs``).

    A loaded teacher's normalisation (``meta["mean"]``, ``meta["std"]``) replaces ``data.mean``/``data.std`` so the
    student sees inputs exactly as the teacher was trained on them.

    Raises:
        ValueError: when the teacher's classes (number, or names and order where its file records them) or image size
            differ from the data's.
    """
    if cfg.teacher is None:
        return fit_teacher(cfg, data, cfg.teacher_arch, model_args(cfg.teacher_model_args), out,
                           epochs=cfg.teacher_epochs)
    teacher = load_model(cfg.teacher)
    classes = teacher.arch_spec["num_classes"]
    if classes != data.num_classes:
        raise ValueError(f"teacher {cfg.teacher!r} has {classes} classes but --dataset {cfg.dataset} has "
                         f"{data.num_classes}; train a teacher on this data set or pick the matching one")
    meta = getattr(teacher, "meta", {})
    if meta.get("classes") not in (None, data.classes):
        raise ValueError(f"teacher {cfg.teacher!r} was trained on classes {meta['classes'][:5]}... but the data has "
                         f"{data.classes[:5]}...; the class order must match")
    if meta.get("image_size") not in (None, data.input_size[-1]):
        raise ValueError(f"teacher {cfg.teacher!r} was trained on {meta['image_size']}-pixel images; pass "
                         f"--image-size {meta['image_size']}")
    if "mean" in meta and "std" in meta:
        data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])
    _, test_batches = loaders(cfg, data)
    accuracy = evaluate(teacher, test_batches, resolve_device(cfg.device)).accuracy
    return teacher, ModelReport.measure("teacher", teacher, accuracy, data.input_size)
