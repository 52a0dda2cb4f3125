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
from typing import Any, ClassVar, NoReturn, TypeVar

import torch

from kd.data import DATA_MODES, DATASETS, TRANSFORMS
from kd.data.batches import FLIPS, PAD_MODES
from kd.losses import LOSSES
from kd.optim import MUON_LR_SCALE, MUON_MOMENTUM, OPTIMIZERS, SCHEDULES
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
PROBABILITY = Limit(lambda v: 0.0 <= v <= 1.0, "in [0, 1] (a probability)")

INITS = ("default", "whiten-dirac")

# The training recipes: defaults of the options marked "from --recipe". classic is the recipe every measurement before
# the fast one used; fast bundles airbench94's pieces (KellerJordan/cifar10-airbench), its numbers translated to a
# batch-mean loss: lr 11.5 per 1024 summed examples with momentum 0.85 is 11.5 / (1 + 1/(1 − 0.85)) = 1.5 on the mean
# loss at batch 1024, and its decoupled decay 0.0153 per 1024 is weight_decay = 0.0153 / 11.5 = 1.33e-3 at that rate.
# BENCHMARKS.md ("How fast does a teacher reach 93 %?") measures both on CIFAR-10. Since issue 28 fast also has
# airbench's lookahead (instead of the EMA), BatchNorm momentum 0.4 and eps 1e-12, the stem bias held after 3 epochs,
# reflect padding, and fast_cnn's MaxPool2d(3) head without a classifier bias, and its teachers train with Muon on the
# filters (airbench94_muon's optimiser, kd.optim.Muon): 89.93 % / 90.93 % with TTA (3 seeds) against 88.87 % / 89.07 %
# in 10 epochs on the CPU (BENCHMARKS.md, "airbench94's pieces").
RECIPES: dict[str, dict[str, Any]] = {
    "classic": {"epochs": 30, "finetune_epochs": 30, "teacher_epochs": 30, "batch_size": 128, "lr": 0.05,
                "finetune_lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine", "momentum": 0.9, "warmup": 0.23,
                "decay_norm_and_bias": True, "bn_bias_lr_scale": 1.0, "bn_weight_lr_scale": 1.0,
                "label_smoothing": 0.0, "ema": 0.0, "tta": "none", "pad": 4, "pad_mode": "zeros", "flip": "random",
                "init": "default", "kd_loss": "kd-ls", "lookahead": False, "bn_momentum": 0.0,
                "stem_bias_epochs": 0, "optimizer": "sgd"},
    "fast": {"epochs": 10, "finetune_epochs": 8, "teacher_epochs": 10, "batch_size": 1024, "lr_batch": 1024,
             "lr": 1.5, "finetune_lr": 0.3, "weight_decay": 0.0153 / 11.5, "schedule": "triangular", "momentum": 0.85,
             "warmup": 0.23, "decay_norm_and_bias": False, "bn_bias_lr_scale": 64.0, "bn_weight_lr_scale": 0.0,
             "label_smoothing": 0.2, "ema": 0.0, "tta": "flip-translate", "pad": 2, "pad_mode": "reflect",
             "flip": "alternating", "init": "whiten-dirac", "kd_loss": "kd", "lookahead": True, "bn_momentum": 0.4,
             "stem_bias_epochs": 3, "optimizer": "muon",
             "arch_args": {"fast_cnn": {"bn_eps": 1e-12, "head_pool_mode": "max3", "classifier_bias": False}}},
}
# "arch_args": architecture arguments a recipe gives the networks it names when a run builds one (--model-args and
# --teacher-model-args override them key by key): see recipe_arch_args.
# "optimizer": fast trains every stage with Muon on the filters, which measured best for its teachers (89.93 % against
# 89.67 % single view in 10 epochs, 3 seeds each) and for the seed's budget's students (BENCHMARKS.md "airbench94's
# pieces").
# "kd_loss" is prune_then_distill's fine-tuning loss (its field defaults to None; distill_only's to kd), and
# "finetune_epochs" its --epochs (a config whose EPOCHS_KEY names it): fast's 8 epochs of KD recover the seed's budget
# to 87.4 % (BENCHMARKS.md's Δ table) within the 15 minutes the no-argument run is allowed on a 2-core CPU.
RECIPE_CHOICES = ("auto", *RECIPES)
FAST_MIN_IMAGES = 20_000  # auto: below this many training images, batches of 1024 leave too few steps per epoch
FULL_SIZE_SETS = frozenset({"cifar10-jpeg", "cifar10", "cifar100"})  # 50,000 training images each
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

    # the options that the derived values (from --recipe) are computed from: a --config re-run that changes one of
    # them derives those values again (parse_config)
    DERIVED_FROM: ClassVar[tuple[str, ...]] = ("recipe", "batch_size")

    dataset: str = arg("cifar10-jpeg", "cifar10-jpeg (CIFAR-10 as JPEG q75, ships with the project), cifar10 / "
                       "cifar100 (torchvision download), imagefolder (--data-dir), or synthetic", DATASETS)
    data_dir: str | None = arg(None, "where the data set is (imagefolder) or goes (cifar)")
    image_size: int = arg(32, "images are resized to this square size",
                          limit=Limit(lambda v: v >= 8, ">= 8 (pixels)"))
    limit_train: int | None = arg(None, "use a class-balanced subset of this many training images", limit=COUNT)
    limit_test: int | None = arg(None, "use a class-balanced subset of this many test images", limit=COUNT)
    cache_dir: str | None = arg(None, "where decoded images are cached (default $PTD_CACHE_DIR or "
                                "~/.cache/prune-then-distill)")
    recipe: str = arg("auto", "sets the options marked 'from --recipe': classic (SGD, batch 128, cosine), fast "
                      "(airbench94's, batch 1024); auto: fast on the CIFAR sets, else classic", RECIPE_CHOICES)
    epochs: int | None = arg(None, "training epochs (default: from --recipe)", limit=COUNT)
    batch_size: int | None = arg(None, "images per batch (default: from --recipe)", limit=COUNT)
    lr: float | None = arg(None, "peak learning rate (default: from --recipe; fast: 1.5 x batch / 1024)",
                           limit=POSITIVE)
    weight_decay: float | None = arg(None, "weight decay (default: from --recipe)", limit=NON_NEGATIVE)
    optimizer: str | None = arg(None, "sgd (Nesterov momentum), adamw, or muon (Muon on the bias-free convs' "
                                "filters, sgd on the rest) (default: from --recipe; fast: muon, classic: sgd)",
                                OPTIMIZERS)
    muon_lr_scale: float = arg(MUON_LR_SCALE, "muon: the filters' learning rate as a multiple of --lr "
                               "(airbench94_muon's 0.24 at the fast recipe's 1.5)", limit=POSITIVE)
    muon_momentum: float = arg(MUON_MOMENTUM, "muon: the filters' Nesterov momentum (airbench94_muon's)",
                               limit=FRACTION)
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
    cutout: int = arg(0, "side of a square set to the mean colour at a random place in every training image "
                      "(airbench96's cutout, for long runs); 0 = off; memory mode only", limit=NON_NEGATIVE_COUNT)
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
    init: str | None = arg(None, "initialisation of models built here: default (PyTorch's) or whiten-dirac (patch-"
                           "whitening first conv, identity init of the others) (default: from --recipe)", INITS)
    out: str = arg("runs/run", "output folder: checkpoints, model file, report.json, config.json")
    seed: int = arg(0, "random seed (weights, shuffling, augmentation, subsets)", limit=ANY_NUMBER)
    device: str = arg("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    resume: bool = arg(False, "continue an interrupted run from OUT/.../last.pt (with the options it was started "
                       "with)")
    overwrite: bool = arg(False, "replace the earlier run in OUT: remove what runs write there (config, report, "
                          "model files, stage checkpoints, metrics) except this run's inputs (--teacher); keep the "
                          "rest")
    skip_bad_images: bool = arg(False, "leave out image files that cannot be decoded (counted once) instead of "
                                "stopping at the first")
    precision: str = arg("auto", "auto: bf16 autocast where the hardware computes bf16 natively (CUDA, AMX or "
                         "AVX512-BF16 CPUs), else fp32; printed and kept in report.json", PRECISIONS)
    channels_last: bool | None = arg(None, "channels-last memory format for models and batches (default: on CUDA and "
                                     "with bf16, where it is faster)")
    compile: bool = arg(False, "train through torch.compile (pays a compile time up front; see BENCHMARKS.md)")
    tensorboard: bool = arg(False, "also write TensorBoard logs (OUT/<stage>/tb; needs the tensorboard package); "
                            "metrics.csv and curves.png are always written")
    progress: bool = arg(True, "show progress bars")
    data_mode: str = arg("auto", "memory: images decoded once into RAM (fastest); stream: decoded by DataLoader "
                         "workers each epoch; auto: memory when they fit in --memory-budget", DATA_MODES)
    memory_budget: float | None = arg(None, "GiB the decoded images may take in memory mode (default: half the "
                                      "available memory)", limit=Limit(lambda v: v > 0, "> 0 (GiB)"))
    workers: int = arg(4, "DataLoader worker processes per training process in stream mode",
                       limit=NON_NEGATIVE_COUNT)
    sync_bn: bool = arg(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA "
                        "only) instead of each process's slice")
    transforms: str = arg("auto", "tensor: squashed to --image-size, pad-crop + flip on the device (32-px sets); timm: "
                          "timm's data config (README); auto: timm off 32 px or with a timm network", TRANSFORMS)
    aa: str | None = arg(None, "timm's auto-augment policy (timm's --aa) on the timm path, e.g. rand-m9-mstd0.5, "
                         "augmix-m5, v0")
    crop_pct: float | None = arg(None, "fraction of the shorter side the evaluation centre crop keeps on the timm path "
                                 "(default: the network's own, else 1.0)",
                                 limit=Limit(lambda v: 0.0 < v <= 1.0, "in (0, 1]"))
    scale: tuple[float, ...] | None = arg(None, "RandomResizedCrop's range of the crop's area on the timm path, MIN "
                                          "MAX (default 0.08 1.0, timm's)", limit=Limit(lambda v: 0.0 < v <= 1.0,
                                                                                       "in (0, 1]"))
    train_split: str | None = arg(None, "imagefolder folder of the training images (default train)")
    val_split: str | None = arg(None, "imagefolder folder of the evaluation images (default test, else val; the "
                                "choice is printed)")
    mixup: float = arg(0.0, "mixup alpha (timm's --mixup): each batch blended with itself in reverse order, lambda ~ "
                       "Beta(alpha, alpha); a teacher scores the mixed images; 0 = off", limit=NON_NEGATIVE)
    cutmix: float = arg(0.0, "CutMix alpha (timm's --cutmix): a box of the reversed batch covering 1 - lambda of each "
                        "image, labels mixed by area; 0 = off", limit=NON_NEGATIVE)
    mixup_prob: float | None = arg(None, "probability that a batch is mixed at all (default 1.0 with --mixup or "
                                   "--cutmix)", limit=PROBABILITY)
    mixup_switch_prob: float | None = arg(None, "probability of CutMix instead of mixup when both are on (default "
                                          "0.5)", limit=PROBABILITY)


def resolve_recipe(cfg: Any) -> str:
    """``cfg.recipe``, with ``auto`` resolved: fast for the 50,000-image CIFAR sets (unless ``--limit-train`` keeps
    fewer than :data:`FAST_MIN_IMAGES`), classic elsewhere, where a batch of 1024 leaves a small data set one or two
    steps per epoch (BENCHMARKS.md: a 2-epoch recovery was 4.8 points better with classic's many small steps)."""
    if cfg.recipe != "auto":
        return cfg.recipe
    limit = getattr(cfg, "limit_train", None)
    big = getattr(cfg, "dataset", None) in FULL_SIZE_SETS and (limit is None or limit >= FAST_MIN_IMAGES)
    return "fast" if big else "classic"


def recipe_values(recipe: str, batch_size: int | None = None, epochs_key: str = "epochs") -> dict[str, Any]:
    """Every option value ``RECIPES[recipe]`` gives, its batch size included; a rate the recipe gives per
    ``lr_batch`` images (the fast recipe's) is scaled linearly to ``batch_size`` (default: the recipe's batch):
    ``lr = lr_recipe · batch_size / lr_batch``. ``epochs`` is the preset's ``epochs_key`` entry (prune_then_distill
    fine-tunes for ``finetune_epochs``)."""
    preset = dict(RECIPES[recipe])
    preset["epochs"] = preset[epochs_key]
    batch = batch_size if batch_size is not None else preset["batch_size"]
    scale = batch / preset["lr_batch"] if "lr_batch" in preset else 1.0
    return {name: value * scale if name in _BATCH_SCALED else value for name, value in preset.items()
            if name != "lr_batch"}


def apply_recipe(cfg: Any) -> Any:
    """Resolves ``--recipe auto`` (:func:`resolve_recipe`), fills every option of ``cfg`` left at None that
    ``RECIPES[cfg.recipe]`` sets (:func:`recipe_values`, rates scaled to the batch size unless given, ``--epochs``
    from the key ``cfg.EPOCHS_KEY`` names when the config has one) and records the filled names as derived
    (:func:`derived_options`)."""
    cfg.recipe = resolve_recipe(cfg)
    names = {f.name for f in dataclasses.fields(cfg)}
    filled = set()
    epochs_key = getattr(cfg, "EPOCHS_KEY", "epochs")
    # an unset batch size is the recipe's own, which recipe_values scales the rates to and fills in below
    for name, value in recipe_values(cfg.recipe, getattr(cfg, "batch_size", None), epochs_key).items():
        if name in names and getattr(cfg, name) is None:
            setattr(cfg, name, value)
            filled.add(name)
    _mark_derived(cfg, derived_options(cfg) | filled)
    return cfg


def fill_derived(cfg: Any) -> Any:
    """Fills the options of ``cfg`` left at None whose default is computed from other options: the recipe's values
    (:func:`apply_recipe`, for a config with ``recipe``) and those of the config's own ``option_defaults()`` method
    (distill_only's ``--model-args`` per ``--arch``); records them as derived."""
    if hasattr(cfg, "recipe"):
        apply_recipe(cfg)
    own = cfg.option_defaults() if hasattr(cfg, "option_defaults") else {}
    filled = {name for name in own if getattr(cfg, name) is None}
    for name in filled:
        setattr(cfg, name, own[name])
    _mark_derived(cfg, derived_options(cfg) | filled)
    return cfg


# The key of config.json that lists the options whose values were derived (from --recipe, the batch size, --arch)
# rather than given; a --config re-run that changes what they were derived from derives them again.
DERIVED_KEY = "_derived"


def derived_options(cfg: Any) -> frozenset[str]:
    """The names of the options of ``cfg`` whose values were derived from other options, not given."""
    return frozenset(getattr(cfg, DERIVED_KEY, ()))


def _mark_derived(cfg: Any, names: set[str] | frozenset[str]) -> None:
    # an attribute, not a field: it is not an option (no --flag), and asdict leaves it out
    setattr(cfg, DERIVED_KEY, tuple(sorted(names)))


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


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in the recipes' form: one line, ``error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        said_elsewhere = os.environ.get("LOCAL_RANK", "0") != "0"  # under torchrun: local rank 0 says it
        self.exit(2, None if said_elsewhere else f"error: {message} (--help lists the options)\n")


class _Repeatable(argparse.Action):
    """A list option's words: ``--teacher A --teacher B`` is ``--teacher A B``. The first occurrence replaces the
    default (a ``--config`` file's value included), so the command line overrides the file instead of adding to it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        earlier = getattr(namespace, self.dest, None)
        words = [] if earlier is self.default or earlier is None else list(earlier)
        setattr(namespace, self.dest, words + list(values))


CONFIG_HELP = ("read options from a YAML or JSON file (yours, --print-config's, or a run's config.json); the command "
               "line overrides it, and values derived from --recipe are derived again when it changes")
PRINT_CONFIG_HELP = "print the resolved configuration (YAML, readable by --config) and exit"
EPILOG = ("Options marked 'from --recipe' take the recipe's value unless given. Why each default was chosen: "
          "BENCHMARKS.md.")

# The --help groups, in timm train.py's spirit: every option of every recipe belongs to one (a test checks it).
GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_dir", "image_size", "limit_train", "limit_test", "val_size", "cache_dir", "data_mode",
             "memory_budget", "workers", "skip_bad_images", "train_split", "val_split"),
    "model": ("arch", "model_args", "init", "initial_checkpoint", "student", "student_init"),
    "teacher": ("teacher", "train_teacher", "teacher_arch", "teacher_model_args", "teacher_epochs", "teacher_cache",
                "teacher_tta", "teacher_weights", "pretrained", "new_head"),
    "pruning": ("target_flops", "target_params", "ratio", "budget", "importance", "global_pruning", "round_to",
                "calibration_images", "calibration_batches", "recalibrate_bn", "progressive_steps", "step_ratio",
                "max_drop", "max_steps", "methods", "num_steps", "tolerance"),
    "distillation": ("kd_loss", "loss_args", "temperature", "alpha", "distill", "hint_layer", "hint_student_layer",
                     "hint_teacher_layer", "hint_weight"),
    "optimisation": ("recipe", "epochs", "batch_size", "lr", "finetune_lr", "optimizer", "muon_lr_scale",
                     "muon_momentum", "schedule", "momentum", "warmup", "weight_decay", "decay_norm_and_bias",
                     "bn_bias_lr_scale", "bn_weight_lr_scale",
                     "label_smoothing", "ema", "lookahead", "bn_momentum", "stem_bias_epochs", "seed", "seeds"),
    "augmentation": ("pad", "pad_mode", "flip", "cutout", "tta", "transforms", "aa", "crop_pct", "scale", "mixup",
                     "cutmix", "mixup_prob", "mixup_switch_prob"),
    "precision and speed": ("device", "precision", "channels_last", "compile", "dynamo", "sync_bn", "threads"),
    "output": ("out", "resume", "overwrite", "progress", "tensorboard", "latency", "latency_batch_sizes", "batch_sizes",
               "repeats", "min_seconds", "export", "opset"),
}
GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}
OTHER_GROUP = "other"  # where a field missing from GROUPS lands (tests/test_cli.py refuses any)
JSON_FIELDS = frozenset({"model_args", "teacher_model_args", "loss_args"})  # JSON strings; a mapping in a config file


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--option`` per field of the dataclass ``cls``, in the :data:`GROUPS` of
    ``--help``, and ``--config FILE`` / ``--print-config``."""
    parser = OneLineParser(description=description, formatter_class=_HelpFormatter, epilog=EPILOG,
                           usage="%(prog)s [options]   (-h lists them by group)")
    groups = {name: parser.add_argument_group(f"{name} options") for name in (*GROUPS, OTHER_GROUP)}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, help_, choices = "--" + f.name.replace("_", "-"), f.metadata.get("help", ""), f.metadata.get("choices")
        base, group = _base_type(hints[f.name]), groups[GROUP_OF.get(f.name, OTHER_GROUP)]
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif base in (tuple, list):
            group.add_argument(flag, nargs="+", type=_element_type(hints[f.name]), default=f.default,
                               choices=choices, help=help_, action=_Repeatable)
        else:
            group.add_argument(flag, type=base, default=f.default, choices=choices, help=help_)
    groups["output"].add_argument("-c", "--config", metavar="FILE", default=None, help=CONFIG_HELP)
    groups["output"].add_argument("--print-config", action="store_true", help=PRINT_CONFIG_HELP)
    for name, group in groups.items():
        if not group._group_actions:  # noqa: SLF001 (argparse offers no public way to drop an empty group)
            parser._action_groups.remove(group)  # noqa: SLF001
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str | None = None) -> C:
    """Parses ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``. With ``--config FILE``
    the file's options (:func:`read_config`) replace the defaults, and the command line overrides both. Options left
    unset are then derived (:func:`fill_derived`). A value the file records as derived is derived again when the
    command line changes an option it was derived from (``cls.DERIVED_FROM``: ``--recipe``, ``--batch-size``,
    ``--arch``): a fast run's config re-run with ``--recipe classic`` trains classic's batch, rate and schedule,
    with ``--batch-size 64`` at the rate scaled to 64. A value given on the earlier run's command line stays.

    Raises:
        ValueError: an unreadable config file, or one whose options do not fit ``cls``.
    """
    path = config_file(argv)
    parser = build_parser(cls, description)
    saved = read_config(cls, path) if path is not None else None
    if saved is not None:
        parser.set_defaults(**saved.values)
    ns = parser.parse_args(argv)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items()
              if k not in ("config", "print_config")}
    kept: frozenset[str] = frozenset()
    if saved is not None:
        given = _given_options(cls, argv, description)
        kept = saved.derived - given
        changed = [n for n in getattr(cls, "DERIVED_FROM", ()) if n in given and values[n] != saved.values.get(n)]
        if changed:
            values.update({name: None for name in kept})  # derived again below, from the options as they are now
            kept = frozenset()
    cfg = cls(**values)
    _mark_derived(cfg, kept)
    cfg = fill_derived(cfg)
    if ns.print_config:
        print_config(cfg)
        parser.exit(0)
    return cfg


def print_config(cfg: Any) -> None:
    """Prints every option of ``cfg`` as YAML, ``--config`` readable; the ``*_args`` JSON options as mappings."""
    import yaml

    values = json_ready(dataclasses.asdict(cfg))
    for name in JSON_FIELDS & set(values):
        try:
            values[name] = json.loads(values[name])
        except (TypeError, ValueError):
            pass  # left as the string it is; the run's own checks name it
    print(yaml.safe_dump(values, sort_keys=False, allow_unicode=True), end="", flush=True)


def config_file(argv: list[str] | None = None) -> str | None:
    """The ``--config FILE`` that ``argv`` (default ``sys.argv[1:]``) names, or None."""
    first = OneLineParser(add_help=False)
    first.add_argument("-c", "--config", default=None)
    return first.parse_known_args(argv)[0].config


_UNSET = object()


def _given_options(cls: type, argv: list[str] | None, description: str | None) -> frozenset[str]:
    """The names of the options ``argv`` gives on the command line (whatever their value)."""
    parser = build_parser(cls, description)
    parser.set_defaults(**{f.name: _UNSET for f in dataclasses.fields(cls)})
    return frozenset(k for k, v in vars(parser.parse_args(argv)).items()
                     if v is not _UNSET and k not in ("config", "print_config"))


# Options of an earlier run that a re-run does not take from its config file: they say what to do with that run's
# folder, not what to compute.
CONFIG_IGNORED = frozenset({"resume", "overwrite"})


@dataclass(frozen=True)
class SavedConfig:
    """The options a config file holds (checked), and which of them were derived rather than given."""

    values: dict[str, Any]
    derived: frozenset[str]


def read_config(cls: type, path: str | Path) -> SavedConfig:
    """The options of ``cls`` that the YAML or JSON file ``path`` holds: one written by hand or by ``--print-config``,
    a ``config.json`` written by an earlier run, or the ``"config"`` object of its ``report.json``; each value checked
    against the field's type and choices, lists made tuples, a mapping given for a JSON option (``model_args``) made
    its JSON string, except :data:`CONFIG_IGNORED`; keys may be spelt with dashes, as on the command line. Which
    were derived is read from the file's :data:`DERIVED_KEY` list; a file written before that list existed counts as
    derived each value equal to what its recipe gives (:func:`recipe_values` at its batch size) for an option whose
    default is None.

    Raises:
        ValueError: naming the file and what is wrong with it (missing, not YAML/JSON, an option ``cls`` lacks, a
            value of the wrong type or not among the choices).
    """
    where = f"--config {str(path)!r}"
    body = _parsed_file(Path(path), where)
    if isinstance(body, dict):
        body = {str(k).replace("-", "_"): v for k, v in body.items()}
    if isinstance(body, dict) and isinstance(body.get("config"), dict):
        body = body["config"]  # a report.json
    if not isinstance(body, dict):
        raise ValueError(f"{where} does not hold an object of options")
    derived = body.pop(DERIVED_KEY, None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ValueError(f"{where} has options this recipe does not take ({', '.join(unknown)}); is it another "
                         "recipe's config?")
    values = {}
    for name, value in body.items():
        if name in JSON_FIELDS and isinstance(value, dict):
            value = json.dumps(value)
        if name not in CONFIG_IGNORED:
            values[name] = _config_value(name, value, hints[name], fields[name].metadata.get("choices"), where)
    if derived is None:
        return SavedConfig(values, _guess_derived(values, fields))
    if not isinstance(derived, list) or not set(derived) <= set(fields):
        raise ValueError(f"{where}: {DERIVED_KEY} must list option names of this recipe, got {derived!r}")
    return SavedConfig(values, frozenset(derived) & set(values))


def _guess_derived(values: dict[str, Any], fields: dict[str, dataclasses.Field]) -> frozenset[str]:
    """For a file from before :data:`DERIVED_KEY`: the unset-by-default options whose value is the recipe's."""
    recipe = values.get("recipe", "classic")
    if "recipe" not in fields or recipe not in RECIPES:
        return frozenset()
    preset = recipe_values(recipe, values.get("batch_size"))
    return frozenset(name for name, value in preset.items()
                     if name in values and fields[name].default is None and values[name] == value)


def _parsed_file(path: Path, where: str) -> Any:
    """The contents of a config file: JSON for ``.json``, YAML (a superset of JSON) for anything else."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist; pass a YAML or JSON file of options (--print-config writes one), "
                         "or the config.json an earlier run wrote in its --out") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a folder; pass a YAML or JSON file of options") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a text file of options") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{where} is not valid YAML{at} ({getattr(err, 'problem', None) or 'unreadable'})") from None


def _config_value(name: str, value: Any, hint: Any, choices: tuple | None, where: str) -> Any:
    """``value`` of option ``name`` from a config file, checked and converted to the field's type."""
    if value is None:
        return None
    base, flag = _base_type(hint), "--" + name.replace("_", "-")
    if base in (tuple, list):
        if isinstance(value, str) and _element_type(hint) is str:
            value = [value]  # a run from before the option took several words (--teacher FILE)
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


def config_record(cfg: Any) -> dict[str, Any]:
    """The options of ``cfg`` as ``config.json`` records them: every field, and under :data:`DERIVED_KEY` the names
    of those derived from other options (:func:`derived_options`)."""
    return {**dataclasses.asdict(cfg), DERIVED_KEY: sorted(derived_options(cfg))}


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the config (:func:`config_record`) as JSON next to the results (atomically)."""
    write_json(path, config_record(cfg))


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
    defaults["recipe"] = "classic"  # a config.json without the option is from before --recipe: classic's values
    diffs = []
    for name, value in now.items():
        if name in RESUME_IGNORED:
            continue
        before = earlier[name] if name in earlier else json_ready(defaults[name])
        if isinstance(value, list) and isinstance(before, str):
            before = [before]  # recorded before the option took several words (--teacher FILE)
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
    """The ``--kd-loss`` field of a distillation recipe, defaulting to ``default`` (``why`` says how it is chosen);
    its choices are read from the loss registry (README's table describes each)."""
    return arg(default, f"distillation loss (kd.losses.LOSSES; README's table){why}", tuple(LOSSES))


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

    teacher: tuple[str, ...] | None = arg(None, "teacher model file(s) (train_teacher.py's); several teach the mean "
                                          "of their logits; default: the committed teacher for CIFAR-10, else one "
                                          "trained here first")
    train_teacher: bool = arg(False, "train the teacher here even where a committed one exists (--dataset cifar10)")
    teacher_arch: str = arg("wide_cnn", "architecture of the teacher trained here or loaded with --teacher-weights / "
                            "--pretrained: a registered name, timm:NAME or module:qualname (your own code)")
    teacher_weights: str | None = arg(None, "weights of the --teacher-arch network as the teacher: .safetensors, or a "
                                      ".pth/.pt state dict (plain or under state_dict / model / state_dict_ema)")
    pretrained: bool = arg(False, "the teacher is --teacher-arch timm:NAME with timm's pretrained weights "
                           "(downloaded, or from timm's cache)")
    new_head: bool = arg(False, "replace the classifier of the --teacher-weights / --pretrained network with one for "
                         "this data's classes and fine-tune it for --teacher-epochs before it teaches")
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
    export: str | None = arg(None, "onnx: also write OUT/student.onnx (mean, std, classes, image size in its "
                             "metadata); torch-export: OUT/student.pt2 (torch.export); each checked against PyTorch",
                             ("onnx", "torch-export"))
    teacher_tta: bool = arg(False, "the teacher scores the student's view and its mirror image and teaches the "
                            "mean of the two logit vectors (kd.ensemble)")
    teacher_cache: int = arg(0, "K > 0: run the teacher once over K augmented views of every training image, keep "
                             "the logits on disk (--cache-dir) and train from them, never running the teacher again",
                             limit=NON_NEGATIVE_COUNT)
