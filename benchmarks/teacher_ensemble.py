"""What several teachers score together: every non-empty subset of the given model files, as ``--teacher A B ...``
teaches (the mean of their logits: :class:`kd.ensemble.TeacherEnsemble`), single view and with each member also
seeing the mirror image (``--teacher-tta``), on the test split. Prints a table and writes a JSON record.

Each file runs once over the test split, on each image and its mirror (:func:`member_logits`); a subset's logits are
then the mean of its members' (:func:`score_subset`), which is the ensemble's own formula, so N files cost N passes
(two views each), not one pass per subset.

    python benchmarks/teacher_ensemble.py benchmarks/weights/fast_cnn_cifar10_e40.pt \\
        benchmarks/weights/fast_cnn_wide_cifar10_e40.pt --data-dir ../shared/data/cifar10
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from kd.data import load_dataset, make_loaders
from kd.precision import Hardware
from models import profile
from models.common import autocast, eval_mode
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main
from recipes.plumbing.inputs import file_sha256
from recipes.plumbing.report import write_json
from recipes.plumbing.teachers import load_teachers

RESULTS = Path(__file__).resolve().parent / "results"


def subsets(paths: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``paths``, smallest first, in the given order within each."""
    return [c for r in range(1, len(paths) + 1) for c in itertools.combinations(paths, r)]


@dataclass
class MemberLogits:
    """One teacher file's test logits: ``single`` f(x) and ``mirror`` (f(x) + f(mirror(x))) / 2, each (N, K) fp32,
    the labels (N,) and its flops on one image."""

    name: str
    flops: int
    single: torch.Tensor
    mirror: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def member_logits(path: str, data, hw: Hardware, batch_size: int = 500) -> MemberLogits:
    """Runs the model file ``path`` over ``data``'s test split (its own mean and std) at ``hw``'s precision and
    memory format, on each image and its mirror image."""
    teacher = load_teachers([path])
    meta = getattr(teacher, "meta", {})
    data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])
    _, test = make_loaders(data, batch_size)
    single, mirror, labels = [], [], []
    with eval_mode(teacher):
        for x, y, *_ in test:
            if hw.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(hw.precision, "cpu"):
                a, b = teacher(x).float(), teacher(x.flip(-1)).float()  # (B, K) each
            single.append(a)
            mirror.append((a + b) / 2)
            labels.append(y)
    return MemberLogits(Path(path).name, profile(teacher, data.input_size).flops, torch.cat(single),
                        torch.cat(mirror), torch.cat(labels))


def score_subset(members: Sequence[MemberLogits]) -> dict:
    """``{"teachers", "flops", "accuracy", "mirror_accuracy"}`` of the ensemble of ``members``: top-1 (percent) of
    the mean of their logits, ``t = 1/N · Σ_n f_n``, single view and mirrored (flops: one forward pass of every
    member on one image, without the mirror)."""
    row: dict = {"teachers": [m.name for m in members], "flops": sum(m.flops for m in members)}
    labels = members[0].labels
    for key, view in (("accuracy", "single"), ("mirror_accuracy", "mirror")):
        mean = torch.stack([getattr(m, view) for m in members]).mean(0)  # (N, K)
        row[key] = 100.0 * int((mean.argmax(1) == labels).sum()) / labels.numel()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("teachers", nargs="+", help="model files (train_teacher.py's)")
    parser.add_argument("--data-dir", default="../shared/data/cifar10", help="the image folder scored (test split)")
    parser.add_argument("--out", default=str(RESULTS / "teacher_ensembles.json"), help="the JSON record")
    args = parser.parse_args(argv)
    hw = Hardware.detect("auto", "cpu")
    print(hw.describe())
    data = load_dataset("imagefolder", args.data_dir, progress=False)
    scored = {p: member_logits(p, data, hw) for p in tqdm(args.teachers, desc="teachers", unit="file")}
    rows, groups = [], subsets(args.teachers)
    width = max(len(" + ".join(Path(p).name for p in paths)) for paths in groups)
    print(f"{'teachers':{width}s} {'flops':>12s} {'single view':>12s} {'+ mirror':>9s}")
    for paths in groups:
        row = score_subset([scored[p] for p in paths])
        rows.append(row)
        print(f"{' + '.join(row['teachers']):{width}s} {row['flops']:>12,d} {row['accuracy']:>11.2f}% "
              f"{row['mirror_accuracy']:>8.2f}%", flush=True)
    record = {"hardware": hw.to_dict(),
              "threads": torch.get_num_threads(), "data_dir": args.data_dir,
              "files": {Path(p).name: file_sha256(p) for p in args.teachers}, "rows": rows}
    write_json(Path(args.out), record)
    print(f"written to {args.out}")


if __name__ == "__main__":
    run_main(main)
