"""Prune + distil against the alternatives at one FLOPs budget on real CIFAR-10: every registered loss, 3 seeds.

Rows: the pruned student (one-shot L1 to ``--budget`` of the teacher's FLOPs, BatchNorm re-estimated) fine-tuned with
each registered distillation loss (at ``--finetune-lr``) and with cross-entropy at each of ``--ce-lrs`` (so the table
holds cross-entropy at its own best rate, not only at distillation's); a student of the same FLOPs trained from
scratch with ``--scratch-loss`` and with cross-entropy; the lab's progressive reduction (prune a step → fine-tune,
repeated). All rows share the teacher, the data, the epoch budget and, per seed, the batches; distillation reads the
teacher's logits from a teacher cache built once per seed. Prints a markdown table (mean ± std over seeds, wall time
per row) and writes the accuracy-vs-FLOPs plot.

CPU-sized (what fits in a few hours on 2 cores; see BENCHMARKS.md):

    python benchmarks/cifar10_budget.py --teacher runs/teacher/teacher.pt --limit-train 10000 --epochs 2 --seeds 3

GPU, the full setting (all 50,000 / 10,000 images, 30 epochs of recovery, 3 seeds):

    python benchmarks/cifar10_budget.py --teacher runs/teacher/teacher.pt --full --device cuda
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from kd.data import load_dataset
from kd.losses import LOSSES, create_loss
from kd.precision import Hardware
from kd.teacher_cache import load_or_build
from models import load_model, profile
from recipes.plumbing.compare import Summary, make_setup, markdown_table, plot, run_method, summarize
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="a teacher.pt written by recipes/train_teacher.py")
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.25, help="student FLOPs as a fraction of the teacher's")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="learning rate of pruned students")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of students trained from scratch")
    p.add_argument("--ce-lrs", default="0.01,0.05",
                   help="comma-separated learning rates of the pruned student's cross-entropy rows")
    p.add_argument("--views", type=int, default=4, help="teacher-cache views per training image")
    p.add_argument("--scratch-loss", default="kd", help="the distillation loss of the scratch row")
    p.add_argument("--full", action="store_true", help="all images, 30 epochs (a GPU setting)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/cifar10_budget")
    args = p.parse_args(argv)
    if args.full:
        args.limit_train, args.limit_test, args.epochs = None, None, 30

    teacher = load_model(args.teacher).eval()
    data = load_dataset("imagefolder", args.data_dir, limit_train=args.limit_train, limit_test=args.limit_test,
                        progress=False)
    data.mean, data.std = tuple(teacher.meta["mean"]), tuple(teacher.meta["std"])
    t = profile(teacher, data.input_size)
    target = int(t.flops * args.budget)
    print(f"{Hardware.detect('auto', args.device).describe()}; {len(data.train)} training / {len(data.test)} test "
          f"images; budget {target:,} flops, {args.epochs} epochs, {args.seeds} seeds")
    losses = [name for name in LOSSES if name != "ce"]
    ce_lrs = [float(lr) for lr in args.ce_lrs.split(",")]
    rows = [(f"l1+{name}", "l1+kd", name, args.finetune_lr) for name in losses]
    rows += [(f"l1+ce, lr {lr:g}" if len(ce_lrs) > 1 else "l1+ce", "l1+ce", None, lr) for lr in ce_lrs]
    rows += [(f"scratch+{args.scratch_loss}", "scratch+kd", args.scratch_loss, args.finetune_lr),
             ("scratch+ce", "scratch+ce", None, args.finetune_lr),
             ("progressive (activation steps + kd)", "activation-progressive", "kd", args.finetune_lr)]
    results = []
    for seed in range(args.seeds):
        setup = make_setup(teacher, data, target_flops=target, epochs=args.epochs, seed=seed, device=args.device,
                           lr=args.lr)  # each row sets setup.finetune_lr
        setup.cache, _ = load_or_build(teacher, setup.train, args.views, seed=seed, progress=False)
        for label, method, loss, finetune_lr in rows:
            setup.loss, setup.finetune_lr = (create_loss(loss) if loss else None), finetune_lr
            start = time.perf_counter()
            r = run_method(method, setup)
            r.method, r.model = label, None
            results.append(r)
            print(f"  seed {seed} {label:28s} {r.accuracy:6.2f} %  {time.perf_counter() - start:6.0f} s", flush=True)
    table_rows = [Summary("teacher", t.flops, t.param_size_kb, teacher.meta.get("accuracy", math.nan), 0.0,
                          math.nan, 1, "")] + summarize(results)
    print("\n" + markdown_table(table_rows, target))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.md").write_text(markdown_table(table_rows, target) + "\n")
    print(f"plot: {plot(table_rows, target, out / 'budget.png')}")


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    run_main(main)
