"""Training stages from a recipe config: the loss, iterators and hardware a config names, one fitting function that
every recipe trains through (:func:`fit_stage`, so an option added once acts everywhere) and the teacher a
distillation recipe starts from."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd import distributed
from kd.callbacks import Callback, EpochPrinter, EstimatePrinter
from kd.data import BatchIterator, DataSplits, make_loaders
from kd.ensemble import TeacherEnsemble, ensemble_members
from kd.losses import CrossEntropy, DistillLoss, create_loss, loss_arguments
from kd.metrics import MetricsLogger, TensorBoardLogger
from kd.mixup import MixedBatches, make_mixup
from kd.precision import Hardware
from kd.progress import on_terminal
from kd.teacher_cache import CachedBatchIterator, load_or_build
from kd.trainer import DivergedError, FitResult, evaluate, fit_model
from models import create_model, save_model, start_network
from models.common import Batches, batch_count
from models.init import init_for_small_images
from recipes.plumbing import external_teacher
from recipes.plumbing.checks import check_teacher_fits, json_object, model_args
from recipes.plumbing.config import KDConfig, RunConfig, check_values, recipe_arch_args, resolve_device
from recipes.plumbing.report import ModelReport
from recipes.plumbing.teachers import load_teachers, same_normalisation, wrap_teacher


def loaders(cfg: RunConfig, data: DataSplits) -> tuple[BatchIterator, BatchIterator]:
    """Training and test iterators on ``cfg.device``."""
    return make_loaders(data, cfg.batch_size, resolve_device(cfg.device), seed=cfg.seed, workers=cfg.workers,
                        pad=cfg.pad, flip=cfg.flip, pad_mode=cfg.pad_mode, cutout=cfg.cutout)


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
    check_values(cfg)  # option ranges first, so their message names the option
    if cfg.alpha == 0:
        return CrossEntropy(label_smoothing=cfg.label_smoothing)
    kwargs = json_object(cfg.loss_args, "--loss-args", '{"beta": 6}')
    if "label_smoothing" in loss_arguments(cfg.kd_loss):
        kwargs.setdefault("label_smoothing", cfg.label_smoothing)
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


def fit_stage(model: nn.Module, cfg: RunConfig, train_batches: Batches, eval_batches: Batches | None = None, *,
              out_dir: str | Path, teacher: nn.Module | None = None, loss: nn.Module | None = None,
              epochs: int | None = None, lr: float | None = None, feature_loss: nn.Module | None = None,
              eval_split: str = "test", tta: str = "none") -> FitResult:
    """The one way a recipe trains: fits ``model`` with the optimizer, schedule, precision, memory format, compile,
    sync-BN and progress options of ``cfg`` (``epochs``/``lr`` override it), checkpointing to ``out_dir`` (with
    ``metrics.csv``, ``curves.png`` and, with ``--tensorboard``, TensorBoard logs) and resuming from it when
    ``cfg.resume`` and a ``last.pt`` is there. ``eval_batches`` (the ``eval_split`` split) is scored after each
    epoch; the teacher is only run when the loss or ``feature_loss`` needs it (:func:`kd.trainer.fit_model`).
    ``tta``: the test-time augmentation of a final extra score (a teacher's; a student's figure is single-view).

    With ``--mixup`` / ``--cutmix`` the training batches are mixed before the step (:func:`mixed`), so a teacher
    scores the same mixed images as the student.

    With ``--teacher-cache K`` (and a loss that reads only the teacher's logits), the teacher's outputs on K views of
    every training image are taken from the cache (built first when missing) and the teacher is not run again.

    Raises:
        ValueError: ``--teacher-cache`` with a feature loss (which needs the teacher's features).
        DivergedError: the stage's loss stopped being finite; the message names the stage (its folder) and epoch.
    """
    try:
        return _fit_stage(model, cfg, train_batches, eval_batches, out_dir=out_dir, teacher=teacher, loss=loss,
                          epochs=epochs, lr=lr, feature_loss=feature_loss, eval_split=eval_split, tta=tta)
    except DivergedError as err:
        raise DivergedError(f"stage {Path(out_dir).name!r}: {err}") from None


def _fit_stage(model: nn.Module, cfg: RunConfig, train_batches: Batches, eval_batches: Batches | None, *,
               out_dir: str | Path, teacher: nn.Module | None, loss: nn.Module | None, epochs: int | None,
               lr: float | None, feature_loss: nn.Module | None, eval_split: str, tta: str) -> FitResult:
    resume = cfg.resume and (Path(out_dir) / "last.pt").is_file()
    if resume:
        print(f"  resuming from {Path(out_dir) / 'last.pt'}", flush=True)
    views = getattr(cfg, "teacher_cache", 0)
    if teacher is not None and views > 0 and getattr(loss, "needs_teacher", True):
        train_batches, teacher = _cached(cfg, teacher, train_batches, views, feature_loss), None
    train_batches = mixed(cfg, train_batches)
    return fit_model(model, train_batches, eval_batches, epochs=epochs if epochs is not None else cfg.epochs,
                     lr=lr if lr is not None else cfg.lr, teacher=teacher, loss=loss, optimizer=cfg.optimizer,
                     schedule=cfg.schedule, weight_decay=cfg.weight_decay, feature_loss=feature_loss, resume=resume,
                     momentum=cfg.momentum, decay_norm_and_bias=cfg.decay_norm_and_bias,
                     bn_bias_lr_scale=cfg.bn_bias_lr_scale, bn_weight_lr_scale=cfg.bn_weight_lr_scale,
                     warmup=cfg.warmup, muon_lr_scale=cfg.muon_lr_scale, muon_momentum=cfg.muon_momentum,
                     ema=cfg.ema or None, tta=tta, lookahead=cfg.lookahead,
                     bn_momentum=cfg.bn_momentum or None, stem_bias_epochs=cfg.stem_bias_epochs,
                     device=resolve_device(cfg.device),
                     out_dir=out_dir, precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                     progress=cfg.progress,
                     callbacks=stage_callbacks(cfg, Path(out_dir), eval_split, batch_count(train_batches)),
                     sync_bn=cfg.sync_bn)


def _cached(cfg: RunConfig, teacher: nn.Module, train_batches: BatchIterator, views: int,
            feature_loss: nn.Module | None) -> CachedBatchIterator:
    """``train_batches`` served with the teacher's logits from the ``--teacher-cache`` (built when missing)."""
    if feature_loss is not None:
        raise ValueError("--teacher-cache keeps only the teacher's logits; a FitNet hint needs its features "
                         "(drop --teacher-cache or the hint)")
    with distributed.main_first():  # rank 0 builds and writes it, the others read it
        cache, reused = load_or_build(teacher, train_batches, views, cache_dir=cfg.cache_dir, seed=cfg.seed,
                                      precision=cfg.precision, progress=cfg.progress,
                                      on_view=None if cfg.progress and on_terminal() else _say_view)
    how = "reused" if reused else f"built in {cache.seconds:.0f} s"
    print(f"  teacher cache: {views} views × {train_batches.num_samples} images, {cache.nbytes / 2**20:.1f} MiB, "
          f"{how}", flush=True)
    return CachedBatchIterator(cache, train_batches)


def _say_view(done: int, views: int, seconds: float) -> None:
    """A teacher-cache build's log line where no progress bar is drawn (a long build is otherwise silent)."""
    left = seconds / done * (views - done)
    print(f"  teacher cache: view {done}/{views} in {seconds:.0f} s" + (f", about {left:.0f} s left" if left else ""),
          flush=True)


def mixed(cfg: RunConfig, train_batches: Batches) -> Batches:
    """``train_batches`` mixed by ``--mixup`` / ``--cutmix`` (:class:`kd.mixup.MixedBatches`, ``--label-smoothing``
    folded into the soft targets), or as they are when both are 0."""
    mixup = make_mixup(len(train_batches.classes), mixup=cfg.mixup, cutmix=cfg.cutmix,
                       prob=1.0 if cfg.mixup_prob is None else cfg.mixup_prob,
                       switch_prob=0.5 if cfg.mixup_switch_prob is None else cfg.mixup_switch_prob,
                       label_smoothing=cfg.label_smoothing or 0.0)
    return train_batches if mixup is None else MixedBatches(train_batches, mixup, seed=cfg.seed)


def stage_fitter(cfg: RunConfig, root: Path) -> Callable[..., None]:
    """:func:`fit_stage` for the harnesses that train many students (the method comparison): a
    ``fit(model, batches, *, epochs, lr, teacher, loss, stage)`` that trains in ``root/stage`` with every option of
    ``cfg``, without scoring after each epoch (the harness scores the result)."""

    def fit(model: nn.Module, batches: Batches, *, epochs: int, lr: float, teacher: nn.Module | None,
            loss: nn.Module | None, stage: str) -> None:
        fit_stage(model, cfg, batches, out_dir=root / stage, teacher=teacher, loss=loss, epochs=epochs, lr=lr)

    return fit


def score(model: nn.Module, batches: Batches, cfg: RunConfig) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``batches`` at the precision and memory format ``cfg`` trains with,
    as the training stages score their students."""
    hw = hardware(cfg)
    return evaluate(model, batches, resolve_device(cfg.device), precision=hw.precision,
                    channels_last=hw.channels_last).accuracy


def stage_callbacks(cfg: RunConfig, out_dir: Path, eval_split: str = "test",
                    steps_per_epoch: int | None = None) -> list[Callback]:
    """What every training stage reports: a line estimating its time when it is long (from its first steps, given
    ``steps_per_epoch``), a line per epoch (naming ``eval_split``, the split scored after each epoch),
    ``metrics.csv`` + ``curves.png`` in ``out_dir``, and TensorBoard logs with ``--tensorboard``. None on the ranks
    other than 0 under torchrun."""
    if not distributed.is_main():
        return []
    callbacks: list[Callback] = [EpochPrinter(eval_split), MetricsLogger(out_dir)]
    if steps_per_epoch:
        callbacks.insert(0, EstimatePrinter(steps_per_epoch))
    if cfg.tensorboard:
        callbacks.append(TensorBoardLogger(out_dir / "tb"))
    return callbacks


def seed_everything(seed: int) -> None:
    """Seeds torch's CPU and CUDA generators (weights, dropout)."""
    torch.manual_seed(seed)


def fit_teacher(cfg: RunConfig, data: DataSplits, arch: str, arch_args: dict[str, Any], out: Path, *,
                epochs: int | None = None, model: nn.Module | None = None) -> tuple[nn.Module, ModelReport]:
    """Trains ``arch`` with cross-entropy (``--label-smoothing``) on ``data``, saves it to ``out/teacher.pt``
    (pickle-free, with the normalisation and classes in its meta) and returns it with its report (accuracy of the
    last epoch on test; the test-time-augmented one beside it with ``--tta``). ``model``: start from these weights
    (an outside network, :mod:`recipes.plumbing.external_teacher`) instead of a new ``arch``; ``--init`` is then
    not applied (it would overwrite them)."""
    train_batches, test_batches = loaders(cfg, data)
    fresh = model is None
    start = "from scratch" if fresh else "from loaded weights"
    print(f"teacher {arch} ({start}, {cfg.optimizer}): {len(data.train)} training / {len(data.test)} test images, "
          f"{data.num_classes} classes")
    if fresh:
        model = create_model(arch, data.num_classes, **recipe_arch_args(cfg.recipe, arch, arch_args))
        init_model(cfg, model, train_batches)
    result = fit_stage(model, cfg, train_batches, test_batches, out_dir=out / "teacher_train", epochs=epochs,
                       loss=CrossEntropy(label_smoothing=cfg.label_smoothing), tta=cfg.tta)
    report = ModelReport.measure("teacher", model, result.last_accuracy, data.input_size,
                                 tta_accuracy=result.tta_accuracy)
    save_model(model, out / "teacher.pt", meta={"accuracy": report.accuracy, "tta_accuracy": result.tta_accuracy,
                                                **data.meta(), "history": result.to_dict()["history"]})
    return model, report


WHITEN_IMAGES = 5000  # training images whose patches set the whitening conv (airbench's number)


def init_model(cfg: RunConfig, model: nn.Module, train_batches: Any) -> None:
    """``--init whiten-dirac``: :func:`models.init.init_for_small_images` on a freshly built ``model``, its whitening
    from :data:`WHITEN_IMAGES` training images drawn at random with ``--seed`` (image folders list their images class
    by class, so the first ones would all be one class), as the model sees them (normalised, unaugmented)."""
    if cfg.init != "whiten-dirac":
        return
    images = getattr(train_batches, "images", None)
    if images is None:
        raise ValueError("--init whiten-dirac reads training images from memory; use --data-mode memory")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:WHITEN_IMAGES]
    # images on the device, or decoded on demand (LazyImages of a file list on the timm path)
    chosen = train_batches.normalize(images[pick.to(getattr(images, "device", "cpu"))].to(train_batches.mean.device))
    chosen = chosen.cpu()  # (≤ 5000, C, H, W)
    done = init_for_small_images(model, chosen)
    print(f"  init: {', '.join(done)} from {len(chosen)} training images drawn at random", flush=True)


def start_from(model: nn.Module, path: str, data: DataSplits) -> nn.Module:
    """``--initial-checkpoint``: the network to train from ``path`` instead of ``--init`` (:func:`models.start_network`:
    a model file's own network, as it was saved, or ``model``, built from ``--arch --model-args``, with a weight
    file's weights), after checking that a model file saw its inputs normalised as ``data`` normalises them.

    Raises:
        FileNotFoundError, FileFormatError, NonFiniteError: as :func:`models.start_network`, naming the option.
        ValueError: a model file of another architecture than ``--arch``, or trained on other normalisation than
            ``data``'s (its teacher's, when given).
    """
    network, meta = start_network(model, path, where=f"--initial-checkpoint {path!r}")
    for key in ("mean", "std"):
        saved, now = meta.get(key), tuple(float(v) for v in getattr(data, key))
        if saved is not None and not same_normalisation(saved, now):
            raise ValueError(f"--initial-checkpoint {path!r} was trained on inputs normalised with {key} "
                             f"{tuple(round(float(v), 4) for v in saved)}, but this run normalises with "
                             f"{tuple(round(v, 4) for v in now)} (its teacher's); the weights would see other inputs")
    rebuilt = ", the network rebuilt as the file records it" if network is not model else ""
    print(f"  init: the weights of {path}{rebuilt} (--init is not applied)", flush=True)
    return network


def obtain_teacher(cfg: KDConfig, data: DataSplits, out: Path) -> tuple[nn.Module, ModelReport]:
    """The teacher of a distillation recipe: ``--teacher FILE [FILE ...]`` loaded (pickle-free; several, or one with
    ``--teacher-tta``, as the :class:`kd.ensemble.TeacherEnsemble` that teaches the mean of their logits:
    :func:`~recipes.plumbing.teachers.load_teachers`) and scored on this test split as it teaches, or, without it, one
    trained first (``--teacher-arch --teacher-model-args --teacher-epochs``; wrapped for ``--teacher-tta``).

    A loaded teacher's normalisation (``meta["mean"]``, ``meta["std"]``) replaces ``data.mean``/``data.std`` so the
    student sees inputs exactly as the teacher was trained on them.

    Raises:
        ValueError: when the teacher's classes (number, or names and order where its file records them) or image size
            differ from the data's (:func:`check_teacher_fits`). FileFormatError, NonFiniteError: an unreadable,
            foreign or non-finite teacher file.
    """
    external = external_teacher.source(cfg)
    if external is not None:
        return outside_teacher(cfg, data, out, external)
    if cfg.teacher is None:
        arch_args = model_args(cfg.teacher_model_args, "--teacher-model-args")
        trained, report = fit_teacher(cfg, data, cfg.teacher_arch, arch_args, out, epochs=cfg.teacher_epochs)
        if not cfg.teacher_tta:
            return trained, report
        teacher = wrap_teacher([trained], mirror=True)
    else:
        teacher = load_teachers(list(cfg.teacher), cfg.teacher_tta)
        check_teacher_fits(cfg, teacher, data)
    meta = getattr(teacher, "meta", {})
    if "mean" in meta and "std" in meta:
        data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])
    _, test_batches = loaders(cfg, data)
    accuracy = score(teacher, test_batches, cfg)  # as a teacher trained here was scored: same precision
    return teacher, ModelReport.measure("teacher", teacher, accuracy, data.input_size)


def member_reports(cfg: KDConfig, teacher: nn.Module, data: DataSplits) -> list[ModelReport]:
    """Each teacher's own block (``teacher_1``, ``teacher_2``, ...; single view, scored as :func:`score` scores) when
    ``teacher`` is an ensemble or mirrored (:class:`kd.ensemble.TeacherEnsemble`); none for a plain teacher."""
    if not isinstance(teacher, TeacherEnsemble):
        return []
    _, test_batches = loaders(cfg, data)
    return [ModelReport.measure(f"teacher_{i}", member, score(member, test_batches, cfg), data.input_size)
            for i, member in enumerate(ensemble_members(teacher), start=1)]


def outside_teacher(cfg: KDConfig, data: DataSplits, out: Path,
                    external: external_teacher.Source) -> tuple[nn.Module, ModelReport]:
    """``--teacher-arch NAME --teacher-weights FILE`` or ``--pretrained``: the network loaded and scored on this test
    split; with ``--new-head``, its new classifier fine-tuned first with every weight for ``--teacher-epochs``
    (:func:`fit_teacher`, which saves ``OUT/teacher.pt``). With ``--pretrained`` the data takes timm's normalisation
    of those weights."""
    teacher = external_teacher.prepare(external, data)
    if external.new_head:
        return fit_teacher(cfg, data, external.arch, {}, out, epochs=cfg.teacher_epochs, model=teacher)
    _, test_batches = loaders(cfg, data)
    return teacher, ModelReport.measure("teacher", teacher, score(teacher, test_batches, cfg), data.input_size)
