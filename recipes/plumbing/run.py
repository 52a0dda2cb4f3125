"""What every recipe does: check the options, load the data a config names, build a Trainer from it, train, keep
the results; and the one place where errors become a line on stderr and exit status 2 (:func:`run_main`)."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd import distributed
from kd.callbacks import Callback, EpochPrinter
from kd.data import BatchIterator, DataSplits, DataUnavailableError, default_cache_dir, load_dataset, make_loaders
from kd.losses import CrossEntropy, DistillLoss, create_loss, loss_arguments
from kd.metrics import MetricsLogger, TensorBoardLogger
from kd.precision import Hardware
from kd.teacher_cache import CachedBatchIterator, load_or_build
from kd.trainer import FitResult, evaluate, fit_model
from models import create_model, load_model, measure_latency, save_model
from models.init import init_for_small_images
from models.checkpoint import check_finite, safe_load, stale_temp_files
from models.errors import FileFormatError, NonFiniteError
from models.export import export_and_check
from models.registry import model_arguments
from recipes.plumbing import checks, inputs, lock, signals
from recipes.plumbing.config import KDConfig, RunConfig, check_values, config_differences, resolve_device, save_config
from recipes.plumbing.report import ModelReport


def load_data(cfg: RunConfig) -> DataSplits:
    """The data set named by ``cfg`` (``--dataset --data-dir --image-size --limit-train --limit-test --seed
    --cache-dir --skip-bad-images --progress --data-mode --memory-budget``)."""
    budget = cfg.memory_budget * 2**30 if cfg.memory_budget is not None else None
    return load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, limit_train=cfg.limit_train,
                        limit_test=cfg.limit_test, seed=cfg.seed, cache_dir=cfg.cache_dir,
                        skip_bad_images=cfg.skip_bad_images, progress=cfg.progress, data_mode=cfg.data_mode,
                        memory_budget=budget)


def start_run(cfg: RunConfig) -> tuple[DataSplits, Path]:
    """Checks everything that can be checked before any work or any write — option values and combinations
    (:mod:`~recipes.plumbing.checks`), the device, the architectures and their ``--model-args``, the teacher file,
    hint layers, the ``--out`` folder (locked for this run; refused when another run holds it, or when it holds an
    earlier run, unless ``--resume`` with the same options and a checkpoint, or ``--overwrite``) — then seeds, loads
    the data (checked too), checks the teacher fits it and the target is reachable, on ``--resume`` that the inputs
    did not change (:mod:`~recipes.plumbing.inputs`), removes stale temporary files, drops an earlier run's results
    on ``--overwrite`` and writes ``OUT/config.json`` and ``OUT/inputs.json``. Returns the data and the output
    folder.

    Under torchrun (``WORLD_SIZE`` > 1) it first joins the process group (gloo on the CPU, nccl on CUDA, each rank
    on GPU ``LOCAL_RANK``); every rank then runs the whole recipe — teacher training, pruning (deterministic: same
    weights, seed and calibration batches on every rank; DDP checks the shapes agree when it wraps the student) —
    and rank 0 alone prints and writes files. Rank 0 decodes the data first, the others then read its cache.

    Raises:
        ValueError, FileNotFoundError, FileFormatError, NonFiniteError, DataUnavailableError: one clear sentence
            each (:func:`run_main` prints it).
    """
    check_values(cfg)
    checks.check_options(cfg)
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise ValueError("--sync-bn needs CUDA (SyncBatchNorm trains on GPUs only); drop it on the CPU")
    info = distributed.init_distributed(resolve_device(cfg.device))
    if info.distributed:
        distributed.per_rank_batch(cfg.batch_size, info.world_size)
        cfg.device = str(distributed.local_device(resolve_device(cfg.device)))  # this rank's GPU
        cfg.progress = cfg.progress and info.is_main
    teacher = check_models(cfg)
    out = check_out(cfg)
    seed_everything(cfg.seed)
    print(hardware(cfg).describe(), flush=True)
    if info.distributed:
        print(f"torchrun: {info.world_size} processes, {cfg.batch_size // info.world_size} images each per global "
              f"batch of {cfg.batch_size}", flush=True)
    with distributed.main_first():
        data = load_data(cfg)
    if data.mode_reason or data.mode == "stream":
        print(f"data mode: {data.mode}" + (f" ({data.mode_reason})" if data.mode_reason else ""), flush=True)
    if data.skipped:
        print(f"warning: left out {len(data.skipped)} image file(s) that could not be decoded (--skip-bad-images), "
              f"the first: {data.skipped[0]}", file=sys.stderr, flush=True)
    if teacher is not None:
        check_teacher_fits(cfg, teacher, data)
    checks.check_with_data(cfg, data, teacher)
    if cfg.resume:
        inputs.check_unchanged(cfg, data, out)
    if distributed.is_main():
        prepare_out(cfg, out)
        save_config(cfg, out / "config.json")
        inputs.save(cfg, data, out)
    distributed.barrier()
    return data, out


# ----------------------------------------------------------------------------------------- checks before work

def build_model(arch: str, args_text: str, num_classes: int = 10, flag: str = "--model-args") -> nn.Module:
    """``create_model(arch, num_classes, **json(args_text))`` with every way it can fail as one ValueError naming
    the option (``flag``, or the architecture's: ``--arch`` / ``--teacher-arch``); unknown keys are listed with the
    accepted ones."""
    arch_flag = flag.replace("model-args", "arch")
    args = model_args(args_text, flag)
    accepted = model_arguments(arch)
    unknown = sorted(set(args) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(f"{flag}: {arch} does not take {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(accepted) if accepted else 'no arguments'}")
    try:
        return create_model(arch, num_classes, **args)
    except (TypeError, ValueError, RuntimeError, AttributeError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if text.startswith("unknown") and "model" in text.split(" ")[1:3]:
            raise ValueError(f"{arch_flag}: {text}") from None
        raise ValueError(f"{flag} {args_text}: {arch} cannot be built from these arguments ({text})") from None


def check_models(cfg: RunConfig) -> nn.Module | None:
    """Builds (or, for ``--teacher``, loads) every model the options name, so that a bad architecture, bad
    ``--model-args``, an unreadable, foreign or non-finite teacher file or a bad hint layer stops the run before any
    work. Returns the loaded teacher (None when there is no ``--teacher``)."""
    student = None
    if hasattr(cfg, "arch") and hasattr(cfg, "model_args"):
        student = build_model(cfg.arch, cfg.model_args)
    teacher, loaded = None, None
    if isinstance(cfg, KDConfig):
        if cfg.teacher is not None:
            teacher = loaded = load_model(cfg.teacher)
        else:
            teacher = build_model(cfg.teacher_arch, cfg.teacher_model_args, flag="--teacher-model-args")
    if teacher is not None and getattr(cfg, "hint_layer", None) is not None:
        _check_layer(teacher, cfg.hint_layer, "--hint-layer", conv=True)
    hint_student, hint_teacher = getattr(cfg, "hint_student_layer", None), getattr(cfg, "hint_teacher_layer", None)
    if (hint_student is None) != (hint_teacher is None):
        raise ValueError("a FitNet hint needs both --hint-student-layer and --hint-teacher-layer")
    if student is not None and hint_student is not None:
        _check_layer(student, hint_student, "--hint-student-layer")
    if teacher is not None and hint_teacher is not None:
        _check_layer(teacher, hint_teacher, "--hint-teacher-layer")
    return loaded


def _check_layer(model: nn.Module, name: str, flag: str, conv: bool = False) -> None:
    """``name`` is a layer of ``model`` (and holds a conv layer when ``conv``); else a ValueError listing some."""
    layers = dict(model.named_modules())
    if name not in layers or not name:
        shown = [n for n, m in layers.items() if n and len(list(m.children())) > 0][:12]
        raise ValueError(f"{flag} {name!r} is not a layer of the {model.arch_spec['name']} model; its layers "
                         f"include {', '.join(shown)}")
    if conv and not any(isinstance(m, nn.Conv2d) for m in layers[name].modules()):
        raise ValueError(f"{flag} {name!r} has no conv layer whose channels pruning kept; pick a conv block such "
                         f"as {next((n for n, m in layers.items() if isinstance(m, nn.Conv2d)), '?')}")


def check_teacher_fits(cfg: KDConfig, teacher: nn.Module, data: DataSplits) -> None:
    """The loaded ``--teacher`` was trained on this data: same number of classes, same class names and order (where
    its file records them) and the same image size.

    Raises:
        ValueError: naming what differs and what to pass.
    """
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


def _cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def _earlier_entries(cfg: RunConfig, out: Path) -> list[str]:
    """What ``out`` holds besides stale temporary files and the decoded-image cache (when it lives inside)."""
    if not out.is_dir():
        return []
    stale, cache = set(stale_temp_files(out)), _cache_dir(cfg).resolve()
    return sorted(p.name for p in out.iterdir() if p not in stale and p.name != lock.LOCK_NAME
                  and not (p.resolve() == cache or p.resolve() in cache.parents))


def check_out(cfg: RunConfig) -> Path:
    """The output folder, checked and locked for this run (:mod:`recipes.plumbing.lock`): not a file, not in use
    by another run; when it holds an earlier run, ``--resume`` (same options, a readable finite checkpoint) or
    ``--overwrite`` is required.

    Raises:
        ValueError: naming what is wrong and what to pass (:class:`~recipes.plumbing.lock.OutBusyError` names the
            process that holds the folder).
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {cfg.out!r} is a file; pass a folder (it is created when missing)")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume continues the earlier run in --out and --overwrite replaces it; pass only one")
    if distributed.is_main():
        lock.acquire(out)  # before the folder is read or written: one run per folder (released by run_main)
    if cfg.resume:
        check_resume(cfg, out)
        return out
    earlier = _earlier_entries(cfg, out)
    if earlier and not cfg.overwrite:
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise ValueError(f"--out {cfg.out!r} already holds an earlier run ({shown}); pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    return out


def check_resume(cfg: RunConfig, out: Path) -> None:
    """``--resume`` needs the earlier run's ``config.json`` with the same options (:func:`config_differences`) and at
    least one readable, finite ``*/last.pt`` checkpoint."""
    config = out / "config.json"
    if not config.is_file():
        raise ValueError(f"--resume: {cfg.out!r} holds no earlier run to continue (no config.json); run without "
                         "--resume")
    try:
        earlier = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"--resume: {str(config)!r} is not valid JSON, so the options of the earlier run are "
                         "unknown; start afresh with --overwrite") from None
    if not isinstance(earlier, dict):
        raise ValueError(f"--resume: {str(config)!r} does not hold the options of a run; start afresh with "
                         "--overwrite")
    diffs = config_differences(earlier, cfg)
    if diffs:
        raise ValueError(f"--resume: the options differ from the earlier run in {cfg.out!r}: {'; '.join(diffs)}; "
                         "resume with the earlier options, or start afresh with --overwrite or another --out")
    checkpoints = sorted(out.glob("*/last.pt"))
    if not checkpoints:
        raise ValueError(f"--resume: {cfg.out!r} has no checkpoint (*/last.pt) to continue from; start afresh with "
                         "--overwrite")
    for path in checkpoints:
        state = safe_load(path, "checkpoint")
        if not isinstance(state, dict) or not isinstance(state.get("student"), dict):
            raise FileFormatError(f"checkpoint {str(path)!r} is not a kd.Trainer last.pt; start afresh with "
                                  "--overwrite")
        check_finite(state["student"], f"checkpoint {str(path)!r}")


def prepare_out(cfg: RunConfig, out: Path) -> None:
    """Removes temporary files a killed write left in ``out`` (and old ones in the cache folder), and on
    ``--overwrite`` the earlier run's options, report and checkpoints, so nothing of it is mixed into this run or
    resumed later. A ``--teacher`` file is never removed."""
    for path in stale_temp_files(out) if out.is_dir() else []:
        path.unlink(missing_ok=True)
    cache = _cache_dir(cfg)
    try:
        for path in stale_temp_files(cache, older_than_s=3600) if cache.is_dir() else []:
            path.unlink(missing_ok=True)  # only old ones: another run may be writing the cache right now
    except OSError:
        pass  # the cache is an optimisation; a folder we may not clean is not an error
    if not cfg.overwrite or not out.is_dir():
        return
    keep = Path(cfg.teacher).resolve() if getattr(cfg, "teacher", None) else None
    for path in [out / "config.json", out / "report.json", *out.glob("*/last.pt"), *out.glob("*/best.pt")]:
        if path.is_file() and path.resolve() != keep:
            path.unlink()


def loaders(cfg: RunConfig, data: DataSplits) -> tuple[BatchIterator, BatchIterator]:
    """Training and test iterators on ``cfg.device``."""
    return make_loaders(data, cfg.batch_size, resolve_device(cfg.device), seed=cfg.seed, workers=cfg.workers,
                        pad=cfg.pad, flip=cfg.flip)


def model_args(text: str, flag: str = "--model-args") -> dict[str, Any]:
    """Parses ``--model-args`` JSON (e.g. ``'{"widths": [32, 64, 128, 128]}'``) into keyword arguments."""
    return json_object(text, flag, '{"widths": [32, 64]}')


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


def train(model: nn.Module, cfg: RunConfig, train_batches: BatchIterator, test_batches: BatchIterator, *,
          out_dir: str | Path, teacher: nn.Module | None = None, loss: nn.Module | None = None,
          epochs: int | None = None, lr: float | None = None, feature_loss: nn.Module | None = None,
          tta: str = "none") -> FitResult:
    """Fits ``model`` with the optimizer, schedule and precision of ``cfg`` (``epochs``/``lr`` override it),
    checkpointing to ``out_dir`` and resuming from it when ``cfg.resume`` and a ``last.pt`` is there. ``tta``: the
    test-time augmentation of a final extra score (a teacher's; a student's figure is single-view).

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
        with distributed.main_first():  # rank 0 builds and writes it, the others read it
            cache, reused = load_or_build(teacher, train_batches, views, cache_dir=cfg.cache_dir, seed=cfg.seed,
                                          precision=cfg.precision, progress=cfg.progress)
        how = "reused" if reused else f"built in {cache.seconds:.0f} s"
        print(f"  teacher cache: {views} views × {train_batches.num_samples} images, {cache.nbytes / 2**20:.1f} MiB, "
              f"{how}", flush=True)
        train_batches, teacher = CachedBatchIterator(cache, train_batches), None
    return fit_model(model, train_batches, test_batches, epochs=epochs if epochs is not None else cfg.epochs,
                     lr=lr if lr is not None else cfg.lr, teacher=teacher, loss=loss, optimizer=cfg.optimizer,
                     schedule=cfg.schedule, weight_decay=cfg.weight_decay, feature_loss=feature_loss, resume=resume,
                     momentum=cfg.momentum, decay_norm_and_bias=cfg.decay_norm_and_bias,
                     bn_bias_lr_scale=cfg.bn_bias_lr_scale, bn_weight_lr_scale=cfg.bn_weight_lr_scale,
                     warmup=cfg.warmup, ema=cfg.ema or None, tta=tta,
                     device=resolve_device(cfg.device), out_dir=out_dir, precision=cfg.precision,
                     channels_last=cfg.channels_last, compile=cfg.compile, progress=cfg.progress,
                     callbacks=stage_callbacks(cfg, Path(out_dir)), sync_bn=cfg.sync_bn)


def stage_callbacks(cfg: RunConfig, out_dir: Path) -> list[Callback]:
    """What every training stage reports: a line per epoch, ``metrics.csv`` + ``curves.png`` in ``out_dir``, and
    TensorBoard logs with ``--tensorboard``. None on the ranks other than 0 under torchrun."""
    if not distributed.is_main():
        return []
    callbacks: list[Callback] = [EpochPrinter(), MetricsLogger(out_dir)]
    if cfg.tensorboard:
        callbacks.append(TensorBoardLogger(out_dir / "tb"))
    return callbacks


def deployment(cfg: KDConfig, teacher: nn.Module, student: nn.Module, input_size: tuple[int, ...],
               out: Path) -> dict[str, Any]:
    """Measured forward latency of teacher and student (``--latency-batch-sizes``, this run's precision and threads)
    and, with ``--export onnx``, ``OUT/student.onnx`` checked against PyTorch with onnxruntime; prints both after the
    report blocks and returns them for report.json. FLOPs are not speed: this is what users prune for.

    Raises:
        ValueError: when the ONNX model's outputs differ from PyTorch's by more than the tolerance.
    """
    found: dict[str, Any] = {}
    if not distributed.is_main():
        return found  # rank 0 measures and writes; the others would only compete for the cores
    shape = tuple(input_size[1:])
    if cfg.latency:
        precision = hardware(cfg).precision
        timing = {"batch_sizes": cfg.latency_batch_sizes, "precision": precision, "repeats": 10, "min_seconds": 0.2}
        rows = {name: measure_latency(m, shape, **timing) for name, m in (("teacher", teacher), ("student", student))}
        print(f"\nlatency ({precision}, {rows['student'][0].threads} threads, median of >= 10 forward passes):")
        for t, s in zip(rows["teacher"], rows["student"]):
            print(f"  batch {t.batch_size:3d}: teacher {t.median_ms:9.2f} ms  student {s.median_ms:9.2f} ms  "
                  f"{t.median_ms / s.median_ms:5.2f}x faster  ({s.images_per_s:,.0f} images/s)")
        found["latency"] = {name: [dataclasses.asdict(r) for r in res] for name, res in rows.items()}
        found["latency"]["speedup"] = {t.batch_size: t.median_ms / s.median_ms for t, s in zip(*rows.values())}
    if cfg.export == "onnx":
        rep = export_and_check(student, out / "student.onnx", shape, cfg.latency_batch_sizes, repeats=10,
                               min_seconds=0.5)
        if not rep.passed:
            raise ValueError(f"{rep.path} differs from the PyTorch student by {rep.max_abs_diff:.3g} (tolerance "
                             f"{rep.tolerance:g}); the ONNX file is not trustworthy")
        print(f"\nONNX: {rep.path} (max abs difference to PyTorch {rep.max_abs_diff:.2e})")
        for t, o in zip(rep.torch_latency, rep.onnx_latency):
            print(f"  batch {t.batch_size:3d}: PyTorch {t.median_ms:9.2f} ms  onnxruntime {o.median_ms:9.2f} ms")
        found["onnx"] = rep.to_dict()
    return found


INTERRUPTED = ("every file written so far is complete (writes are atomic); once an epoch has finished, the same "
               "command with --resume goes on from the last finished one")


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Runs a recipe's ``main``. Every foreseeable error — bad options or inputs, missing, damaged or foreign files,
    data problems, a diverged run, a full, read-only or forbidden disk, a checkpoint that does not fit, a busy
    ``--out`` — becomes one line ``error: ...`` on stderr and exit status 2, never a traceback; warnings print as one
    ``warning: ...`` line. An error nobody foresaw (a bug) keeps its traceback. Ctrl-C prints one
    ``interrupted: ...`` line and exits 130, SIGTERM one ``terminated: ...`` line and exits 143. The lock on
    ``--out`` is released on the way out.

    Under torchrun the ranks other than 0 print nothing on stdout, and error, warning and interruption lines come
    from the first process of each node (``LOCAL_RANK`` 0) only: every rank runs the same checks, so one line says
    it; each rank still exits with the status above. The process group :func:`start_run` joined is left at the end.
    """
    env = distributed.DistEnv.from_env()
    quiet = env.local_rank != 0
    with warnings.catch_warnings(), _devnull_stdout(env.rank != 0), signals.interrupts():
        warnings.showwarning = _show_warning if not quiet else _ignore_warning
        try:
            return main(argv)
        except KeyboardInterrupt as err:
            terminated = isinstance(err, signals.Terminated)
            if not quiet:
                print(f"\n{'terminated' if terminated else 'interrupted'}: {INTERRUPTED}", file=sys.stderr,
                      flush=True)
            raise SystemExit(143 if terminated else 130) from None
        except Exception as err:  # noqa: BLE001 (sorted by error_message; the unforeseen are raised again)
            message = error_message(err)
            if message is None:
                raise
            if not quiet:
                print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        finally:
            lock.release()
            if distributed.DistEnv.from_env().distributed:
                distributed.cleanup()


@contextlib.contextmanager
def _devnull_stdout(on: bool):
    if not on:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


_PICKLE_REFUSED = ("a file holds pickled objects other than tensors and plain values and is refused: reading it "
                   "could run code")


def error_message(err: BaseException) -> str | None:
    """The one line a user sees for ``err``, or None for an error nobody foresaw."""
    if isinstance(err, NonFiniteError):
        text = _one_line(err)
        return text if "--lr" in text else f"{text}; nothing non-finite was saved (a lower --lr usually helps)"
    if isinstance(err, OSError) and err.errno is not None:
        return _os_message(err)
    if isinstance(err, (DataUnavailableError, ValueError, OSError)):
        return _one_line(err)
    if isinstance(err, pickle.UnpicklingError):
        return _PICKLE_REFUSED
    if isinstance(err, EOFError):
        return "a file ended early: it is truncated; start afresh with --overwrite or pass an intact file"
    if isinstance(err, RuntimeError):
        text = str(err)
        if "size mismatch" in text or "Error(s) in loading state_dict" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "size mismatch" in ln), _one_line(err))
            return (f"a saved checkpoint does not fit the model ({detail.rstrip('.')}): the options changed since it "
                    "was written; resume with the earlier options, or start afresh with --overwrite or another --out")
        if any(k in text for k in ("PytorchStreamReader", "PytorchStreamWriter", "inline_container")):
            return (f"a checkpoint file is truncated or corrupt ({_one_line(err).split('. ')[0]}); start afresh "
                    "with --overwrite")
    return None


def _os_message(err: OSError) -> str:
    name = repr(err.filename) if err.filename else "a file"
    code = errno.errorcode.get(err.errno, str(err.errno))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} ({code}) writing {name}: the disk is full; free some space or choose another --out"
    if err.errno == errno.EROFS:
        return f"cannot write {name}: the file system is read-only ({code}); choose another --out"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({code}) for {name}; fix its permissions or choose another path"
    return f"{err.strerror or type(err).__name__} ({code}): {name}"


def _one_line(err: BaseException | Warning | str) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return _PICKLE_REFUSED if "weights_only" in text else text


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _ignore_warning(*args: Any, **kwargs: Any) -> None:
    """Warnings of the ranks that leave the printing to local rank 0 (the same warning, said once)."""


def seed_everything(seed: int) -> None:
    """Seeds torch's CPU and CUDA generators (weights, dropout)."""
    torch.manual_seed(seed)


def fit_teacher(cfg: RunConfig, data: DataSplits, arch: str, arch_args: dict[str, Any], out: Path, *,
                epochs: int | None = None) -> tuple[nn.Module, ModelReport]:
    """Trains ``arch`` with cross-entropy (``--label-smoothing``) on ``data``, saves it to ``out/teacher.pt``
    (pickle-free, with the normalisation and classes in its meta) and returns it with its report (accuracy of the
    last epoch on test; the test-time-augmented one beside it with ``--tta``)."""
    train_batches, test_batches = loaders(cfg, data)
    model = create_model(arch, data.num_classes, **arch_args)
    print(f"teacher {arch}: {len(data.train)} training / {len(data.test)} test images, {data.num_classes} classes")
    init_model(cfg, model, train_batches)
    result = train(model, cfg, train_batches, test_batches, out_dir=out / "teacher_train", epochs=epochs,
                   loss=CrossEntropy(label_smoothing=cfg.label_smoothing), tta=cfg.tta)
    report = ModelReport.measure("teacher", model, result.last_accuracy, data.input_size,
                                 tta_accuracy=result.tta_accuracy)
    save_model(model, out / "teacher.pt", meta={"accuracy": report.accuracy, "tta_accuracy": result.tta_accuracy,
                                                **data.meta(), "history": result.to_dict()["history"]})
    return model, report


WHITEN_IMAGES = 5000  # training images whose patches set the whitening conv (airbench's number)


def init_model(cfg: RunConfig, model: nn.Module, train_batches: Any) -> None:
    """``--init whiten-dirac``: :func:`models.init.init_for_small_images` on a freshly built ``model``, its whitening
    from the first :data:`WHITEN_IMAGES` training images as the model sees them (normalised, unaugmented)."""
    if cfg.init != "whiten-dirac":
        return
    images = getattr(train_batches, "images", None)
    if images is None:
        raise ValueError("--init whiten-dirac reads training images from memory; use --data-mode memory")
    first = train_batches.normalize(images[:WHITEN_IMAGES].to(train_batches.device)).cpu()
    done = init_for_small_images(model, first)
    print(f"  init: {', '.join(done)} from {len(first)} training images", flush=True)


def obtain_teacher(cfg: KDConfig, data: DataSplits, out: Path) -> tuple[nn.Module, ModelReport]:
    """The teacher of a distillation recipe: ``--teacher FILE`` loaded (pickle-free) and scored on this test split,
    or, without it, one trained first (``--teacher-arch --teacher-model-args --teacher-epochs``).

    A loaded teacher's normalisation (``meta["mean"]``, ``meta["std"]``) replaces ``data.mean``/``data.std`` so the
    student sees inputs exactly as the teacher was trained on them.

    Raises:
        ValueError: when the teacher's classes (number, or names and order where its file records them) or image size
            differ from the data's (:func:`check_teacher_fits`). FileFormatError, NonFiniteError: an unreadable,
            foreign or non-finite teacher file.
    """
    if cfg.teacher is None:
        return fit_teacher(cfg, data, cfg.teacher_arch, model_args(cfg.teacher_model_args, "--teacher-model-args"),
                           out, epochs=cfg.teacher_epochs)
    teacher = load_model(cfg.teacher)
    check_teacher_fits(cfg, teacher, data)
    meta = getattr(teacher, "meta", {})
    if "mean" in meta and "std" in meta:
        data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])
    _, test_batches = loaders(cfg, data)
    accuracy = evaluate(teacher, test_batches, resolve_device(cfg.device)).accuracy
    return teacher, ModelReport.measure("teacher", teacher, accuracy, data.input_size)
