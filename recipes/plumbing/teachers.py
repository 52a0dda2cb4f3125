"""The teachers of a distillation recipe: the committed CIFAR-10 teacher (where a recipe starts when ``--dataset
cifar10-jpeg`` (the default) or ``cifar10`` has no ``--teacher``) and :func:`load_teachers`, the one way ``--teacher A
[B ...]`` and ``--teacher-tta`` become the one teacher module that training, evaluation, the report and the teacher
cache see.

The file is ``benchmarks/weights/fast_cnn_cifar10_e40.pt`` (pickle-free, see ``benchmarks/weights/README.md`` for the
command that made it); its sha256 is checked before it is used, so a changed or truncated file is refused by name
instead of teaching silently.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kd.ensemble import TeacherEnsemble
from models import load_model
from models.checkpoint import NotAModelFile
from recipes.plumbing.inputs import file_sha256

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CommittedTeacher:
    """A teacher file committed with the repository, its checksum and what it scored."""

    dataset: str
    path: Path
    sha256: str
    accuracy: float  # single-view top-1 % on the dataset's 10,000 test images


_E40 = REPO / "benchmarks" / "weights" / "fast_cnn_cifar10_e40.pt"
_E40_SHA256 = "c81b01d2f4dae13d7bdb98ef9cd45742da15443cb62d05457436671686ce4d99"
# Trained on the CIFAR-10 JPEG copy that ships as cifar10-jpeg (90.88 % on its test split); torchvision's lossless
# cifar10 has the same classes and image size.
COMMITTED = {
    "cifar10-jpeg": CommittedTeacher("cifar10-jpeg", _E40, _E40_SHA256, 90.88),
    "cifar10": CommittedTeacher("cifar10", _E40, _E40_SHA256, 90.88),
}


def committed_teacher(dataset: str) -> CommittedTeacher | None:
    """The committed teacher of ``dataset``, or None when there is none."""
    return COMMITTED.get(dataset)


def checked_path(teacher: CommittedTeacher) -> Path:
    """``teacher.path`` after checking its sha256.

    Raises:
        FileNotFoundError: the file is missing (a checkout without it).
        ValueError: its sha256 differs from the recorded one.
    """
    if not teacher.path.is_file():
        raise FileNotFoundError(f"the committed {teacher.dataset} teacher {str(teacher.path)!r} is missing; pass "
                                "--teacher FILE or --train-teacher")
    digest = file_sha256(teacher.path)
    if digest != teacher.sha256:
        raise ValueError(f"the committed {teacher.dataset} teacher {str(teacher.path)!r} has sha256 {digest[:12]}…, "
                         f"not the recorded {teacher.sha256[:12]}…; restore it (git checkout) or pass --teacher FILE "
                         "or --train-teacher")
    return teacher.path


def use_committed_teacher(cfg: object) -> None:
    """Points ``cfg.teacher`` at the committed teacher of ``cfg.dataset`` (checked) when no ``--teacher`` was given
    and ``--train-teacher`` was not asked for (nor an outside teacher, ``--teacher-weights`` / ``--pretrained``);
    says so on stdout."""
    if getattr(cfg, "teacher") is not None or getattr(cfg, "train_teacher"):
        return
    if getattr(cfg, "teacher_weights", None) is not None or getattr(cfg, "pretrained", False):
        return
    committed = committed_teacher(getattr(cfg, "dataset"))
    if committed is None:
        return
    cfg.teacher = (str(checked_path(committed)),)  # type: ignore[attr-defined]
    print(f"teacher: the committed {committed.dataset} teacher {cfg.teacher[0]} ({committed.accuracy:.2f} % on the "
          "test split, sha256 checked); --train-teacher trains one here instead", flush=True)


def teacher_paths(cfg: object) -> list[str]:
    """The ``--teacher`` files of ``cfg`` (none when it has no ``--teacher``)."""
    return list(getattr(cfg, "teacher", None) or ())


def load_teachers(paths: list[str], mirror: bool = False) -> nn.Module:
    """The teacher that ``--teacher PATH [PATH ...]`` and ``--teacher-tta`` (``mirror``) name: the one model file as
    it is, or a :class:`kd.ensemble.TeacherEnsemble` (the mean of the members' logits, over each view and its mirror
    image with ``mirror``) of them all. Files are read pickle-free (:func:`models.load_model`).

    Raises:
        ValueError: no path; teachers with different numbers of classes, class orders or normalisations (an
            ensemble feeds every member the same normalised images and averages logits class by class).
        FileNotFoundError, FileFormatError, NonFiniteError: an unreadable, foreign or non-finite file.
    """
    if not paths:
        raise ValueError("load_teachers needs at least one teacher file")
    members = [load_teacher_file(p) for p in paths]
    if len(members) == 1 and not mirror:
        return members[0]
    for path, member in zip(paths[1:], members[1:]):
        _check_alike(paths[0], members[0], path, member)
    return wrap_teacher(members, mirror)


def load_teacher_file(path: str) -> nn.Module:
    """One ``--teacher FILE`` (:func:`models.load_model`); bare weights (a safetensors file, a state dict) are pointed
    at ``--teacher-arch NAME --teacher-weights FILE``.

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


def wrap_teacher(members: list[nn.Module], mirror: bool) -> nn.Module:
    """``members[0]`` alone when it is the only one and unmirrored, else their :class:`TeacherEnsemble` (eval mode);
    the ensemble carries the first member's ``meta`` (its normalisation and classes: all members share them)."""
    if len(members) == 1 and not mirror:
        return members[0]
    ensemble = TeacherEnsemble(members, mirror=mirror)
    ensemble.meta = dict(getattr(members[0], "meta", {}))
    return ensemble


def same_normalisation(a: Sequence[float], b: Sequence[float], atol: float = 1e-6) -> bool:
    """Whether two per-channel means (or stds) are the same normalisation: as many channels, each within ``atol``
    (a value typed in and one computed from the images, or saved at another precision, differ in the last digits)."""
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=0.0, abs_tol=atol) for x, y in zip(a, b))


def _check_alike(first_path: str, first: nn.Module, path: str, other: nn.Module) -> None:
    """``other`` (from ``path``) has the classes, class order and normalisation of ``first``."""
    a, b = getattr(first, "meta", {}), getattr(other, "meta", {})
    if first.arch_spec["num_classes"] != other.arch_spec["num_classes"]:
        raise ValueError(f"--teacher {path!r} has {other.arch_spec['num_classes']} classes but --teacher "
                         f"{first_path!r} has {first.arch_spec['num_classes']}; an ensemble's teachers share classes")
    for key, what in (("classes", "class order"), ("mean", "normalisation mean"), ("std", "normalisation std")):
        if key not in a or key not in b:
            continue
        alike = list(a[key]) == list(b[key]) if key == "classes" else same_normalisation(a[key], b[key])
        if not alike:
            raise ValueError(f"--teacher {path!r} has another {what} than --teacher {first_path!r} ({b[key]} vs "
                             f"{a[key]}); an ensemble's teachers must see the same normalised images")


def check_single_teacher(cfg: object, recipe: str) -> None:
    """Refuses several ``--teacher`` files and ``--teacher-tta`` in a recipe whose teacher is also the model it
    compresses step by step (``recipe`` names it in the message).

    Raises:
        ValueError: naming the options and the recipes that take them.
    """
    if len(teacher_paths(cfg)) > 1 or getattr(cfg, "teacher_tta", False):
        raise ValueError(f"{recipe} compresses the teacher it distils from and takes one --teacher without "
                         "--teacher-tta; prune_then_distill.py and distill_only.py distil from several")
