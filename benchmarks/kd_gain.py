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

A finished cell is reused only when it was measured as this run would measure it: same teacher file (sha256), same
recipe and optimizer (a cell without one was SGD's) and same images (the sha256 of their names and sizes; a cell
from before that was recorded names its --data-dir). Otherwise the run stops in one line naming the cell and the
difference, before any cell runs: committed measurements are never silently replaced or mixed. Pass another --tag, or
move the cell away to measure it again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from kd.losses import LOSSES
from kd.precision import Hardware
from recipes import prune_then_distill
from recipes.plumbing.config import OneLineParser, parse_config
from recipes.plumbing.errors import run_main
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


def _name(cell: tuple[int, int, str, float, int, str], tag: str) -> str:
    flops, epochs, loss, lr, seed, init = cell
    return cell_name(flops, epochs, loss, lr, seed, tag, init)


def run_cell(args: argparse.Namespace, flops: int, epochs: int, loss: str, lr: float, seed: int, init: str,
             inputs: dict[str, str]) -> dict:
    """One ``prune_then_distill`` run (``--student-init init``); its record (with ``inputs``,
    :func:`current_inputs`) is written to ``RESULTS/<cell>.json``."""
    name = cell_name(flops, epochs, loss, lr, seed, args.tag, init)
    out = Path(args.out) / name
    words = ["--alpha", "0"] if loss == "ce" else ["--kd-loss", loss]
    words += ["--student-init", init] if init != "pruned" else []
    argv = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--teacher", *args.teacher, "--recipe",
            args.recipe, "--target-flops", str(flops), "--epochs", str(epochs), "--finetune-lr", str(lr),
            "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress", "--no-latency", *words,
            *args.extra]
    start = time.perf_counter()
    result = prune_then_distill.main(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    student, teacher = result.reports[-1], next(r for r in result.reports if r.name == "teacher")
    record = {"cell": name, "flops_target": flops, "epochs": epochs, "loss": loss, "lr": lr, "seed": seed,
              "init": init, "recipe": args.recipe, **inputs, "accuracy": student.accuracy,
              "pruned_accuracy": result.reports[-2].accuracy, "teacher_accuracy": teacher.accuracy,
              "flops": student.flops, "param_size_kb": student.param_size_kb, "wall_s": wall,
              "hardware": report.get("hardware"),
              "command": "python recipes/prune_then_distill.py " + " ".join(argv)}
    write_json(RESULTS / f"{name}.json", record)
    return record


def data_sha256(data_dir: str | Path) -> str:
    """A sha256 of the relative path and size of every file under ``data_dir`` (hidden ones left out): the same for
    a copy of the images on another machine, different when an image is added, removed, renamed or resized."""
    root, entries = Path(data_dir), []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # pruned in place: os.walk then skips them
        entries += [(str(Path(folder, f).relative_to(root)), Path(folder, f).stat().st_size) for f in files
                    if not f.startswith(".")]
    return hashlib.sha256(repr(sorted(entries)).encode()).hexdigest()


def current_inputs(args: argparse.Namespace) -> dict[str, str]:
    """What the cells of this run are measured from: the teacher file's sha256 (several teachers, an ensemble: their
    sha256s joined by ``+`` in the order given, the first being the one pruned), the data folder and its
    :func:`data_sha256`.

    Raises:
        ValueError: a missing teacher file or data folder.
    """
    for teacher in args.teacher:
        if not Path(teacher).is_file():
            raise ValueError(f"--teacher {teacher!r} is not a file; pass a model file (e.g. "
                             "benchmarks/weights/fast_cnn_cifar10_e40.pt)")
    if not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir!r} is not a folder; pass the images in ImageFolder layout")
    return {"teacher_sha256": "+".join(file_sha256(t) for t in args.teacher), "data_dir": args.data_dir,
            "data_sha256": data_sha256(args.data_dir), "optimizer": cell_optimizer(args)}


def cell_optimizer(args: argparse.Namespace) -> str:
    """The optimizer the cells' students fine-tune with, as prune_then_distill.py reads it from ``--recipe`` and the
    words after ``--`` (``--optimizer X`` or ``--optimizer=X``; else the recipe's)."""
    return parse_config(prune_then_distill.PruneThenDistillConfig, ["--recipe", args.recipe, *args.extra]).optimizer


def _short(teacher_sha256: object) -> str:
    """``a teacher with sha256 0123456789ab...`` or, for an ensemble's ``a+b``, ``2 teachers with sha256 a...+b...``."""
    shas = str(teacher_sha256).split("+")
    which = "a teacher" if len(shas) == 1 else f"{len(shas)} teachers"
    return f"{which} with sha256 " + "+".join(f"{sha[:12]}..." for sha in shas)


def reuse_difference(record: dict, args: argparse.Namespace, inputs: dict[str, str]) -> str | None:
    """How a finished cell's record differs from what this run would measure (teacher, recipe, images), or None.
    A cell from before ``data_sha256`` was recorded is compared by the ``--data-dir`` its command names."""
    if record.get("teacher_sha256") != inputs["teacher_sha256"]:
        return (f"it was measured from {_short(record.get('teacher_sha256'))}, --teacher {' '.join(args.teacher)!r} "
                f"is {_short(inputs['teacher_sha256'])}")
    if record.get("recipe", args.recipe) != args.recipe:
        return f"it was measured with --recipe {record['recipe']}, this run has --recipe {args.recipe}"
    measured_with = record.get("optimizer", "sgd")  # every cell before Muon was SGD's
    if measured_with != inputs["optimizer"]:
        return (f"its student trained with --optimizer {measured_with}, this run's with "
                f"--optimizer {inputs['optimizer']}")
    if "data_sha256" in record:
        if record["data_sha256"] != inputs["data_sha256"]:
            return (f"it was measured on other images (data sha256 {record['data_sha256'][:12]}... in "
                    f"{record.get('data_dir')!r}; {inputs['data_sha256'][:12]}... in --data-dir {args.data_dir!r})")
        return None
    words = shlex.split(record.get("command", ""))
    recorded = words[words.index("--data-dir") + 1] if "--data-dir" in words[:-1] else None
    if recorded is None or Path(recorded).resolve() != Path(args.data_dir).resolve():
        return (f"it was measured on --data-dir {recorded!r} (as written then, from the folder it ran in), this run "
                f"has --data-dir {args.data_dir!r}")
    return None


CELL_KEYS = ("flops_target", "epochs", "loss", "lr", "accuracy", "wall_s")


def read_cell(path: Path) -> dict:
    """A finished cell's record.

    Raises:
        ValueError: naming the file when it is not a cell's JSON object (truncated, edited, another file).
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({getattr(err, 'msg', err)}): a truncated or edited cell; "
                         "delete it to measure the cell again") from None
    missing = [k for k in CELL_KEYS if k not in record] if isinstance(record, dict) else list(CELL_KEYS)
    if missing:
        raise ValueError(f"{str(path)!r} is not a finished cell's record (no {', '.join(missing)}); delete it to "
                         "measure the cell again")
    return record


def load_cells(tags: list[str]) -> list[dict]:
    """The finished cells' records of every tag in ``tags`` (:func:`read_cell`)."""
    return [read_cell(p) for tag in tags for p in sorted(RESULTS.glob(f"{tag}_*.json"))]


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


def comma_list(kind: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: ``"2,8"`` → ``[2, 8]`` with every item read by ``kind``; a bad item is a one-line error."""
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             f"{getattr(kind, '__name__', 'value')}s") from None
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", nargs="+", default=["benchmarks/weights/fast_cnn_cifar10_e40.pt"],
                        help="the teacher file, or several: the first is pruned, the mean of their logits teaches")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    parser.add_argument("--recipe", default="fast", choices=("classic", "fast"))
    parser.add_argument("--flops", type=comma_list(int), default="31269888", help="comma-separated FLOPs targets")
    parser.add_argument("--epochs", type=comma_list(int), default="2,8", help="comma-separated recovery budgets")
    parser.add_argument("--losses", type=comma_list(str), default="ce,kd",
                        help="comma-separated: ce or registered distillation losses")
    parser.add_argument("--lrs", type=comma_list(float), default="0.1", help="comma-separated fine-tuning rates")
    parser.add_argument("--seeds", type=comma_list(int), default="0")
    parser.add_argument("--init", type=comma_list(str), default="pruned",
                        help="comma-separated student starts: pruned (the teacher's weights), scratch (the pruned "
                        "architecture re-initialised, Liu et al. 2019's Scratch-E)")
    parser.add_argument("--tag", default="fast", help="prefix of the result files (one per teacher/recipe)")
    parser.add_argument("--out", default="runs/kd_gain")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished cells")
    parser.add_argument("--table-tags", help="comma-separated tags whose cells the table merges (default: --tag)")
    parser.add_argument("--plot", help="also draw Δ against the FLOPs target, one line per budget, into this .svg")
    parser.add_argument("extra", nargs="*", help="more words for prune_then_distill.py after --")
    args = parser.parse_args(argv)
    unknown = [loss for loss in args.losses if loss != "ce" and loss not in LOSSES]
    if unknown:
        raise ValueError(f"--losses: unknown {', '.join(unknown)}; use ce or {', '.join(LOSSES)}")
    unknown = [i for i in args.init if i not in prune_then_distill.STUDENT_INITS]
    if unknown:
        raise ValueError(f"--init {','.join(unknown)}: choose from {', '.join(prune_then_distill.STUDENT_INITS)}")
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise ValueError(f"--plot {args.plot!r}: the folder {str(Path(args.plot).parent)!r} does not exist")
    print(Hardware.detect("auto", "cpu").describe())
    tags = (args.table_tags or args.tag).split(",")
    if not args.table:
        run_missing(args)
    shown = load_cells(tags)
    print(table(shown))
    if four_way(shown):
        print("\n" + four_way(shown))
    if args.plot:
        Path(args.plot).write_text(plot_svg(shown, f"When distillation pays ({', '.join(tags)})"))
        print(f"wrote {args.plot}")


def run_missing(args: argparse.Namespace) -> None:
    """Runs the grid's cells that have no result yet, after checking that every finished one may be reused
    (:func:`reuse_difference`).

    Raises:
        ValueError: naming the first finished cell measured from other inputs, and the difference.
    """
    grid = [(f, e, loss, lr, s, init) for f in args.flops for e in args.epochs for loss in args.losses
            for lr in args.lrs for s in args.seeds for init in args.init]
    inputs = current_inputs(args)
    paths = {c: RESULTS / f"{_name(c, args.tag)}.json" for c in grid}
    done = {c: read_cell(p) for c, p in paths.items() if p.is_file()}
    for c, record in done.items():
        difference = reuse_difference(record, args, inputs)
        if difference is not None:
            raise ValueError(f"cell {_name(c, args.tag)} cannot be reused: {difference}; pass another --tag, "
                             f"or move {str(paths[c])!r} away to measure it again")
    missing = [c for c in grid if c not in done]
    per_epoch = [d["wall_s"] / d["epochs"] for d in load_cells([args.tag])]
    cost = f", about {statistics.mean(per_epoch) / 60:.1f} min per epoch here so far" if per_epoch else ""
    print(f"{len(grid) - len(missing)} of {len(grid)} cells done; missing: {len(missing)}{cost}")
    for c in missing:
        print(f"cell {_name(c, args.tag)}", flush=True)
        run_cell(args, *c, inputs)


if __name__ == "__main__":
    run_main(main)
