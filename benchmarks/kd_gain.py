"""When does distillation pay? Δ = best distilled − best cross-entropy, per compression and recovery budget.

Every cell is the documented command — ``recipes/prune_then_distill.py`` run in this process from one teacher file —
for one compression (a FLOPs target), one recovery budget (epochs), one loss (``ce`` = ``--alpha 0``, or a
registered distillation loss), one fine-tuning rate and one seed. Each finished cell writes one JSON file under
``benchmarks/results/kd_gain/`` (committed), so the grid can be completed over several sessions; the script prints
which cells are missing and what a cell has cost so far on this CPU, then the table.

    python benchmarks/kd_gain.py --teacher benchmarks/weights/fast_cnn_cifar10.pt --data-dir ../shared/data/cifar10 \\
        --flops 31269888 --epochs 2,8 --losses ce,kd --lrs 0.1,0.3 --seeds 0
    python benchmarks/kd_gain.py --table

Δ per (compression, epochs): the best distilled row's mean minus the best cross-entropy row's mean, each at its own
best rate (mean over the seeds run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kd.precision import Hardware
from recipes import prune_then_distill
from recipes.plumbing.inputs import file_sha256
from recipes.plumbing.report import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "kd_gain"


def cell_name(flops: int, epochs: int, loss: str, lr: float, seed: int, tag: str) -> str:
    return f"{tag}_f{flops}_e{epochs}_{loss}_lr{lr:g}_s{seed}"


def run_cell(args: argparse.Namespace, flops: int, epochs: int, loss: str, lr: float, seed: int) -> dict:
    """One ``prune_then_distill`` run; its record is written to ``RESULTS/<cell>.json``."""
    name = cell_name(flops, epochs, loss, lr, seed, args.tag)
    out = Path(args.out) / name
    words = ["--alpha", "0"] if loss == "ce" else ["--kd-loss", loss]
    argv = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--teacher", args.teacher, "--recipe",
            args.recipe, "--target-flops", str(flops), "--epochs", str(epochs), "--finetune-lr", str(lr),
            "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress", "--no-latency", *words,
            *args.extra]
    start = time.perf_counter()
    result = prune_then_distill.main(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    student = result.reports[-1]
    record = {"cell": name, "flops_target": flops, "epochs": epochs, "loss": loss, "lr": lr, "seed": seed,
              "recipe": args.recipe, "teacher_sha256": file_sha256(args.teacher), "accuracy": student.accuracy,
              "pruned_accuracy": result.reports[1].accuracy, "teacher_accuracy": result.reports[0].accuracy,
              "flops": student.flops, "param_size_kb": student.param_size_kb, "wall_s": wall,
              "hardware": report.get("hardware"),
              "command": "python recipes/prune_then_distill.py " + " ".join(argv)}
    write_json(RESULTS / f"{name}.json", record)
    return record


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(records: list[dict]) -> str:
    """One line per (compression, epochs): every loss at its best rate, and Δ (best distilled − best CE)."""
    lines = ["| flops target | epochs | loss: mean at its best lr (seeds) | Δ best distilled − best CE |",
             "|---|---|---|---|"]
    for flops, epochs in sorted({(r["flops_target"], r["epochs"]) for r in records}):
        cell = [r for r in records if (r["flops_target"], r["epochs"]) == (flops, epochs)]
        best: dict[str, tuple[float, float, list[float]]] = {}
        for loss in sorted({r["loss"] for r in cell}):
            for lr in sorted({r["lr"] for r in cell if r["loss"] == loss}):
                accs = [r["accuracy"] for r in cell if (r["loss"], r["lr"]) == (loss, lr)]
                if loss not in best or statistics.mean(accs) > best[loss][0]:
                    best[loss] = (statistics.mean(accs), lr, accs)
        shown = "; ".join(f"{loss} {_mean_std(accs)} at {lr:g} ({len(accs)})" for loss, (_, lr, accs) in best.items())
        distilled = [m for loss, (m, _, _) in best.items() if loss != "ce"]
        delta = f"{max(distilled) - best['ce'][0]:+.2f}" if distilled and "ce" in best else "–"
        lines.append(f"| {flops:,} | {epochs} | {shown} | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="benchmarks/weights/fast_cnn_cifar10.pt")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--flops", default="31269888", help="comma-separated FLOPs targets")
    parser.add_argument("--epochs", default="2,8", help="comma-separated recovery budgets")
    parser.add_argument("--losses", default="ce,kd", help="comma-separated: ce or registered distillation losses")
    parser.add_argument("--lrs", default="0.1", help="comma-separated fine-tuning rates")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tag", default="fast", help="prefix of the result files (one per teacher/recipe)")
    parser.add_argument("--out", default="runs/kd_gain")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished cells")
    parser.add_argument("extra", nargs="*", help="more words for prune_then_distill.py after --")
    args = parser.parse_args(argv)
    print(Hardware.detect("auto", "cpu").describe())
    grid = [(int(f), int(e), loss, float(lr), int(s)) for f in args.flops.split(",") for e in args.epochs.split(",")
            for loss in args.losses.split(",") for lr in args.lrs.split(",") for s in args.seeds.split(",")]
    missing = [c for c in grid if not (RESULTS / f"{cell_name(*c, args.tag)}.json").is_file()]
    done = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{args.tag}_*.json"))]
    per_epoch = [d["wall_s"] / d["epochs"] for d in done]
    cost = f", about {statistics.mean(per_epoch) / 60:.1f} min per epoch here so far" if per_epoch else ""
    print(f"{len(grid) - len(missing)} of {len(grid)} cells done; missing: {len(missing)}{cost}")
    if not args.table:
        for c in missing:
            print(f"cell {cell_name(*c, args.tag)}", flush=True)
            done.append(run_cell(args, *c))
    print(table([d for d in done if d["cell"].startswith(args.tag)]))


if __name__ == "__main__":
    main()
