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
from recipes.plumbing.config import RECIPES, recipe_arch_args, resolve_recipe

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
    _check_reflect_padding(cfg)
    _check_mixup(cfg)
    _check_splits(cfg)
    if getattr(cfg, "data_mode", "auto") == "stream":
        _check_memory_only(cfg, "--data-mode stream")
    if getattr(cfg, "export", None) == "onnx":
        missing = missing_deploy_packages()
        if missing:
            raise ValueError(f"--export onnx needs the {', '.join(missing)} package(s), which are not installed; "
                             "install them with pip install -e \".[deploy]\" or drop --export")


def _check_reflect_padding(cfg: Any) -> None:
    """Reflect padding mirrors the image without repeating its edge, so it can add at most ``size - 1`` pixels:
    ``--pad`` must be below ``--image-size`` (the images are resized to it before any batch is cropped)."""
    pad, size = getattr(cfg, "pad", None), getattr(cfg, "image_size", None)
    if getattr(cfg, "pad_mode", "zeros") == "reflect" and pad is not None and size is not None and pad >= size:
        raise ValueError(f"--pad-mode reflect mirrors at most {size - 1} pixels of a {size}-pixel image, but --pad is "
                         f"{pad}; pass --pad {size - 1} or less, or --pad-mode zeros")


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


TIMM_ONLY = ("aa", "crop_pct", "scale")  # options of timm's transforms
TENSOR_AUGMENT = ("pad", "pad_mode", "flip")  # the tensor path's augmentation, replaced on the timm path


def check_transforms(cfg: Any, timm_path: bool) -> None:
    """The options of the path the images take (``timm_path``: :func:`kd.data.use_timm_transforms`): ``--aa``,
    ``--crop-pct`` and ``--scale`` act on timm's transforms only; ``--pad``, ``--pad-mode`` and ``--flip`` changed
    from ``--recipe``'s values act on the tensor path only; the timm path is a DataLoader path, so it takes neither
    ``--data-mode memory`` nor ``--teacher-cache``.

    Raises:
        ValueError: naming the options and the path.
    """
    if not timm_path:
        given = [_flag(f) for f in TIMM_ONLY if getattr(cfg, f, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set timm's transforms, which this run does not use (--transforms "
                             f"{cfg.transforms} at {cfg.image_size} px takes the tensor path); pass --transforms timm "
                             "or drop them")
        return
    preset = RECIPES.get(getattr(cfg, "recipe", "classic"), {})
    changed = [_flag(f) for f in TENSOR_AUGMENT if f in preset and getattr(cfg, f, None) != preset[f]]
    if changed:
        raise ValueError(f"{', '.join(changed)} set the tensor path's augmentation, but this run takes timm's "
                         "transforms (RandomResizedCrop, --scale, and a random flip); drop them or pass --transforms "
                         "tensor")
    if getattr(cfg, "data_mode", "auto") == "memory":
        raise ValueError("timm's transforms decode each image in DataLoader workers; --data-mode memory needs "
                         "--transforms tensor")
    if getattr(cfg, "teacher_cache", 0) > 0:
        raise ValueError("--teacher-cache replays crops of images held in memory; with timm's transforms pass "
                         "--transforms tensor or drop --teacher-cache")
    scale = getattr(cfg, "scale", None)
    if scale is not None and (len(scale) != 2 or scale[0] > scale[1]):
        raise ValueError(f"--scale takes MIN MAX with MIN <= MAX, got {' '.join(map(str, scale))}")


def _check_splits(cfg: Any) -> None:
    given = [_flag(f) for f in ("train_split", "val_split") if getattr(cfg, f, None) is not None]
    if given and getattr(cfg, "dataset", "") != "imagefolder":
        raise ValueError(f"{' and '.join(given)} name folders of --dataset imagefolder; --dataset {cfg.dataset} has "
                         "its own splits")


def _check_mixup(cfg: Any) -> None:
    """``--mixup-prob`` and ``--mixup-switch-prob`` act only with the mixing they tune; mixed batches pair each image
    with the mirrored batch, so the batch must be even."""
    on = [f for f in ("mixup", "cutmix") if getattr(cfg, f, 0.0) > 0]
    if getattr(cfg, "mixup_prob", None) is not None and not on:
        raise ValueError("--mixup-prob is the probability of mixing a batch; pass --mixup ALPHA or --cutmix ALPHA "
                         "with it (or drop it)")
    if getattr(cfg, "mixup_switch_prob", None) is not None and len(on) < 2:
        raise ValueError("--mixup-switch-prob picks between mixup and CutMix; pass both --mixup ALPHA and --cutmix "
                         "ALPHA with it (or drop it)")
    if on and cfg.batch_size % 2:
        raise ValueError(f"--{on[0]} pairs each image with the mirrored batch and needs an even --batch-size, got "
                         f"{cfg.batch_size}")


def _check_teacher_cache(cfg: Any) -> None:
    views = getattr(cfg, "teacher_cache", 0)
    if views == 0:
        return
    if getattr(cfg, "mixup", 0.0) > 0 or getattr(cfg, "cutmix", 0.0) > 0:
        # A cache holds the teacher's logits on K views fixed in advance; mixing pairs images and draws lambda anew
        # each step, so the cached logits would belong to images the student never sees (no function matching).
        raise ValueError("--teacher-cache stores the teacher's logits on unmixed views, but with --mixup/--cutmix the "
                         "teacher must score each freshly mixed image; drop --teacher-cache or the mixing")
    if getattr(cfg, "cutout", 0) > 0:
        raise ValueError("--teacher-cache stores the teacher's logits on uncut views, so the student would be scored "
                         "against images it never sees with --cutout; drop --teacher-cache or --cutout")
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
    _warn_costly_teacher(cfg, data, teacher)
    kind, target, flag = _target(cfg)
    if kind is None:
        _check_target_given(cfg, data)
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


COSTLY_FLOPS = 1e9  # a teacher above this per image takes hours per epoch on a CPU


def _warn_costly_teacher(cfg: Any, data: DataSplits, teacher: nn.Module | None) -> None:
    """One line on stdout when the teacher this run trains is this project's wide_cnn (it pools only twice, so its
    cost grows with the square of the image side) and costs more than :data:`COSTLY_FLOPS` per image."""
    if teacher is not None or getattr(cfg, "teacher_arch", None) != "wide_cnn" or data.input_size[-1] <= 32:
        return
    flops = profile(_untrained_teacher(cfg, data.num_classes), data.input_size).flops
    if flops > COSTLY_FLOPS:
        print(f"warning: the wide_cnn teacher costs {flops / 1e9:.1f} GFLOPs per {data.input_size[-1]}-px image (it "
              "pools twice); a network built for large images (--teacher-arch timm:resnet18) costs far less",
              flush=True)


def _check_target_given(cfg: Any, data: DataSplits) -> None:
    """A recipe whose default target is the lab's absolute flops (``cfg.lab_target``, a count of 32-px images) needs
    a target of its own at any other image size.

    Raises:
        ValueError: asking for ``--target-flops`` or a relative ``--budget``.
    """
    lab, size = getattr(cfg, "lab_target", None), data.input_size[-1]
    if lab is None or getattr(cfg, "ratio", None) is not None or size == 32:
        return
    raise ValueError(f"no pruning target at --image-size {size}: the lab's {lab:,} flops belong to 32-px images; pass "
                     "--target-flops N or a relative --budget FRACTION (of the teacher's flops, e.g. --budget 0.25)")


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
    args = recipe_arch_args(resolve_recipe(cfg), cfg.teacher_arch, json.loads(cfg.teacher_model_args))
    return create_model(cfg.teacher_arch, num_classes, **args)
