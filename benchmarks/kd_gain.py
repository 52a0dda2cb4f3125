"""When does distillation pay? Δ = best distilled − best cross-entropy, per compression and recovery budget.

Every cell is the documented command — ``recipes/prune_then_distill.py`` run in this process from one teacher file —
for one compression (a FLOPs target), one recovery budget (epochs), one loss (``ce`` = ``--alpha 0``, or a
registered distillation loss), one fine-tuning rate and one seed. Each finished cell writes one JSON file under
``benchmarks/results/kd_gain/`` (committed), so the grid can be completed over several sessions; the script prints
which cells are missing and what a cell has cost so far on this CPU, then the table.

    python benchmarks/kd_gain.py --teacher benchmarks/weights/fast_cnn_cifar10_e40.pt \\
        --data-dir ../shared/data/cifar10 --flops 31269888 --epochs 2,8 --losses ce,kd --lrs 0.1,0.3 --seeds 0 \\
        --tag cpu-t40
    python benchmarks/kd_gain.py --table --tag h200-t40 --plot benchmarks/results/kd_gain_h200-t40.svg

Δ per (compression, epochs): the best distilled row's mean minus the best cross-entropy row's mean, each at its own
best rate (mean over the seeds run), over the cells whose student starts from the pruned teacher's weights.

The scratch arm (``--init scratch``, or ``--init pruned,scratch`` for both; ``"init": "scratch"`` in the cell's JSON,
cells without the key are pruned ones) trains the same pruned architecture from fresh weights for the same epochs with
the same losses (``prune_then_distill.py --student-init scratch``: Liu et al., ICLR 2019, "Rethinking the value of
network pruning", Scratch-E). ``--table`` then adds the four-way table: pruned + KD, pruned + CE, scratch + KD,
scratch + CE, and what the pruned start gained over the scratch one:

    python benchmarks/kd_gain.py --teacher benchmarks/weights/fast_cnn_cifar10_e40.pt \\
        --data-dir ../shared/data/cifar10 --flops 31269888 --epochs 20 --losses ce,kd --lrs 0.3 --seeds 0,1,2 \\
        --init pruned,scratch --tag h200-t40
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from kd.precision import Hardware
from recipes import prune_then_distill
from recipes.plumbing.inputs import file_sha256
from recipes.plumbing.report import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "kd_gain"


def cell_name(flops: int, epochs: int, loss: str, lr: float, seed: int, tag: str, init: str = "pruned") -> str:
    """A cell's file name; a scratch cell's loss is written ``scratch-<loss>`` (a pruned cell's name is unchanged
    from before the scratch arm)."""
    arm = loss if init == "pruned" else f"{init}-{loss}"
    return f"{tag}_f{flops}_e{epochs}_{arm}_lr{lr:g}_s{seed}"


def cell_init(record: dict) -> str:
    """``pruned`` or ``scratch``: how the cell's student started (cells from before the scratch arm were pruned)."""
    return record.get("init", "pruned")


def run_cell(args: argparse.Namespace, flops: int, epochs: int, loss: str, lr: float, seed: int,
             init: str = "pruned") -> dict:
    """One ``prune_then_distill`` run (``--student-init init``); its record is written to ``RESULTS/<cell>.json``."""
    name = cell_name(flops, epochs, loss, lr, seed, args.tag, init)
    out = Path(args.out) / name
    words = ["--alpha", "0"] if loss == "ce" else ["--kd-loss", loss]
    words += ["--student-init", init] if init != "pruned" else []
    argv = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--teacher", args.teacher, "--recipe",
            args.recipe, "--target-flops", str(flops), "--epochs", str(epochs), "--finetune-lr", str(lr),
            "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress", "--no-latency", *words,
            *args.extra]
    start = time.perf_counter()
    result = prune_then_distill.main(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    student, teacher = result.reports[-1], next(r for r in result.reports if r.name == "teacher")
    record = {"cell": name, "flops_target": flops, "epochs": epochs, "loss": loss, "lr": lr, "seed": seed,
              "init": init, "recipe": args.recipe, "teacher_sha256": file_sha256(args.teacher),
              "accuracy": student.accuracy, "pruned_accuracy": result.reports[-2].accuracy,
              "teacher_accuracy": teacher.accuracy,
              "flops": student.flops, "param_size_kb": student.param_size_kb, "wall_s": wall,
              "hardware": report.get("hardware"),
              "command": "python recipes/prune_then_distill.py " + " ".join(argv)}
    write_json(RESULTS / f"{name}.json", record)
    return record


def load_cells(tags: list[str]) -> list[dict]:
    """The finished cells' records of every tag in ``tags``."""
    return [json.loads(p.read_text()) for tag in tags for p in sorted(RESULTS.glob(f"{tag}_*.json"))]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def best_per_loss(cell: list[dict]) -> dict[str, tuple[float, float, list[float]]]:
    """loss → (mean accuracy, lr, accuracies over seeds) at the rate whose mean is highest, for one grid cell."""
    best: dict[str, tuple[float, float, list[float]]] = {}
    for loss in sorted({r["loss"] for r in cell}):
        for lr in sorted({r["lr"] for r in cell if r["loss"] == loss}):
            accs = [r["accuracy"] for r in cell if (r["loss"], r["lr"]) == (loss, lr)]
            if loss not in best or statistics.mean(accs) > best[loss][0]:
                best[loss] = (statistics.mean(accs), lr, accs)
    return best


def deltas(records: list[dict]) -> dict[tuple[int, int], tuple[dict, float | None]]:
    """(flops target, epochs) → (:func:`best_per_loss`, Δ = best distilled mean − best CE mean, or None), over the
    pruned cells."""
    records = [r for r in records if cell_init(r) == "pruned"]
    out = {}
    for flops, epochs in sorted({(r["flops_target"], r["epochs"]) for r in records}):
        best = best_per_loss([r for r in records if (r["flops_target"], r["epochs"]) == (flops, epochs)])
        distilled = [m for loss, (m, _, _) in best.items() if loss != "ce"]
        out[flops, epochs] = (best, max(distilled) - best["ce"][0] if distilled and "ce" in best else None)
    return out


def table(records: list[dict]) -> str:
    """One line per (compression, epochs): every loss at its best rate, and Δ (best distilled − best CE)."""
    lines = ["| flops target | epochs | loss: mean at its best lr (seeds) | Δ best distilled − best CE |",
             "|---|---|---|---|"]
    for (flops, epochs), (best, delta) in deltas(records).items():
        shown = "; ".join(f"{loss} {_mean_std(accs)} at {lr:g} ({len(accs)})" for loss, (_, lr, accs) in best.items())
        lines.append(f"| {flops:,} | {epochs} | {shown} | {'–' if delta is None else f'{delta:+.2f}'} |")
    return "\n".join(lines)


def four_way(records: list[dict]) -> str:
    """Pruned + KD, pruned + CE, scratch + KD, scratch + CE per (compression, epochs) that has scratch cells (Liu et
    al. 2019's Scratch-E: the pruned architecture re-initialised, trained as long): each at its best rate, KD the
    best distillation loss; the last column is the best pruned mean − the best scratch mean (what starting from the
    teacher's weights bought). Empty when no cell is a scratch one."""
    keys = sorted({(r["flops_target"], r["epochs"]) for r in records if cell_init(r) == "scratch"})
    if not keys:
        return ""
    lines = ["| flops target | epochs | pruned + KD | pruned + CE | scratch + KD | scratch + CE | pruned − scratch |",
             "|---|---|---|---|---|---|---|"]
    for flops, epochs in keys:
        shown, best = [], {}
        for init in ("pruned", "scratch"):
            arm = best_per_loss([r for r in records if (r["flops_target"], r["epochs"], cell_init(r)) ==
                                 (flops, epochs, init)])
            kd = max(((m, loss) for loss, (m, _, _) in arm.items() if loss != "ce"), default=None)
            shown += [_arm_cell(arm, kd[1]) if kd else "–", _arm_cell(arm, "ce") if "ce" in arm else "–"]
            best[init] = max((m for m, _, _ in arm.values()), default=None)
        gain = "–" if None in best.values() else f"{best['pruned'] - best['scratch']:+.2f}"
        lines.append(f"| {flops:,} | {epochs} | {' | '.join(shown)} | {gain} |")
    return "\n".join(lines)


def _arm_cell(best: dict[str, tuple[float, float, list[float]]], loss: str) -> str:
    _, lr, accs = best[loss]
    return f"{_mean_std(accs)} ({loss} at {lr:g}, {len(accs)})"


def plot_svg(records: list[dict], title: str) -> str:
    """Δ (points) against the FLOPs target (log scale), one line per recovery budget, as a standalone SVG."""
    points = {k: d for k, (_, d) in deltas(records).items() if d is not None}
    if not points:
        raise ValueError("no cell has both cross-entropy and a distillation loss: nothing to plot")
    w, h, m, right = 640, 340, 60, 120  # the right margin holds the legend
    xs = sorted({math.log2(f) for f, _ in points})
    lo, hi = min(-1.0, *points.values()), max(1.0, *points.values())
    x_of = (lambda v: m + (v - xs[0]) / (xs[-1] - xs[0]) * (w - m - right)) if len(xs) > 1 else (lambda v: m)
    y_of = lambda d: h - m - (d - lo) / (hi - lo) * (h - 2 * m)  # noqa: E731
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle">{title}</text>',
             f'<line x1="{m}" x2="{w - right}" y1="{y_of(0):.1f}" y2="{y_of(0):.1f}" stroke="gray" '
             'stroke-dasharray="4"/>',
             f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">student FLOPs target (log scale)</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
             'Δ = best distilled − best CE (points)</text>']
    for v in (lo, 0.0, hi):
        parts.append(f'<text x="{m - 6}" y="{y_of(v) + 4:.1f}" text-anchor="end">{v:+.1f}</text>')
    for x in xs:
        parts.append(f'<text x="{x_of(x):.1f}" y="{h - m + 16}" text-anchor="middle">{2 ** x / 1e6:.1f} M</text>')
    for i, epochs in enumerate(sorted({e for _, e in points})):
        line = sorted((math.log2(f), d) for (f, e), d in points.items() if e == epochs)
        color = colors[i % len(colors)]
        coords = " ".join(f"{x_of(x):.1f},{y_of(d):.1f}" for x, d in line)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{x_of(x):.1f}" cy="{y_of(d):.1f}" r="3" fill="{color}"/>' for x, d in line]
        parts.append(f'<text x="{w - right + 16}" y="{m + 16 * i}" fill="{color}">{epochs} epochs</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def _name(cell: tuple[int, int, str, float, int, str], tag: str) -> str:
    flops, epochs, loss, lr, seed, init = cell
    return cell_name(flops, epochs, loss, lr, seed, tag, init)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="benchmarks/weights/fast_cnn_cifar10_e40.pt")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--flops", default="31269888", help="comma-separated FLOPs targets")
    parser.add_argument("--epochs", default="2,8", help="comma-separated recovery budgets")
    parser.add_argument("--losses", default="ce,kd", help="comma-separated: ce or registered distillation losses")
    parser.add_argument("--lrs", default="0.1", help="comma-separated fine-tuning rates")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--init", default="pruned", help="comma-separated student starts: pruned (the teacher's "
                        "weights), scratch (the pruned architecture re-initialised, Liu et al. 2019's Scratch-E)")
    parser.add_argument("--tag", default="fast", help="prefix of the result files (one per teacher/recipe)")
    parser.add_argument("--out", default="runs/kd_gain")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished cells")
    parser.add_argument("--table-tags", help="comma-separated tags whose cells the table merges (default: --tag)")
    parser.add_argument("--plot", help="also draw Δ against the FLOPs target, one line per budget, into this .svg")
    parser.add_argument("extra", nargs="*", help="more words for prune_then_distill.py after --")
    args = parser.parse_args(argv)
    print(Hardware.detect("auto", "cpu").describe())
    inits = args.init.split(",")
    unknown = [i for i in inits if i not in prune_then_distill.STUDENT_INITS]
    if unknown:
        parser.error(f"--init {','.join(unknown)}: choose from {', '.join(prune_then_distill.STUDENT_INITS)}")
    grid = [(int(f), int(e), loss, float(lr), int(s), init) for f in args.flops.split(",")
            for e in args.epochs.split(",") for loss in args.losses.split(",") for lr in args.lrs.split(",")
            for s in args.seeds.split(",") for init in inits]
    missing = [c for c in grid if not (RESULTS / f"{_name(c, args.tag)}.json").is_file()]
    if not args.table:
        per_epoch = [d["wall_s"] / d["epochs"] for d in load_cells([args.tag])]
        cost = f", about {statistics.mean(per_epoch) / 60:.1f} min per epoch here so far" if per_epoch else ""
        print(f"{len(grid) - len(missing)} of {len(grid)} cells done; missing: {len(missing)}{cost}")
        for c in missing:
            print(f"cell {_name(c, args.tag)}", flush=True)
            run_cell(args, *c)
    tags = (args.table_tags or args.tag).split(",")
    shown = load_cells(tags)
    print(table(shown))
    if four_way(shown):
        print("\n" + four_way(shown))
    if args.plot:
        Path(args.plot).write_text(plot_svg(shown, f"When distillation pays ({', '.join(tags)})"))
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
