"""Recipe configuration: a dataclass per recipe, turned into an ``argparse`` parser field by field.

Each field's ``metadata`` may carry ``help`` and ``choices``; ``--flag`` names are the field names with dashes. The
shared fields live in :class:`RunConfig`, which recipe configs extend.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from kd.data import DATASETS
from kd.losses import LOSSES
from kd.optim import OPTIMIZERS, SCHEDULES
from kd.precision import PRECISIONS

C = TypeVar("C")


def arg(default: Any, help: str, choices: tuple | None = None) -> Any:  # noqa: A002 (mirrors argparse)
    """A dataclass field with its command-line help."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """The command-line words every recipe shares."""

    dataset: str = arg("cifar100", "data set: cifar10, cifar100 (torchvision download), imagefolder (--data-dir with "
                       "train/ and test/ or val/ of class folders) or synthetic", DATASETS)
    data_dir: str | None = arg(None, "where the data set is (imagefolder) or goes (cifar)")
    image_size: int = arg(32, "images are resized to this square size")
    limit_train: int | None = arg(None, "use a class-balanced subset of this many training images")
    limit_test: int | None = arg(None, "use a class-balanced subset of this many test images")
    cache_dir: str | None = arg(None, "where decoded images are cached (default $PTD_CACHE_DIR or "
                                "~/.cache/prune-then-distill)")
    epochs: int = arg(30, "training epochs")
    batch_size: int = arg(128, "images per batch")
    lr: float = arg(0.05, "peak learning rate")
    weight_decay: float = arg(5e-4, "weight decay")
    optimizer: str = arg("sgd", "sgd (Nesterov momentum 0.9) or adamw", OPTIMIZERS)
    schedule: str = arg("cosine", "per-step learning-rate schedule", SCHEDULES)
    out: str = arg("runs/run", "output folder: checkpoints, model file, report.json, config.json")
    seed: int = arg(0, "random seed (weights, shuffling, augmentation, subsets)")
    device: str = arg("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    resume: bool = arg(False, "continue an interrupted run from OUT/.../last.pt")
    precision: str = arg("auto", "auto: bf16 autocast where the hardware computes bf16 natively (CUDA, CPUs with AMX "
                         "or AVX512-BF16), fp32 elsewhere; the choice and the CPU are printed and kept in report.json",
                         PRECISIONS)
    channels_last: bool | None = arg(None, "channels-last memory format for models and batches (default: on CUDA and "
                                     "with bf16, where it is faster)")
    compile: bool = arg(False, "train through torch.compile (pays a compile time up front; see BENCHMARKS.md)")
    progress: bool = arg(True, "show progress bars")


def _base_type(tp: Any) -> Any:
    """``int | None`` → int; ``tuple[int, ...]`` → tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _base_type(next(a for a in typing.get_args(tp) if a is not type(None)))
    return origin or tp


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--option`` per field of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, help_, choices = "--" + f.name.replace("_", "-"), f.metadata.get("help", ""), f.metadata.get("choices")
        base = _base_type(hints[f.name])
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif base in (tuple, list):
            parser.add_argument(flag, nargs="+", type=int, default=f.default, help=help_)
        else:
            parser.add_argument(flag, type=base, default=f.default, choices=choices, help=help_)
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Parses ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``."""
    ns = build_parser(cls, description).parse_args(argv)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()}
    return cls(**values)


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the config as JSON next to the results."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch sees no GPU; use --device cpu")
    return device


@dataclass
class KDConfig(RunConfig):
    """Shared words of the distillation recipes: where the teacher comes from and the loss."""

    teacher: str | None = arg(None, "teacher model file (written by train_teacher.py); without it a teacher is "
                              "trained first on the same data")
    teacher_arch: str = arg("wide_cnn", "architecture of the teacher trained when --teacher is not given")
    teacher_model_args: str = arg("{}", "JSON of the teacher's architecture arguments")
    teacher_epochs: int = arg(30, "epochs of the teacher trained when --teacher is not given")
    kd_loss: str = arg("kd", "distillation loss (kd.losses.LOSSES): kd (Hinton), dkd (decoupled KD), dist (DIST), "
                       "kd-ls (logit-standardised KD), ce (no teacher)", tuple(LOSSES))
    loss_args: str = arg("{}", "JSON of the loss's arguments, e.g. '{\"beta\": 6}' for dkd")
    temperature: float | None = arg(None, "softening temperature T of kd / dkd / kd-ls (default: the loss's own)")
    alpha: float | None = arg(None, "kd's soft-target weight in [0, 1] (default: the loss's own); 0 = plain "
                              "cross-entropy, whatever --kd-loss says")
    teacher_cache: int = arg(0, "K > 0: run the teacher once over K augmented views of every training image, keep "
                             "the logits on disk (--cache-dir) and train from them, never running the teacher again")
