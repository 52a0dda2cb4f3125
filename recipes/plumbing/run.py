"""What every recipe does, in order: check the options and inputs, load the data, write ``config.json``
(:func:`start_run`); for a distillation recipe also build the loss and obtain the teacher (:func:`start_kd_run`);
then, after the recipe's own work, print the report blocks, measure deployment and write ``report.json``
(:func:`finish_run`). Errors become one line through :func:`recipes.plumbing.errors.run_main`.

The jobs live in modules of their own: ``checks`` (models and inputs), ``outdir`` (the ``--out`` folder),
``training`` (loss, iterators, :func:`~recipes.plumbing.training.fit_stage`, the teacher), ``deploy`` (latency,
ONNX), ``errors`` (one-line errors, exit status), ``report`` (the blocks and ``report.json``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kd import distributed
from kd.data import DataSplits, load_dataset, resolve_policy, use_timm_transforms
from kd.ensemble import ensemble_members
from kd.losses import DistillLoss
from recipes.plumbing import console, external_teacher, inputs, option_checks
from recipes.plumbing.checks import build_model, check_extras, check_models, check_teacher_fits
from recipes.plumbing.config import KDConfig, RunConfig, check_values, config_record, resolve_device, save_config
from recipes.plumbing.deploy import deployment
from recipes.plumbing.outdir import check_out, prepare_out
from recipes.plumbing.report import ModelReport, flops_check, print_flops_check, print_reports, write_report
from recipes.plumbing.sittings import hardware_changes, read_sittings, record_sitting
from recipes.plumbing.training import hardware, make_loss, member_reports, obtain_teacher, seed_everything


def load_data(cfg: RunConfig, network: nn.Module | None = None) -> DataSplits:
    """The data set named by ``cfg`` (``--dataset --data-dir --image-size --limit-train --limit-test --seed
    --cache-dir --skip-bad-images --progress --data-mode --memory-budget --train-split --val-split``), with timm's
    transforms (``--transforms``, :func:`kd.data.use_timm_transforms`) following ``network``'s data config and
    ``--aa --crop-pct --scale``."""
    budget = cfg.memory_budget * 2**30 if cfg.memory_budget is not None else None
    timm_path = use_timm_transforms(cfg.transforms, cfg.image_size, network, cfg.dataset)
    data = load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, limit_train=cfg.limit_train,
                        limit_test=cfg.limit_test, seed=cfg.seed, cache_dir=cfg.cache_dir,
                        skip_bad_images=cfg.skip_bad_images, progress=cfg.progress, data_mode=cfg.data_mode,
                        memory_budget=budget, transforms="timm" if timm_path else "tensor",
                        train_split=cfg.train_split, val_split=cfg.val_split)
    if data.policy is not None:
        data.policy = resolve_policy(network, cfg.image_size, data.mean, data.std, crop_pct=cfg.crop_pct,
                                     scale=cfg.scale, auto_augment=cfg.aa)
        data.mean, data.std = data.policy.mean, data.policy.std
    return data


def input_network(cfg: RunConfig, loaded: nn.Module | None) -> nn.Module | None:
    """The network whose data configuration the inputs follow: the loaded ``--teacher``, else a timm architecture the
    run builds (``--teacher-arch``, or ``--arch`` of a recipe without a teacher); None for this project's models."""
    if loaded is not None:
        return loaded
    arch, args = ((cfg.teacher_arch, cfg.teacher_model_args) if isinstance(cfg, KDConfig)
                  else (getattr(cfg, "arch", ""), getattr(cfg, "model_args", "{}")))
    return build_model(arch, args) if arch.startswith("timm:") else None


def describe_data(data: DataSplits) -> dict[str, Any]:
    """What ``report.json`` records of the inputs: the path, the splits read, the normalisation and, on the timm
    path, the transforms (eval transform, interpolation, crop_pct)."""
    base = {"transforms": "timm" if data.policy is not None else "tensor", "splits": list(data.splits),
            "mean": list(data.mean), "std": list(data.std), "image_size": data.input_size[-1]}
    if data.policy is None:
        return {**base, "eval_transform": "decode, resize to a square (bilinear, aspect not kept), normalise",
                "train_transform": "eval's images + pad-crop and flip of whole batches on the device"}
    return {**base, **data.policy.describe()}


def _say_data(data: DataSplits) -> None:
    """The splits (when an image folder's evaluation split was chosen) and the transforms, one line each."""
    if data.splits[1] != "test" or data.splits[0] != "train":
        print(f"splits: {data.splits[0]}/ for training, {data.splits[1]}/ for evaluation", flush=True)
    policy = data.policy
    if policy is not None:
        aa = f" + {policy.auto_augment}" if policy.auto_augment else ""
        print(f"transforms: timm, {policy.image_size} px: RandomResizedCrop (area {policy.scale[0]:g}-"
              f"{policy.scale[1]:g}) + flip{aa} for training, shorter side to "
              f"{int(policy.image_size / policy.crop_pct)} + centre crop for evaluation (crop_pct {policy.crop_pct:g}, "
              f"{policy.interpolation}; mean/std and these from {policy.source})", flush=True)


def start_run(cfg: RunConfig) -> tuple[DataSplits, Path]:
    """Checks everything that can be checked before any work or any write — option values and combinations
    (:mod:`~recipes.plumbing.option_checks`), the device, the architectures and their ``--model-args``, the teacher file,
    hint layers, the ``--out`` folder (locked for this run; refused when another run holds it, or when it holds an
    earlier run, unless ``--resume`` with the same options and a checkpoint, or ``--overwrite``) — then seeds, loads
    the data (checked too), checks the teacher fits it and the target is reachable, on ``--resume`` that the inputs
    did not change (:mod:`~recipes.plumbing.inputs`), removes stale temporary files, drops an earlier run's results
    on ``--overwrite``, writes ``OUT/config.json`` and ``OUT/inputs.json``, from then on keeps the console in
    ``OUT/console.log`` (:mod:`~recipes.plumbing.console`) and adds this sitting's hardware to ``OUT/sittings.json``
    (:mod:`~recipes.plumbing.sittings`; a note when it differs from the last sitting's). Returns the data and the
    output folder.

    Under torchrun (``WORLD_SIZE`` > 1) it first joins the process group (gloo on the CPU, nccl on CUDA, each rank
    on GPU ``LOCAL_RANK``); every rank then runs the whole recipe — teacher training, pruning (deterministic: same
    weights, seed and calibration batches on every rank; DDP checks the shapes agree when it wraps the student) —
    and rank 0 alone prints and writes files. Rank 0 decodes the data first, the others then read its cache.

    Raises:
        ValueError, FileNotFoundError, FileFormatError, NonFiniteError, DataUnavailableError: one clear sentence
            each (:func:`run_main` prints it).
    """
    check_values(cfg)
    check_extras(cfg)
    option_checks.check_options(cfg)
    external_teacher.check_options(cfg)
    if cfg.sync_bn and resolve_device(cfg.device).type != "cuda":
        raise ValueError("--sync-bn needs CUDA (SyncBatchNorm trains on GPUs only); drop it on the CPU")
    info = distributed.init_distributed(resolve_device(cfg.device))
    if info.distributed:
        distributed.per_rank_batch(cfg.batch_size, info.world_size)
        cfg.device = str(distributed.local_device(resolve_device(cfg.device)))  # this rank's GPU
        cfg.progress = cfg.progress and info.is_main
    teacher = check_models(cfg)
    external = external_teacher.source(cfg)
    if external is not None:
        teacher = external_teacher.load(external)  # the weights read and checked now, the head once the data is known
    out = check_out(cfg)
    seed_everything(cfg.seed)
    hw = hardware(cfg)  # detected once: printed now, recorded as this sitting's once the folder is ready
    print(hw.describe(), flush=True)
    if info.distributed:
        print(f"torchrun: {info.world_size} processes, {cfg.batch_size // info.world_size} images each per global "
              f"batch of {cfg.batch_size}", flush=True)
    network = input_network(cfg, teacher)
    option_checks.check_transforms(cfg, use_timm_transforms(cfg.transforms, cfg.image_size, network, cfg.dataset))
    with distributed.main_first():
        data = load_data(cfg, network)
    _say_data(data)
    if data.mode_reason or data.mode == "stream":
        print(f"data mode: {data.mode}" + (f" ({data.mode_reason})" if data.mode_reason else ""), flush=True)
    if data.skipped:
        print(f"warning: left out {len(data.skipped)} image file(s) that could not be decoded (--skip-bad-images), "
              f"the first: {data.skipped[0]}", file=sys.stderr, flush=True)
    if external is not None:
        external_teacher.check_fits(external, teacher, data)
    elif teacher is not None:
        check_teacher_fits(cfg, teacher, data)
    option_checks.check_with_data(cfg, data, ensemble_members(teacher)[0] if teacher is not None else None)
    record = inputs.check_unchanged(cfg, data, out) if cfg.resume else None
    if distributed.is_main():
        prepare_out(cfg, out)
        save_config(cfg, out / "config.json")
        inputs.save(cfg, data, out, record)
        console.attach(out)  # the console so far, then each line (a program run only: run_main captures it)
        changed = hardware_changes(record_sitting(out, hw, cfg.resume))
        if changed:
            print(f"note: {changed}", flush=True)
    distributed.barrier()
    return data, out


@dataclass
class KDRun:
    """What a distillation recipe starts from: its loss, data, output folder and teacher (with its report). With
    several ``--teacher`` files or ``--teacher-tta`` the teacher is their :class:`kd.ensemble.TeacherEnsemble`, its
    report the ensemble's, and ``member_reports`` each teacher's own (single view): the blocks printed first."""

    loss: DistillLoss
    data: DataSplits
    out: Path
    teacher: nn.Module
    teacher_report: ModelReport
    member_reports: list[ModelReport] = field(default_factory=list)


def start_kd_run(cfg: KDConfig) -> KDRun:
    """The loss of ``cfg`` (checked first: a bad ``--kd-loss`` / ``--loss-args`` / ``--alpha`` stops the run before
    anything is written), :func:`start_run`, then the teacher (:func:`~recipes.plumbing.training.obtain_teacher`)."""
    loss = make_loss(cfg)
    data, out = start_run(cfg)
    teacher, report = obtain_teacher(cfg, data, out)
    return KDRun(loss, data, out, teacher, report, member_reports(cfg, teacher, data))


def finish_run(cfg: RunConfig, out: Path, reports: list[ModelReport], *, teacher: nn.Module | None = None,
               student: nn.Module | None = None, input_size: tuple[int, ...] | None = None,
               extra: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
               data: DataSplits | None = None) -> dict[str, Any]:
    """Prints the report blocks; with a teacher and a student, measures their latency (and exports ONNX with
    ``--export onnx``, a torch.export program with ``--export torch-export``, carrying ``meta``'s mean, std, classes
    and image size: :func:`~recipes.plumbing.deploy.deployment`); where thop's flops miss operations (attention
    matmuls) says so with Torch-Pruning's count beside them (report.json ``flops_check``); writes
    ``OUT/report.json`` with ``extra``, the run's sittings (``sittings``: where each start and ``--resume`` trained)
    and, given ``data``, how its images became inputs (:func:`describe_data`). Returns what deployment measured."""
    print_reports(reports)
    both = teacher is not None and student is not None
    missed = flops_check({"teacher": teacher, "student": student}, input_size) if both else {}
    print_flops_check(missed)
    deployed = deployment(cfg, teacher, student, input_size, out, meta) if both else {}
    if missed:
        deployed = {**deployed, "flops_check": missed}
    described = {"data": describe_data(data)} if data is not None else {}
    sittings = read_sittings(out)
    if sittings:
        described["sittings"] = sittings
        changed = hardware_changes(sittings)
        if changed:
            print(f"\nnote: {changed}", flush=True)
    write_report(out / "report.json", reports, config_record(cfg), {**(extra or {}), **described, **deployed})
    return deployed
