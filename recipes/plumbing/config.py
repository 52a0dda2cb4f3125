"""Recipe configuration: a dataclass per recipe, turned into an ``argparse`` parser field by field.

Each field's ``metadata`` may carry ``help`` and ``choices``; ``--flag`` names are the field names with dashes. The
shared fields live in :class:`RunConfig`, which recipe configs extend.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from kd.data import DATA_MODES, DATASETS
from kd.data.batches import FLIPS, PAD_MODES
from kd.losses import LOSSES
from kd.optim import OPTIMIZERS, SCHEDULES
from kd.precision import PRECISIONS
from kd.tta import TTA_MODES
from recipes.plumbing.report import json_ready, write_json

C = TypeVar("C")


@dataclass(frozen=True)
class Limit:
    """The values a numeric option accepts: those for which ``test`` is true, described by ``accepted``."""

    test: Callable[[Any], bool]
    accepted: str

    def check(self, flag: str, value: Any) -> None:
        """Raises ValueError ``--flag must be <accepted>, got <value>`` when ``value`` is not accepted."""
        if not self.test(value):
            raise ValueError(f"{flag} must be {self.accepted}, got {value}")


def _whole(minimum: int) -> Limit:
    return Limit(lambda v: v == int(v) and v >= minimum, f"a whole number >= {minimum}")


POSITIVE = Limit(lambda v: v > 0, "> 0")
NON_NEGATIVE = Limit(lambda v: v >= 0, ">= 0")
COUNT = _whole(1)  # epochs, batch sizes, image counts, targets
NON_NEGATIVE_COUNT = _whole(0)
ANY_NUMBER = Limit(lambda v: True, "a number")  # e.g. --seed: every finite value is accepted
BUDGET = Limit(lambda v: 0.0 < v <= 1.0, "in (0, 1] (a fraction of the teacher's FLOPs)")
VAL_SIZE = Limit(lambda v: 0.0 < v < 1.0, "in (0, 1) (a fraction of the training images)")
FRACTION = Limit(lambda v: 0.0 <= v < 1.0, "in [0, 1)")

INITS = ("default", "whiten-dirac")

# The training recipes: defaults of the options marked "from --recipe". classic is the recipe every measurement before
# the fast one used; fast bundles airbench94's pieces (KellerJordan/cifar10-airbench), its numbers translated to a
# batch-mean loss: lr 11.5 per 1024 summed examples with momentum 0.85 is 11.5 / (1 + 1/(1 − 0.85)) = 1.5 on the mean
# loss at batch 1024, and its decoupled decay 0.0153 per 1024 is weight_decay = 0.0153 / 11.5 = 1.33e-3 at that rate.
# BENCHMARKS.md ("How fast does a teacher reach 93 %?") measures both on CIFAR-10. Since issue 28 fast also has
# airbench's lookahead (instead of the EMA), BatchNorm momentum 0.4 and eps 1e-12, the stem bias held after 3 epochs,
# reflect padding, and fast_cnn's MaxPool2d(3) head without a classifier bias: 89.69 % / 90.78 % with TTA (2 seeds)
# against 88.87 % / 89.07 % in 10 epochs on the CPU (BENCHMARKS.md, "airbench94's pieces").
RECIPES: dict[str, dict[str, Any]] = {
    "classic": {"epochs": 30, "teacher_epochs": 30, "batch_size": 128, "lr": 0.05, "finetune_lr": 0.01,
                "weight_decay": 5e-4, "schedule": "cosine", "momentum": 0.9, "warmup": 0.23,
                "decay_norm_and_bias": True, "bn_bias_lr_scale": 1.0, "bn_weight_lr_scale": 1.0,
                "label_smoothing": 0.0, "ema": 0.0, "tta": "none", "pad": 4, "pad_mode": "zeros", "flip": "random",
                "init": "default", "kd_loss": "kd-ls", "lookahead": False, "bn_momentum": 0.0,
                "stem_bias_epochs": 0},
    "fast": {"epochs": 10, "teacher_epochs": 10, "batch_size": 1024, "lr_batch": 1024, "lr": 1.5,
             "finetune_lr": 0.3, "weight_decay": 0.0153 / 11.5, "schedule": "triangular", "momentum": 0.85,
             "warmup": 0.23, "decay_norm_and_bias": False, "bn_bias_lr_scale": 64.0, "bn_weight_lr_scale": 0.0,
             "label_smoothing": 0.2, "ema": 0.0, "tta": "flip-translate", "pad": 2, "pad_mode": "reflect",
             "flip": "alternating", "init": "whiten-dirac", "kd_loss": "kd", "lookahead": True, "bn_momentum": 0.4,
             "stem_bias_epochs": 3,
             "arch_args": {"fast_cnn": {"bn_eps": 1e-12, "head_pool_mode": "max3", "classifier_bias": False}}},
}
# "arch_args": architecture arguments a recipe gives the networks it names when a run builds one (--model-args and
# --teacher-model-args override them key by key): see recipe_arch_args.
# "kd_loss" is prune_then_distill's fine-tuning loss (its field defaults to None; distill_only's to kd)
_BATCH_SCALED = frozenset({"lr", "finetune_lr"})  # rates a recipe with "lr_batch" gives per lr_batch images


def recipe_arch_args(recipe: str, arch: str, given: dict[str, Any]) -> dict[str, Any]:
    """The architecture arguments of a model ``recipe`` builds as ``arch``: the recipe's own for that network (e.g.
    the fast recipe's airbench head for ``fast_cnn``), overridden key by key by ``given`` (``--model-args``)."""
    return {**RECIPES[recipe].get("arch_args", {}).get(arch, {}), **given}


def arg(default: Any, help: str, choices: tuple | None = None, limit: Limit | None = None) -> Any:  # noqa: A002
    """A dataclass field with its command-line help, its choices and, for a number, the :class:`Limit` of the values
    it accepts (checked by :func:`check_values` before any work; every numeric option of a recipe declares one)."""
    return field(default=default, metadata={"help": help, "choices": choices, "limit": limit})


@dataclass
class RunConfig:
    """The command-line words every recipe shares."""

    dataset: str = arg("cifar100", "data set: cifar10, cifar100 (torchvision download), imagefolder (--data-dir with "
                       "train/ and test/ or val/ of class folders) or synthetic", DATASETS)
    data_dir: str | None = arg(None, "where the data set is (imagefolder) or goes (cifar)")
    image_size: int = arg(32, "images are resized to this square size",
                          limit=Limit(lambda v: v >= 8, ">= 8 (pixels)"))
    limit_train: int | None = arg(None, "use a class-balanced subset of this many training images", limit=COUNT)
    limit_test: int | None = arg(None, "use a class-balanced subset of this many test images", limit=COUNT)
    cache_dir: str | None = arg(None, "where decoded images are cached (default $PTD_CACHE_DIR or "
                                "~/.cache/prune-then-distill)")
    recipe: str = arg("classic", "training recipe: the defaults of every option below marked 'from --recipe'. "
                      "classic: SGD 0.9, lr 0.05, batch 128, cosine, 30 epochs, pad-4 crop + random flip; fast: "
                      "airbench94's pieces (batch 1024, lr 1.5 scaled to the batch, Nesterov 0.85, triangular "
                      "schedule, no decay on BatchNorm/biases, BatchNorm-bias lr x64, label smoothing 0.2, pad-2 "
                      "reflect crop + alternating flip, lookahead, BatchNorm momentum 0.4, stem bias held after 3 "
                      "epochs, whitening + identity init of new models, 10 epochs); "
                      "see RECIPES in recipes/plumbing/config.py and BENCHMARKS.md", tuple(RECIPES))
    epochs: int | None = arg(None, "training epochs (default: from --recipe)", limit=COUNT)
    batch_size: int | None = arg(None, "images per batch (default: from --recipe)", limit=COUNT)
    lr: float | None = arg(None, "peak learning rate (default: from --recipe; fast: 1.5 x batch / 1024)",
                           limit=POSITIVE)
    weight_decay: float | None = arg(None, "weight decay (default: from --recipe)", limit=NON_NEGATIVE)
    optimizer: str = arg("sgd", "sgd (Nesterov momentum) or adamw", OPTIMIZERS)
    schedule: str | None = arg(None, "per-step learning-rate schedule (default: from --recipe)", SCHEDULES)
    momentum: float | None = arg(None, "SGD's Nesterov momentum (default: from --recipe)", limit=FRACTION)
    warmup: float | None = arg(None, "fraction of the steps the triangular schedule warms up over (default: from "
                               "--recipe)", limit=FRACTION)
    decay_norm_and_bias: bool | None = arg(None, "weight decay on BatchNorm parameters and biases too (default: from "
                                           "--recipe; fast: no)")
    bn_bias_lr_scale: float | None = arg(None, "learning-rate multiplier of BatchNorm biases (default: from "
                                         "--recipe)", limit=NON_NEGATIVE)
    bn_weight_lr_scale: float | None = arg(None, "learning-rate multiplier of BatchNorm scales; 0 keeps them at 1 "
                                           "(default: from --recipe)", limit=NON_NEGATIVE)
    label_smoothing: float | None = arg(None, "label smoothing of the cross-entropy part of the loss (default: from "
                                        "--recipe)", limit=FRACTION)
    ema: float | None = arg(None, "decay of an exponential moving average of the weights, evaluated and saved as the "
                            "model; 0 = off (default: from --recipe)", limit=FRACTION)
    tta: str | None = arg(None, "test-time augmentation of a trained teacher's extra score, reported beside the "
                          "single-view accuracy, which stays the reported figure (default: from --recipe)", TTA_MODES)
    pad: int | None = arg(None, "random-crop padding in pixels; 0 = no crop and no flip (default: from --recipe)",
                          limit=NON_NEGATIVE_COUNT)
    pad_mode: str | None = arg(None, "what the crop's border shows: zeros (black) or reflect (the image mirrored "
                               "at its edge, as airbench) (default: from --recipe)", PAD_MODES)
    flip: str | None = arg(None, "random: each image flipped with probability 1/2 each epoch; alternating: one "
                           "random flip per image, all mirrored every other epoch (default: from --recipe)", FLIPS)
    lookahead: bool | None = arg(None, "airbench's lookahead: every 5 steps the weights are pulled to a slow average "
                                 "(decay 0.95^5 (t/T)^3), and once more at the end (default: from --recipe)")
    bn_momentum: float | None = arg(None, "running-statistics momentum of every BatchNorm layer (PyTorch's "
                                    "convention; airbench 0.4); 0 = the layers' own (default: from --recipe)",
                                    limit=FRACTION)
    stem_bias_epochs: int | None = arg(None, "the first conv's bias (the whitening stem's) trains in this many first "
                                       "epochs, then is held; 0 = throughout (default: from --recipe)",
                                       limit=NON_NEGATIVE_COUNT)
    init: str | None = arg(None, "initialisation of models built here: default (PyTorch's), or whiten-dirac (first "
                           "conv whitens 5,000 training images' patches, identity init of the other convs; "
                           "models.init) (default: from --recipe)", INITS)
    out: str = arg("runs/run", "output folder: checkpoints, model file, report.json, config.json")
    seed: int = arg(0, "random seed (weights, shuffling, augmentation, subsets)", limit=ANY_NUMBER)
    device: str = arg("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    resume: bool = arg(False, "continue an interrupted run from OUT/.../last.pt (with the options it was started "
                       "with)")
    overwrite: bool = arg(False, "replace the earlier run in a non-empty OUT (without --resume or --overwrite such "
                          "an OUT is refused)")
    skip_bad_images: bool = arg(False, "leave out image files that cannot be decoded (counted once) instead of "
                                "stopping at the first")
    precision: str = arg("auto", "auto: bf16 autocast where the hardware computes bf16 natively (CUDA, CPUs with AMX "
                         "or AVX512-BF16), fp32 elsewhere; the choice and the CPU are printed and kept in report.json",
                         PRECISIONS)
    channels_last: bool | None = arg(None, "channels-last memory format for models and batches (default: on CUDA and "
                                     "with bf16, where it is faster)")
    compile: bool = arg(False, "train through torch.compile (pays a compile time up front; see BENCHMARKS.md)")
    tensorboard: bool = arg(False, "also write TensorBoard logs (OUT/<stage>/tb; needs the tensorboard package); "
                            "metrics.csv and curves.png are always written")
    progress: bool = arg(True, "show progress bars")
    data_mode: str = arg("auto", "memory: decode the images once into uint8 tensors in RAM (fastest); stream: read "
                         "and decode them in DataLoader workers each epoch (data sets larger than RAM); auto: memory "
                         "when the decoded images (N·3·H·W bytes) fit in --memory-budget, else stream (imagefolder "
                         "only; the choice is printed)", DATA_MODES)
    memory_budget: float | None = arg(None, "GiB the decoded images may take in memory mode (default: half the "
                                      "available memory)", limit=Limit(lambda v: v > 0, "> 0 (GiB)"))
    workers: int = arg(4, "DataLoader worker processes per training process in stream mode",
                       limit=NON_NEGATIVE_COUNT)
    sync_bn: bool = arg(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA "
                        "only) instead of each process's slice")


def apply_recipe(cfg: Any) -> Any:
    """Fills every option of ``cfg`` left at None that ``RECIPES[cfg.recipe]`` sets. A learning rate given per
    ``lr_batch`` images (the fast recipe's) is scaled linearly to ``--batch-size`` unless the rate was given."""
    preset = RECIPES[cfg.recipe]
    names = {f.name for f in dataclasses.fields(cfg)}
    if "batch_size" in names and cfg.batch_size is None:
        cfg.batch_size = preset["batch_size"]
    scale = cfg.batch_size / preset["lr_batch"] if "lr_batch" in preset else 1.0
    for name, value in preset.items():
        if name in names and getattr(cfg, name) is None:
            setattr(cfg, name, value * scale if name in _BATCH_SCALED else value)
    return cfg


def _base_type(tp: Any) -> Any:
    """``int | None`` → int; ``tuple[int, ...]`` → tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _base_type(next(a for a in typing.get_args(tp) if a is not type(None)))
    return origin or tp


def _element_type(tp: Any) -> type:
    """``tuple[float, ...]`` → float, ``list[str] | None`` → str: what each word of a list option is parsed as."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _element_type(next(a for a in typing.get_args(tp) if a is not type(None)))
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    return args[0] if args else str


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` only where the help does not already say what the default is, and never ``None``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the recipes' form: one line, ``error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        said_elsewhere = os.environ.get("LOCAL_RANK", "0") != "0"  # under torchrun: local rank 0 says it
        self.exit(2, None if said_elsewhere else f"error: {message} (--help lists the options)\n")


CONFIG_HELP = ("read the options from the config.json (or report.json) of an earlier run; options given on the command "
               "line override it (--resume and --overwrite are never read from it)")


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--option`` per field of the dataclass ``cls``, and ``--config FILE``."""
    parser = _Parser(description=description, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, help_, choices = "--" + f.name.replace("_", "-"), f.metadata.get("help", ""), f.metadata.get("choices")
        base = _base_type(hints[f.name])
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif base in (tuple, list):
            parser.add_argument(flag, nargs="+", type=_element_type(hints[f.name]), default=f.default,
                                choices=choices, help=help_)
        else:
            parser.add_argument(flag, type=base, default=f.default, choices=choices, help=help_)
    parser.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Parses ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``. With ``--config FILE``
    the file's options (:func:`read_config`) replace the defaults, and the command line overrides both.

    Raises:
        ValueError: an unreadable config file, or one whose options do not fit ``cls``.
    """
    first = _Parser(add_help=False)
    first.add_argument("--config", default=None)
    known, _ = first.parse_known_args(argv)
    parser = build_parser(cls, description)
    if known.config is not None:
        parser.set_defaults(**read_config(cls, known.config))
    ns = parser.parse_args(argv)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items() if k != "config"}
    cfg = cls(**values)
    return apply_recipe(cfg) if hasattr(cfg, "recipe") else cfg


# Options of an earlier run that a re-run does not take from its config file: they say what to do with that run's
# folder, not what to compute.
CONFIG_IGNORED = frozenset({"resume", "overwrite"})


def read_config(cls: type, path: str | Path) -> dict[str, Any]:
    """The options of ``cls`` that the JSON file ``path`` holds: a ``config.json`` written by an earlier run, or the
    ``"config"`` object of its ``report.json``; each value checked against the field's type and choices, lists made
    tuples, except :data:`CONFIG_IGNORED`.

    Raises:
        ValueError: naming the file and what is wrong with it (missing, not JSON, an option ``cls`` lacks, a value
            of the wrong type or not among the choices).
    """
    where = f"--config {str(path)!r}"
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist; pass the config.json an earlier run wrote in its --out") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} is not valid JSON ({getattr(err, 'msg', err)})") from None
    if isinstance(body, dict) and isinstance(body.get("config"), dict):
        body = body["config"]  # a report.json
    if not isinstance(body, dict):
        raise ValueError(f"{where} does not hold an object of options")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ValueError(f"{where} has options this recipe does not take ({', '.join(unknown)}); is it another "
                         "recipe's config?")
    values = {}
    for name, value in body.items():
        if name not in CONFIG_IGNORED:
            values[name] = _config_value(name, value, hints[name], fields[name].metadata.get("choices"), where)
    return values


def _config_value(name: str, value: Any, hint: Any, choices: tuple | None, where: str) -> Any:
    """``value`` of option ``name`` from a config file, checked and converted to the field's type."""
    if value is None:
        return None
    base, flag = _base_type(hint), "--" + name.replace("_", "-")
    if base in (tuple, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: {flag} must be a list, got {value!r}")
        items = [_config_value(name, v, _element_type(hint), choices, where) for v in value]
        return tuple(items) if base is tuple else items
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {flag} must be {getattr(base, '__name__', base)}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: {flag} {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the config as JSON next to the results (atomically)."""
    write_json(path, dataclasses.asdict(cfg))


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r} is not a device torch knows; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch sees no GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return device


# --------------------------------------------------------------------------------------------- checking values

def check_values(cfg: Any) -> None:
    """Checks the values of ``cfg`` before any work: every number finite and within the :class:`Limit` its field
    declares (each element of a list option; None means "not given" and passes).

    Raises:
        ValueError: naming the first bad option, its value and what is accepted.
    """
    for f in dataclasses.fields(cfg):
        value, limit = getattr(cfg, f.name), f.metadata.get("limit")
        values = value if isinstance(value, (tuple, list)) else (value,)
        flag = "--" + f.name.replace("_", "-")
        for v in values:
            if v is None or isinstance(v, (bool, str)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{flag} must be a finite number, got {v}")
            if limit is not None:
                limit.check(flag, v)


# Options that may differ when a run is resumed: they do not change what is computed (``out`` is the folder the
# earlier options are read from, however it is spelt).
RESUME_IGNORED = frozenset({"resume", "overwrite", "progress", "device", "cache_dir", "out", "workers"})


def config_differences(earlier: dict[str, Any], cfg: Any) -> list[str]:
    """``--option old → new`` for every option of ``cfg`` that differs from ``earlier`` (the ``config.json`` of the
    run being resumed), except :data:`RESUME_IGNORED`. An option the earlier run did not record had
    its default, or its recipe's value where the recipe sets it (runs from before --recipe were classic)."""
    now = json_ready(dataclasses.asdict(cfg))
    preset = RECIPES.get(earlier.get("recipe", "classic"), {})
    defaults = {f.name: preset.get(f.name, f.default) for f in dataclasses.fields(cfg)}
    diffs = []
    for name, value in now.items():
        if name in RESUME_IGNORED:
            continue
        before = earlier[name] if name in earlier else json_ready(defaults[name])
        if before != value:
            diffs.append(f"--{name.replace('_', '-')} {_shown(before)} → {_shown(value)}")
    return diffs


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def kd_loss_arg(default: str | None, why: str = "") -> Any:
    """The ``--kd-loss`` field of a distillation recipe, defaulting to ``default`` (``why`` says why it was chosen);
    its choices and their descriptions are read from the loss registry."""
    return arg(default, f"distillation loss (kd.losses.LOSSES): {loss_descriptions()}{why}", tuple(LOSSES))


def loss_descriptions() -> str:
    """``name (what it is), ...`` for every registered loss, from the first words of each class's docstring."""
    return ", ".join(f"{name} ({_summary(cls)})" for name, cls in LOSSES.items())


def _summary(cls: type) -> str:
    """A class docstring's first line up to its first parenthesis or full stop: ``Decoupled Knowledge Distillation``."""
    first = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return first.split(" (")[0].split(". ")[0].rstrip(".").strip()


@dataclass
class KDConfig(RunConfig):
    """Shared words of the distillation recipes: where the teacher comes from and the loss."""

    teacher: str | None = arg(None, "teacher model file (written by train_teacher.py); without it, --dataset cifar10 "
                              "starts from the committed teacher (benchmarks/weights/), any other data set trains a "
                              "teacher first on the same data")
    train_teacher: bool = arg(False, "train the teacher here even where a committed one exists (--dataset cifar10)")
    teacher_arch: str = arg("wide_cnn", "architecture of the teacher trained when --teacher is not given")
    teacher_model_args: str = arg("{}", "JSON of the teacher's architecture arguments")
    teacher_epochs: int | None = arg(None, "epochs of the teacher trained when --teacher is not given (default: from "
                                     "--recipe)", limit=COUNT)
    kd_loss: str = kd_loss_arg("kd")
    loss_args: str = arg("{}", "JSON of the loss's arguments, e.g. '{\"beta\": 6}' for dkd")
    temperature: float | None = arg(None, "softening temperature T of kd / dkd / kd-ls (default: the loss's own)",
                                    limit=POSITIVE)
    alpha: float | None = arg(None, "kd's soft-target weight in [0, 1] (default: the loss's own); 0 = plain "
                              "cross-entropy, whatever --kd-loss says",
                              limit=Limit(lambda v: 0.0 <= v <= 1.0, "in [0, 1]"))
    latency: bool = arg(True, "measure teacher and student forward latency after training (report.json)")
    latency_batch_sizes: tuple[int, ...] = arg((1, 64), "batch sizes of the latency measurement", limit=COUNT)
    export: str | None = arg(None, "onnx: also write OUT/student.onnx (dynamic batch), checked against PyTorch with "
                             "onnxruntime and timed beside it", ("onnx",))
    teacher_cache: int = arg(0, "K > 0: run the teacher once over K augmented views of every training image, keep "
                             "the logits on disk (--cache-dir) and train from them, never running the teacher again",
                             limit=NON_NEGATIVE_COUNT)
