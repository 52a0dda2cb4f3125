"""Checks that need more than one option's range: combinations of options, optional packages a run needs at its end,
and targets the teacher cannot reach. :func:`recipes.plumbing.run.start_run` runs them before ``config.json`` or
any other file is written, so a mistake costs seconds, not a training run, and the corrected rerun is not refused as
"an earlier run".

The checks read the fields a recipe's config has (``getattr`` with a default): one place for every recipe.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any

import torch
from torch import nn

from kd.data import DataSplits
from models import create_model, profile
from models.export import missing_deploy_packages
from pruning.prune import smallest_reachable
from recipes.plumbing.config import recipe_arch_args

TARGETS = ("target_flops", "target_params", "ratio")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(cfg: Any) -> None:
    """Option combinations and what a run will need later, checked without data or models.

    Raises:
        ValueError: naming the options and what is accepted.
    """
    given = [_flag(t) for t in TARGETS if getattr(cfg, t, None) is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} are alternative targets; pass only one of them")
    sizes = getattr(cfg, "latency_batch_sizes", None)
    if sizes is not None and (not sizes or any(s < 1 for s in sizes)):
        raise ValueError(f"--latency-batch-sizes must be whole numbers >= 1, got {' '.join(map(str, sizes))}")
    _check_teacher_cache(cfg)
    if getattr(cfg, "data_mode", "auto") == "stream":
        _check_memory_only(cfg, "--data-mode stream")
    if getattr(cfg, "export", None) == "onnx":
        missing = missing_deploy_packages()
        if missing:
            raise ValueError(f"--export onnx needs the {', '.join(missing)} package(s), which are not installed; "
                             "install them with pip install -e \".[deploy]\" or drop --export")


def _check_memory_only(cfg: Any, why: str) -> None:
    """``--flip alternating``, ``--pad-mode reflect`` and ``--init whiten-dirac`` read the images in memory;
    ``why`` says why they are not."""
    if getattr(cfg, "flip", "random") == "alternating":
        raise ValueError(f"--flip alternating needs the training images in memory, but {why}; pass --data-mode "
                         "memory or --flip random")
    if getattr(cfg, "pad_mode", "zeros") == "reflect":
        raise ValueError(f"--pad-mode reflect needs the training images in memory, but {why}; pass --data-mode "
                         "memory or --pad-mode zeros")
    if getattr(cfg, "init", "default") == "whiten-dirac":
        raise ValueError(f"--init whiten-dirac reads training images from memory, but {why}; pass --data-mode memory "
                         "or --init default")


def check_export(cfg: Any) -> None:
    """The deploy packages ``recipes/export.py`` needs, before the model file is read or anything written (its option
    ranges are the fields' limits, checked by ``check_values``).

    Raises:
        ValueError: naming the missing packages.
    """
    missing = missing_deploy_packages()
    if missing:
        raise ValueError(f"ONNX export needs the {', '.join(missing)} package(s), which are not installed; install "
                         "them with pip install -e \".[deploy]\"")


def _check_teacher_cache(cfg: Any) -> None:
    views = getattr(cfg, "teacher_cache", 0)
    if views == 0:
        return
    if getattr(cfg, "flip", "random") == "alternating":
        raise ValueError("--teacher-cache replays the random flips it stored with the teacher's logits, so it cannot "
                         "serve --flip alternating; pass --flip random (or drop --teacher-cache)")
    if getattr(cfg, "pad_mode", "zeros") != "zeros":
        raise ValueError("--teacher-cache replays zero-padded crops stored with the teacher's logits, so it cannot "
                         "serve --pad-mode reflect; pass --pad-mode zeros (or drop --teacher-cache)")
    if getattr(cfg, "data_mode", "auto") == "stream":
        raise ValueError("--teacher-cache needs the training images in memory; it does not work with --data-mode "
                         "stream (drop one of them)")
    hint = getattr(cfg, "hint_layer", None) or getattr(cfg, "hint_student_layer", None)
    if hint is not None:
        raise ValueError("--teacher-cache keeps only the teacher's logits; a FitNet hint needs its features (drop "
                         "--teacher-cache or the hint)")


def check_with_data(cfg: Any, data: DataSplits, teacher: nn.Module | None) -> None:
    """What the options ask of this data and this teacher: ``--teacher-cache`` needs memory mode (``auto`` may
    have chosen stream); a FLOPs or parameter target (``--target-flops``, ``--target-params``, ``--budget``) must
    be reachable by pruning the teacher (``teacher``, or the one this run will train when None).

    Raises:
        ValueError: naming the option, the value and what is reachable.
    """
    if getattr(cfg, "teacher_cache", 0) > 0 and data.mode == "stream":
        raise ValueError(f"--teacher-cache needs the training images in memory, but --data-mode {cfg.data_mode} "
                         f"streams them ({data.mode_reason}); pass --data-mode memory or drop --teacher-cache")
    if data.mode == "stream":
        _check_memory_only(cfg, f"--data-mode {cfg.data_mode} streams them ({data.mode_reason})")
    _warn_missing_classes(cfg, data)
    kind, target, flag = _target(cfg)
    if kind is None:
        return
    model = teacher if teacher is not None else _untrained_teacher(cfg, data.num_classes)
    floor = getattr(smallest_reachable(model, torch.zeros(data.input_size), round_to=getattr(cfg, "round_to", None)),
                    kind)
    asked, least = f"{flag} {target:,}", f"{floor:,}"
    if flag == "--budget":
        flops = profile(model, data.input_size).flops
        target = int(cfg.budget * flops)
        asked = f"--budget {cfg.budget:g} ({target:,} {kind})"
        least = f"--budget {math.ceil(floor / flops * 1e4) / 1e4:g}"
    if target < floor:
        raise ValueError(f"{asked} is below the smallest reachable value: pruning every layer of the teacher down "
                         f"to its minimum leaves {floor:,} {kind}; ask for at least {least}")


def _warn_missing_classes(cfg: Any, data: DataSplits) -> None:
    """A warning for each split in which a limit (``--limit-train``, ``--limit-test``) left classes without images:
    training on 5 of 10 classes is rarely what was meant."""
    for split, flag in ((data.train, "--limit-train"), (data.test, "--limit-test")):
        present = int(torch.unique(split.labels).numel())
        if present < data.num_classes:
            warnings.warn(f"{flag} {len(split)} leaves {data.num_classes - present} of the {data.num_classes} classes "
                          f"without {'training' if split is data.train else 'test'} images; pass at least "
                          f"{data.num_classes} to keep every class", stacklevel=2)


def _target(cfg: Any) -> tuple[str | None, int, str]:
    """(flops | params | None, target, the option that set it)."""
    if getattr(cfg, "target_params", None) is not None:
        return "params", cfg.target_params, "--target-params"
    if getattr(cfg, "target_flops", None) is not None:
        return "flops", cfg.target_flops, "--target-flops"
    if getattr(cfg, "budget", None) is not None and getattr(cfg, "ratio", None) is None:
        return "flops", 0, "--budget"
    return None, 0, ""


def _untrained_teacher(cfg: Any, num_classes: int) -> nn.Module:
    """The teacher a run without ``--teacher`` trains: same architecture and widths, so the same FLOPs (its
    ``--teacher-model-args`` were checked by :func:`recipes.plumbing.checks.check_models` already)."""
    args = recipe_arch_args(cfg.recipe, cfg.teacher_arch, json.loads(cfg.teacher_model_args))
    return create_model(cfg.teacher_arch, num_classes, **args)
