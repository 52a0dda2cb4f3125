"""Checks before any work: the models and model arguments the options name, a loaded teacher against the data,
hint layers, and the JSON of ``--model-args`` / ``--loss-args``. Each failure is one ValueError sentence naming the
option."""
from __future__ import annotations

import importlib.util
import json
from typing import Any

from torch import nn

from kd.data import DataSplits
from kd.ensemble import ensemble_members
from models import create_model
from models.registry import model_arguments
from recipes.plumbing.config import KDConfig, RunConfig
from recipes.plumbing.teachers import load_teachers


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
        _check_hint_teacher(cfg)
        if cfg.teacher is not None:
            loaded = load_teachers(list(cfg.teacher), cfg.teacher_tta)
            teacher = ensemble_members(loaded)[0]
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


def _check_hint_teacher(cfg: KDConfig) -> None:
    """A FitNet hint reads one teacher's features on the student's view: not an ensemble's, nor a mirrored one's."""
    hint = getattr(cfg, "hint_layer", None) or getattr(cfg, "hint_student_layer", None)
    if hint is not None and (len(cfg.teacher or ()) > 1 or cfg.teacher_tta):
        raise ValueError("a FitNet hint reads the features of one teacher on the student's view; drop the hint, or "
                         "pass one --teacher without --teacher-tta")


def _check_layer(model: nn.Module, name: str, flag: str, conv: bool = False) -> None:
    """``name`` is a layer of ``model`` (and holds a conv layer when ``conv``); else a ValueError listing some."""
    layers = dict(model.named_modules())
    if name not in layers or not name:
        shown = [n for n, m in layers.items() if n and len(list(m.children())) > 0][:12]
        arch = (getattr(model, "arch_spec", None) or {}).get("name", type(model).__name__)
        raise ValueError(f"{flag} {name!r} is not a layer of the {arch} model; its layers "
                         f"include {', '.join(shown)}")
    if conv and not any(isinstance(m, nn.Conv2d) for m in layers[name].modules()):
        raise ValueError(f"{flag} {name!r} has no conv layer whose channels pruning kept; pick a conv block such "
                         f"as {next((n for n, m in layers.items() if isinstance(m, nn.Conv2d)), '?')}")


def check_teacher_fits(cfg: KDConfig, teacher: nn.Module, data: DataSplits) -> None:
    """Each loaded ``--teacher`` (every member of an ensemble) was trained on this data: same number of classes, same
    class names and order (where its file records them) and the same image size.

    Raises:
        ValueError: naming the teacher file, what differs and what to pass.
    """
    for path, member in zip(cfg.teacher or ("",), ensemble_members(teacher)):
        _check_fits(cfg, path, member, data)


def _check_fits(cfg: KDConfig, path: str, teacher: nn.Module, data: DataSplits) -> None:
    classes = teacher.arch_spec["num_classes"]
    if classes != data.num_classes:
        raise ValueError(f"teacher {path!r} has {classes} classes but --dataset {cfg.dataset} has "
                         f"{data.num_classes}; train a teacher on this data set or pick the matching one")
    meta = getattr(teacher, "meta", {})
    if meta.get("classes") not in (None, data.classes):
        raise ValueError(f"teacher {path!r} was trained on classes {meta['classes'][:5]}... but the data has "
                         f"{data.classes[:5]}...; the class order must match")
    if meta.get("image_size") not in (None, data.input_size[-1]):
        raise ValueError(f"teacher {path!r} was trained on {meta['image_size']}-pixel images; pass "
                         f"--image-size {meta['image_size']}")


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


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package (which ``torch.utils.tensorboard`` needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def check_extras(cfg: RunConfig) -> None:
    """Options that need an optional package have it: ``--tensorboard`` needs ``tensorboard``.

    Raises:
        ValueError: naming the option and the package to install.
    """
    if cfg.tensorboard and not tensorboard_available():
        raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard); install it or drop "
                         "--tensorboard (metrics.csv and curves.png are written either way)")
