"""Compare the compression methods at one FLOPs budget and one epoch budget: markdown table + accuracy/FLOPs plot.

    python recipes/compare_methods.py --dataset imagefolder --data-dir ../shared/data/cifar10 \
        --teacher runs/teacher_c10/teacher.pt --budget 0.25 --epochs 3 --limit-train 4000 --limit-test 2000

Methods and what each does: see :mod:`recipes.plumbing.compare`. Writes OUT/compare.md (the table), OUT/compare.png,
OUT/report.json (every method × seed) and OUT/config.json; each method's training is a stage like every recipe's
(all shared options apply; checkpoints, metrics.csv and curves.png in OUT/<method>_seed<N>).
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import dataclasses
import math
from dataclasses import dataclass

from models.checkpoint import atomic_write_text
from recipes.plumbing import lock
from recipes.plumbing.compare import METHODS, Summary, make_setup, markdown_table, plot, run_method, summarize
from recipes.plumbing.config import BUDGET, COUNT, KDConfig, POSITIVE, VAL_SIZE, arg, parse_config, resolve_device
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import write_json
from recipes.plumbing.run import start_kd_run
from recipes.plumbing.teachers import check_single_teacher
from recipes.plumbing.training import stage_fitter


@dataclass
class CompareConfig(KDConfig):
    budget: float = arg(0.25, "FLOPs budget as a fraction of the teacher's FLOPs", limit=BUDGET)
    target_flops: int | None = arg(None, "FLOPs budget in thop MACs (overrides --budget)", limit=COUNT)
    methods: str = arg(",".join(METHODS), "comma-separated methods to run")
    seeds: int = arg(1, "run every method with seeds SEED .. SEED+N-1 and report mean ± std", limit=COUNT)
    val_size: float = arg(0.1, "fraction of the training images held out for the methods' own decisions",
                          limit=VAL_SIZE)
    finetune_lr: float = arg(0.01, "learning rate of pruned / transformed students (--lr is for scratch students)",
                             limit=POSITIVE)
    progressive_steps: int = arg(2, "prune → fine-tune steps of the progressive method (epochs split over them)",
                                 limit=COUNT)
    calibration_batches: int = arg(4, "training batches for activation importance, projections and BatchNorm",
                                   limit=COUNT)
    epochs: int = arg(3, "epoch budget of every method", limit=COUNT)
    out: str = arg("runs/compare", "output folder")


@lock.releasing
def main(argv: list[str] | None = None) -> list[Summary]:
    cfg = parse_config(CompareConfig, argv, description=__doc__.split("\n")[0])
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    check_single_teacher(cfg, "compare_methods.py")
    run = start_kd_run(cfg)
    data, out, teacher, teacher_report = run.data, run.out, run.teacher, run.teacher_report
    target = cfg.target_flops or int(cfg.budget * teacher_report.flops)
    print(f"{len(data.train)} training / {len(data.test)} test images; teacher {teacher_report.flops:,} FLOPs, "
          f"{teacher_report.accuracy:.2f} %; budget {target:,} FLOPs, {cfg.epochs} epochs")
    results = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        setup = make_setup(teacher, data, target_flops=target, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           pad=cfg.pad, flip=cfg.flip, pad_mode=cfg.pad_mode, cutout=cfg.cutout,
                           val_size=cfg.val_size,
                           calibration_batches=cfg.calibration_batches, seed=seed, device=resolve_device(cfg.device),
                           lr=cfg.lr, finetune_lr=cfg.finetune_lr,
                           loss=run.loss, progressive_steps=cfg.progressive_steps,
                           fit=stage_fitter(cfg, out))  # every method trains with every shared option
        for name in methods:
            r = run_method(name, setup)
            results.append(r)
            print(f"  seed {seed} {name:24s} {r.flops:>13,} FLOPs  {r.param_size_kb:9.1f} kB  {r.accuracy:6.2f} %  "
                  f"{r.seconds:6.0f} s  {r.note}", flush=True)
    rows = [Summary("teacher", teacher_report.flops, teacher_report.param_size_kb, teacher_report.accuracy, 0.0,
                    math.nan, 1, "")] + summarize(results)
    table = markdown_table(rows, target)
    print("\n" + table)
    atomic_write_text(table + "\n", out / "compare.md")
    print(f"\nplot: {plot(rows, target, out / 'compare.png')}")
    write_json(out / "report.json", {"target_flops": target, "teacher": dataclasses.asdict(teacher_report),
                                     "results": [r.to_dict() for r in results], "config": dataclasses.asdict(cfg)})
    return rows


if __name__ == "__main__":
    run_main(main)
