"""Checks before any work: the models and model arguments the options name, a loaded teacher against the data,
hint layers, and the JSON of ``--model-args`` / ``--loss-args``. Each failure is one ValueError sentence naming the
option."""
from __future__ import annotations

import importlib.util
import json
from typing import Any

from torch import nn

from kd.data import DataSplits
from models import create_model, load_model
from models.checkpoint import NotAModelFile
from models.registry import model_arguments
from recipes.plumbing.config import KDConfig, RunConfig


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
            teacher = loaded = load_teacher_file(cfg.teacher)
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


def load_teacher_file(path: str) -> nn.Module:
    """``--teacher FILE`` (:func:`models.load_model`); bare weights (a safetensors file, a state dict) are pointed at
    ``--teacher-arch NAME --teacher-weights FILE``.

    Raises:
        ValueError: for bare weights; what load_model raises otherwise.
    """
    try:
        return load_model(path)
    except NotAModelFile as err:
        what = {"safetensors": "a safetensors file", "state_dict": "a state dict"}.get(err.kind)
        if what is None:
            raise
        raise ValueError(f"--teacher {path!r} is {what}: weights without an architecture; pass --teacher-arch NAME "
                         f"--teacher-weights {path} (NAME: timm:NAME, a registered name or module:qualname)") from None


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
