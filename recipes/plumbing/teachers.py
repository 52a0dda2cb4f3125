"""The committed CIFAR-10 teacher: where a distillation recipe starts when ``--dataset cifar10`` has no ``--teacher``.

The file is ``benchmarks/weights/fast_cnn_cifar10_e40.pt`` (pickle-free, see ``benchmarks/weights/README.md`` for the
command that made it); its sha256 is checked before it is used, so a changed or truncated file is refused by name
instead of teaching silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recipes.plumbing.inputs import file_sha256

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CommittedTeacher:
    """A teacher file committed with the repository, its checksum and what it scored."""

    dataset: str
    path: Path
    sha256: str
    accuracy: float  # single-view top-1 % on the dataset's 10,000 test images


COMMITTED = {
    "cifar10": CommittedTeacher("cifar10", REPO / "benchmarks" / "weights" / "fast_cnn_cifar10_e40.pt",
                                "c81b01d2f4dae13d7bdb98ef9cd45742da15443cb62d05457436671686ce4d99", 90.88),
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
    cfg.teacher = str(checked_path(committed))  # type: ignore[attr-defined]
    print(f"teacher: the committed {committed.dataset} teacher {cfg.teacher} ({committed.accuracy:.2f} % on the "
          "test split, sha256 checked); --train-teacher trains one here instead", flush=True)
