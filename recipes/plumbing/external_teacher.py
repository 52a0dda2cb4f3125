"""A teacher from outside the project: ``--teacher-arch NAME --teacher-weights FILE`` or ``--teacher-arch timm:NAME
--pretrained`` (a distillation recipe), ``--arch NAME --initial-checkpoint FILE`` or ``--pretrained`` (train_teacher.py,
transfer learning). :func:`models.load_network` does the loading; this module names the options in its errors,
refuses combinations that would leave an option ignored, and, with ``--new-head``, fine-tunes the new classifier's
network before it teaches.

Option words (the fields of a recipe config, read with ``getattr``): the architecture ``teacher_arch`` / ``arch``, the
file ``teacher_weights`` / ``initial_checkpoint``, its arguments ``teacher_model_args`` / ``model_args``, ``pretrained``
and ``new_head``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from kd.data import DataSplits
from models import HeadMismatchError, WeightsUnavailableError, load_network
from models.checkpoint import NotAModelFile
from recipes.plumbing.checks import model_args
from recipes.plumbing.config import derived_options

# timm.create_model arguments that load weights themselves: given in --model-args they would bypass (or silently
# miss) the weight options, and a path would be stored in every student built from the teacher
WEIGHT_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                    "pretrained_strict")


@dataclass(frozen=True)
class Source:
    """Where an outside network comes from, with the names of the options that said so."""

    arch: str
    weights: str | None
    pretrained: bool
    new_head: bool
    args_text: str
    arch_flag: str
    weights_flag: str
    args_flag: str


def source(cfg: Any) -> Source | None:
    """The outside network ``cfg`` asks for, or None (a teacher trained here, or ``--teacher FILE``)."""
    if hasattr(cfg, "teacher_weights"):
        s = Source(cfg.teacher_arch, cfg.teacher_weights, cfg.pretrained, cfg.new_head, cfg.teacher_model_args,
                   "--teacher-arch", "--teacher-weights", "--teacher-model-args")
    elif hasattr(cfg, "initial_checkpoint"):
        s = Source(cfg.arch, cfg.initial_checkpoint, cfg.pretrained, cfg.new_head, cfg.model_args, "--arch",
                   "--initial-checkpoint", "--model-args")
    else:
        return None
    return s if s.weights is not None or s.pretrained else None


def check_options(cfg: Any) -> None:
    """Combinations of the teacher options that cannot all take effect, before any work.

    Raises:
        ValueError: naming the options.
    """
    weights_flag = "--teacher-weights" if hasattr(cfg, "teacher_weights") else "--initial-checkpoint"
    for field, args_flag in (("teacher_model_args", "--teacher-model-args"), ("model_args", "--model-args")):
        given = sorted(set(model_args(getattr(cfg, field, "{}"), args_flag)) & set(WEIGHT_ARGUMENTS))
        if given:
            where = weights_flag if field == "teacher_model_args" or hasattr(cfg, "initial_checkpoint") else \
                "a model file"
            raise ValueError(f"{args_flag} {', '.join(given)}: weights are not architecture arguments; pass the file "
                             f"with {where} (or timm's own weights with --pretrained)")
    teacher = getattr(cfg, "teacher", None)
    if teacher is not None and getattr(cfg, "train_teacher", False):
        raise ValueError("--train-teacher trains a teacher here, --teacher loads one: pass only one of them")
    weights = getattr(cfg, "teacher_weights", getattr(cfg, "initial_checkpoint", None))
    pretrained = getattr(cfg, "pretrained", False)
    if weights is not None and pretrained:
        raise ValueError(f"{weights_flag} and --pretrained both give the weights: pass only one of them")
    if teacher is not None and (weights is not None or pretrained):
        which = weights_flag if weights is not None else "--pretrained"
        raise ValueError(f"--teacher loads a model file of this project, {which} a network of --teacher-arch: pass "
                         "only one of them")
    if (weights is not None or pretrained) and getattr(cfg, "train_teacher", False):
        raise ValueError(f"--train-teacher trains a new teacher, but {weights_flag if weights else '--pretrained'} "
                         "loads one; to fine-tune it for this data's classes pass --new-head instead")
    arch, arch_flag = getattr(cfg, "teacher_arch", getattr(cfg, "arch", "")), \
        "--teacher-arch" if hasattr(cfg, "teacher_arch") else "--arch"
    if pretrained and not arch.startswith("timm:"):
        raise ValueError(f"--pretrained takes timm's weights: it needs {arch_flag} timm:NAME, got {arch!r}")
    if getattr(cfg, "new_head", False) and weights is None and not pretrained:
        raise ValueError(f"--new-head replaces the classifier of a loaded network: it needs {weights_flag} FILE or "
                         "--pretrained")
    loaded = teacher is not None or ((weights is not None or pretrained) and not getattr(cfg, "new_head", False))
    if hasattr(cfg, "teacher_epochs") and loaded and "teacher_epochs" not in derived_options(cfg) \
            and not getattr(cfg, "train_teacher", False):
        raise ValueError("--teacher-epochs is how long a teacher trains here, but this run loads its teacher and "
                         "trains none (with --teacher-weights or --pretrained, --new-head fine-tunes it first)")


def load(src: Source, num_classes: int | None = None) -> nn.Module:
    """The outside network, with every failure as one ValueError naming the options.

    Args:
        src: :func:`source`.
        num_classes: the data's classes: a head of other classes is refused unless ``--new-head``, which replaces it;
            None leaves the head as the weights have it (the check before the data is read).
    """
    args = model_args(src.args_text, src.args_flag)
    try:
        return load_network(src.arch, src.weights, pretrained=src.pretrained, num_classes=num_classes,
                            new_head=src.new_head, model_args=args)
    except HeadMismatchError as err:
        raise ValueError(f"{src.weights_flag if src.weights else '--pretrained'}: {err}; pass --new-head to replace "
                         "the classifier (the network is then fine-tuned on this data first), or weights trained on "
                         "these classes") from None
    except WeightsUnavailableError as err:
        raise ValueError(f"--pretrained: {err} ({src.weights_flag} FILE)") from None
    except NotAModelFile as err:
        if err.kind != "model_file":
            raise
        raise ValueError(f"{src.weights_flag} {src.weights!r} is a model file of this project (architecture, widths "
                         "and weights); pass it as --teacher FILE") from None


def prepare(src: Source, data: DataSplits) -> nn.Module:
    """The outside network for ``data``: its head replaced with ``--new-head`` (which the caller then fine-tunes),
    and ``data``'s normalisation set to that of timm's pretrained weights with ``--pretrained``."""
    teacher = load(src, data.num_classes)
    norm = normalisation(teacher) if src.pretrained else None
    if norm is not None:
        data.mean, data.std = norm
    return teacher


def check_fits(src: Source, teacher: nn.Module, data: DataSplits) -> None:
    """The loaded network's head gives the data's classes, or ``--new-head`` will replace it.

    Raises:
        ValueError: naming the options.
    """
    classes = teacher.arch_spec["num_classes"]
    if classes != data.num_classes and not src.new_head:
        raise ValueError(f"{src.weights_flag if src.weights else '--pretrained'}: {src.arch}'s classifier gives "
                         f"{classes} classes but --dataset has {data.num_classes}; pass --new-head to replace the "
                         "classifier (the network is then fine-tuned on this data first), or weights trained on "
                         "these classes")


def normalisation(teacher: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """timm's mean and std of pretrained weights (the inputs they were trained on), or None."""
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    return (tuple(mean), tuple(std)) if mean and std else None
