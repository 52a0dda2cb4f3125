"""How to fine-tune a pruned student: learning rate, loss and its temperature/weight, measured on real images.

The teacher is pruned once (L1, to ``--budget`` of its FLOPs), its BatchNorm statistics re-estimated on training
images, and every configuration fine-tunes its own copy of that student on the same batches for the same epochs,
then is scored on the test split. Distillation reads the teacher's logits from a teacher cache (``--views`` augmented
views of every training image), built once and shared by all rows, so every KD row sees the same teacher outputs.

    python benchmarks/finetune_sweep.py --teacher runs/teacher10k/teacher.pt --data-dir ../shared/data/cifar10 \\
        --limit-train 10000 --limit-test 5000 --epochs 2

Prints the accuracy right after pruning (with and without BatchNorm re-estimation) and a markdown table of the rows
(mean ± std over ``--seeds``), with the CPU model and precision.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import pruning
from kd import create_loss, evaluate, fit_model
from kd.data import BatchIterator, load_dataset, make_loaders, subset
from kd.losses import CrossEntropy
from kd.precision import Hardware
from kd.teacher_cache import CachedBatchIterator, load_or_build
from models import load_model, profile
from pruning.fitting import recalibrate_bn
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


@dataclass
class Row:
    """One fine-tuning configuration: a loss name (``ce`` or a registered distillation loss) and its arguments."""

    name: str
    loss: str
    lr: float
    args: dict = field(default_factory=dict)
    schedule: str = "cosine"


# explicit arguments, so a row means the same whatever the registry's defaults
KD09, KD05, LS3 = {"temperature": 4.0, "alpha": 0.9}, {"temperature": 4.0, "alpha": 0.5}, {"kd_weight": 3.0}
ROWS = {
    "ce-lr0.1": Row("cross-entropy, lr 0.1", "ce", 0.1),
    "ce-lr0.05": Row("cross-entropy, lr 0.05", "ce", 0.05),
    "ce-lr0.02": Row("cross-entropy, lr 0.02", "ce", 0.02),
    "ce-lr0.01": Row("cross-entropy, lr 0.01", "ce", 0.01),
    "ce-lr0.002": Row("cross-entropy, lr 0.002", "ce", 0.002),
    "kd-lr0.05": Row("KD T 4 α 0.9, lr 0.05", "kd", 0.05, KD09),
    "kd-lr0.01": Row("KD T 4 α 0.9, lr 0.01", "kd", 0.01, KD09),
    "kd-a0.5-lr0.05": Row("KD T 4 α 0.5, lr 0.05", "kd", 0.05, KD05),
    "kd-a0.5": Row("KD T 4 α 0.5, lr 0.01", "kd", 0.01, KD05),
    "kd-t1": Row("KD T 1 α 0.9, lr 0.01", "kd", 0.01, {"temperature": 1.0, "alpha": 0.9}),
    "kd-t2-a0.5": Row("KD T 2 α 0.5, lr 0.01", "kd", 0.01, {"temperature": 2.0, "alpha": 0.5}),
    "dkd": Row("DKD (α 1, β 8, T 4, warm-up 20), lr 0.01", "dkd", 0.01),
    "dkd-w1": Row("DKD (α 1, β 8, T 4, warm-up 1), lr 0.01", "dkd", 0.01, {"warmup": 1}),
    "dist": Row("DIST (β 2, γ 2, τ 4), lr 0.01", "dist", 0.01),
    "kd-ls-lr0.05": Row("KD-LS (T 2, kd 9, ce 1), lr 0.05", "kd-ls", 0.05),
    "kd-ls-lr0.02": Row("KD-LS (T 2, kd 9, ce 1), lr 0.02", "kd-ls", 0.02),
    "kd-ls": Row("KD-LS (T 2, kd 9, ce 1), lr 0.01", "kd-ls", 0.01),
    "kd-ls-w3-lr0.05": Row("KD-LS (T 2, kd 3, ce 1), lr 0.05", "kd-ls", 0.05, LS3),
    "kd-ls-w3-lr0.02": Row("KD-LS (T 2, kd 3, ce 1), lr 0.02", "kd-ls", 0.02, LS3),
    "kd-ls-w3": Row("KD-LS (T 2, kd 3, ce 1), lr 0.01", "kd-ls", 0.01, LS3),
}


def prune_student(teacher: nn.Module, data, budget: float, calibration: list) -> tuple[nn.Module, nn.Module]:
    """(pruned student without BatchNorm re-estimation, the same with it)."""
    x0 = torch.zeros(data.input_size)
    target = int(profile(teacher).flops * budget)
    raw = pruning.prune(teacher, x0, target_flops=target, recalibrate_bn=False).model
    return raw, recalibrate_bn(copy.deepcopy(raw), calibration)  # as prune(calibration=...), one search


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--limit-test", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--budget", type=float, default=0.25, help="student FLOPs as a fraction of the teacher's")
    p.add_argument("--views", type=int, default=4, help="teacher-cache views per training image")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    args = p.parse_args(argv)

    teacher = load_model(args.teacher).eval()
    data = load_dataset("imagefolder", args.data_dir, limit_train=args.limit_train, limit_test=args.limit_test,
                        progress=False)
    data.mean, data.std = tuple(teacher.meta["mean"]), tuple(teacher.meta["std"])
    print(f"{Hardware.detect('auto', 'cpu').describe()}; {len(data.train)} training / {len(data.test)} test images")
    _, test = make_loaders(data, args.batch_size)
    calib = BatchIterator(subset(data.train, 1024), args.batch_size, train=False, mean=data.mean, std=data.std)
    raw, student = prune_student(teacher, data, args.budget, list(calib))
    t_acc = evaluate(teacher, test).accuracy
    print(f"teacher {t_acc:.2f} % ({profile(teacher).flops:,} flops); pruned student {profile(student).flops:,} "
          f"flops: {evaluate(raw, test).accuracy:.2f} % right after pruning, {evaluate(student, test).accuracy:.2f} % "
          f"after BatchNorm re-estimation on 1,024 training images")

    results: dict[str, list[tuple[float, float]]] = {}
    for seed in range(args.seeds):
        train = BatchIterator(data.train, args.batch_size, train=True, mean=data.mean, std=data.std, seed=seed)
        cache, reused = load_or_build(teacher, train, args.views, seed=seed, progress=False)
        print(f"seed {seed}: teacher cache {'reused' if reused else f'built in {cache.seconds:.0f} s'}", flush=True)
        for key in args.rows.split(","):
            row = ROWS[key]
            torch.manual_seed(seed)
            train.generator.manual_seed(seed)
            model = copy.deepcopy(student)
            loss = CrossEntropy() if row.loss == "ce" else create_loss(row.loss, **row.args)
            batches = train if row.loss == "ce" else CachedBatchIterator(cache, train)
            start = time.perf_counter()
            fit_model(model, batches, epochs=args.epochs, lr=row.lr, loss=loss,
                      schedule=row.schedule, progress=False)
            acc = evaluate(model, test).accuracy
            results.setdefault(key, []).append((acc, time.perf_counter() - start))
            print(f"  {row.name:45s} {acc:6.2f} %  {results[key][-1][1]:6.0f} s", flush=True)

    means = {key: statistics.mean(a for a, _ in runs) for key, runs in results.items()}
    ce_rows = {ROWS[key].lr: key for key in results if ROWS[key].loss == "ce"}
    best_ce = max((means[k] for k in ce_rows.values()), default=None)
    print(f"\n| fine-tuning ({args.epochs} epochs, SGD + cosine) | accuracy % | Δ vs CE at the same lr "
          f"| Δ vs the best CE row | wall s |")
    print("|---|---:|---:|---:|---:|")
    for key, runs in results.items():
        accs = [a for a, _ in runs]
        std = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        distill = ROWS[key].loss != "ce"
        same_lr = ce_rows.get(ROWS[key].lr)
        delta = f"{means[key] - means[same_lr]:+.2f}" if distill and same_lr else ""
        delta_best = f"{means[key] - best_ce:+.2f}" if distill and best_ce is not None else ""
        print(f"| {ROWS[key].name} | {means[key]:.2f}{std} | {delta} | {delta_best} | "
              f"{statistics.mean(s for _, s in runs):.0f} |")


if __name__ == "__main__":
    run_main(main)
