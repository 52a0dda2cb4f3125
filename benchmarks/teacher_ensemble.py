"""What several teachers score together: every non-empty subset of the given model files, as ``--teacher A B ...``
teaches (the mean of their logits: :class:`kd.ensemble.TeacherEnsemble`), single view and with each member also
seeing the mirror image (``--teacher-tta``), on the test split. Prints a table and writes a JSON record.

    python benchmarks/teacher_ensemble.py benchmarks/weights/fast_cnn_cifar10_e40.pt \\
        benchmarks/weights/fast_cnn_wide_cifar10_e40.pt --data-dir ../shared/data/cifar10
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch

from kd.data import load_dataset, make_loaders
from kd.ensemble import ensemble_members
from kd.precision import Hardware
from kd.trainer import evaluate
from models import profile
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main
from recipes.plumbing.inputs import file_sha256
from recipes.plumbing.report import write_json
from recipes.plumbing.teachers import load_teachers, wrap_teacher

RESULTS = Path(__file__).resolve().parent / "results"


def subsets(paths: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``paths``, smallest first, in the given order within each."""
    return [c for r in range(1, len(paths) + 1) for c in itertools.combinations(paths, r)]


def score_subset(paths: tuple[str, ...], data, hw: Hardware) -> dict:
    """``{"teachers", "flops", "accuracy", "mirror_accuracy"}``: the subset's ensemble scored single view and with
    mirrored views (flops: one forward pass of every member on one image, without the mirror)."""
    row: dict = {"teachers": [Path(p).name for p in paths]}
    teacher = load_teachers(list(paths))  # each file read once; the mirrored ensemble wraps the same members
    members = ensemble_members(teacher)
    meta = getattr(teacher, "meta", {})
    data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])
    _, test = make_loaders(data, 500)
    for key, scored in (("accuracy", teacher), ("mirror_accuracy", wrap_teacher(members, mirror=True))):
        row[key] = evaluate(scored, test, precision=hw.precision, channels_last=hw.channels_last).accuracy
    row["flops"] = sum(profile(m, data.input_size).flops for m in members)
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
    rows, groups = [], subsets(args.teachers)
    width = max(len(" + ".join(Path(p).name for p in paths)) for paths in groups)
    print(f"{'teachers':{width}s} {'flops':>12s} {'single view':>12s} {'+ mirror':>9s}")
    for paths in groups:
        row = score_subset(paths, data, hw)
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
