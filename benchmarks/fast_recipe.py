"""How fast does a teacher reach 90 % and 93 % on CIFAR-10? The classic recipe against the fast one, per epoch.

Each run is the documented command, ``recipes/train_teacher.py`` in this process, on all 50,000 training images and
every test image, and writes one JSON file under ``benchmarks/results/`` (the accuracy after every epoch, its seconds,
the test-time-augmented accuracy, the CPU, precision and threads, the command). Finished runs are skipped, so the
grid can be completed over several sessions; ``--table`` only prints what is there.

    python benchmarks/fast_recipe.py --data-dir ../shared/data/cifar10 --runs fast,classic --seeds 0
    python benchmarks/fast_recipe.py --table

Prints, per run: epochs and training minutes to 85, 88, 89.8, 90 and 93 % (single view), final single-view and TTA
accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kd.precision import Hardware
from models.checkpoint import read_model_file
from recipes import train_teacher
from recipes.plumbing.report import write_json
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main

RESULTS = Path(__file__).resolve().parent / "results"
WIDE = '{"widths": [128, 128, 384, 384, 384, 384]}'  # airbench95's widths in fast_cnn's three blocks
# run name → the recipe's command-line words (the arch is fast_cnn, the network airbench94 measured)
# "fast" and the runs built on it mean today's --recipe fast; a result file's "command" says what ran (runs before
# issue 28 had the EMA, zero padding and the old head: "fast-old" below)
RUNS = {
    "fast": ["--recipe", "fast"],
    "fast-decay-bn": ["--recipe", "fast", "--decay-norm-and-bias"],  # airbench decays BatchNorm biases too
    "fast-12": ["--recipe", "fast", "--epochs", "12"],
    "fast-20": ["--recipe", "fast", "--epochs", "20"],
    "fast-40": ["--recipe", "fast", "--epochs", "40"],
    "fast-reflect": ["--recipe", "fast", "--pad-mode", "reflect"],  # airbench pads by reflection
    "fast-wide-12": ["--recipe", "fast", "--epochs", "12", "--model-args", WIDE],
    "classic": ["--recipe", "classic", "--epochs", "10", "--tta", "flip-translate"],
    "classic-30": ["--recipe", "classic", "--tta", "flip-translate"],
}
# airbench94's pieces that the fast recipe lacked before issue 28 and now sets (RECIPES["fast"]): lookahead instead of
# the EMA, BatchNorm momentum 0.4 and eps 1e-12, the stem's bias trained for 3 epochs, reflect padding, MaxPool2d(3)
# head and a bias-free classifier. "fast-airbench" spells them out with SGD (the runs made while they were options,
# before the recipe took Muon); "fast-10" is issue 28's command word for word (Muon since then); "fast-muon" the
# recipe with Muon spelled out; "fast-old" undoes them (issue 18's recipe, on today's code) and each
# "fast-old+<piece>" adds one back: the per-piece ablation.
AIRBENCH_ARGS = '{"bn_eps": 1e-12, "head_pool_mode": "max3", "classifier_bias": false}'
AIRBENCH = ["--lookahead", "--ema", "0", "--bn-momentum", "0.4", "--stem-bias-epochs", "3", "--pad-mode", "reflect"]
OLD_ARGS = {"bn_eps": 1e-5, "head_pool_mode": "max", "classifier_bias": True}
OLD = ["--recipe", "fast", "--optimizer", "sgd", "--no-lookahead", "--ema", "0.99", "--bn-momentum", "0",
       "--stem-bias-epochs", "0", "--pad-mode", "zeros"]


def _old_with(*words: str, **arch: object) -> list[str]:
    """issue 18's fast recipe with some of airbench's pieces put back (later words override earlier ones)."""
    return [*OLD, *words, "--model-args", json.dumps({**OLD_ARGS, **arch})]


RUNS.update({
    "fast-airbench": ["--recipe", "fast", "--optimizer", "sgd", *AIRBENCH, "--model-args", AIRBENCH_ARGS],
    "fast-10": ["--recipe", "fast", "--epochs", "10"],
    "fast-muon": ["--recipe", "fast", "--epochs", "10", "--optimizer", "muon"],
    "fast-old": _old_with(),
    "fast-old+lookahead": _old_with("--lookahead", "--ema", "0"),
    "fast-old+bn": _old_with("--bn-momentum", "0.4", bn_eps=1e-12),
    "fast-old+stem-bias": _old_with("--stem-bias-epochs", "3"),
    "fast-old+head": _old_with(head_pool_mode="max3", classifier_bias=False),
    "fast-old+reflect": _old_with("--pad-mode", "reflect"),
    # issue 29's candidates for a teacher of >= 92 %: longer runs of fast_cnn and of airbench95's widths (GPU work,
    # benchmarks/device_sweep.py --grid strong; on 2 CPU cores, estimated by flops from a 17-minute 10-epoch fast_cnn
    # run: 2.3, 2.9 and 5.7 hours)
    "fast-80": ["--recipe", "fast", "--epochs", "80"],
    "fast-wide-40": ["--recipe", "fast", "--epochs", "40", "--model-args", WIDE],
    "fast-wide-80": ["--recipe", "fast", "--epochs", "80", "--model-args", WIDE],
    # with airbench96's augmentation for long runs (4-pixel translation, 12-pixel cutout): the run issue 29 trains on
    # the CPU over several sittings (benchmarks/checkpoints/README.md): benchmarks/weights/fast_cnn_wide_cifar10_e40.pt
    "fast-wide-40-cutout": ["--recipe", "fast", "--epochs", "40", "--pad", "4", "--cutout", "12", "--model-args", WIDE],
})
THRESHOLDS = (85.0, 88.0, 89.8, 90.0, 93.0)


def run_name(run: str, arch: str, seed: int, tag: str = "") -> str:
    """``<arch>_<run>_seed<seed>[_<tag>]``: the tag names another machine's runs (e.g. ``h200``)."""
    return f"{arch}_{run}_seed{seed}{'_' + tag if tag else ''}"


def result_path(run: str, arch: str, seed: int, tag: str = "") -> Path:
    return RESULTS / f"teacher_{run_name(run, arch, seed, tag)}.json"


def one_run(run: str, args: argparse.Namespace, seed: int) -> dict:
    """Trains one teacher with the recipe's command and returns its record (also written to its JSON file)."""
    out = Path(args.out) / run_name(run, args.arch, seed, args.tag)
    argv = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--arch", args.arch, "--seed", str(seed),
            "--out", str(out), "--overwrite", "--no-progress", *RUNS[run], *args.extra]
    start = time.perf_counter()
    train_teacher.main(argv)
    return save_record(out, run, args.arch, seed, argv, time.perf_counter() - start, args.tag)


def save_record(out: Path, run: str, arch: str, seed: int, argv: list[str], wall_s: float | None,
                tag: str = "") -> dict:
    """The record of the finished run in ``out`` (its report.json and the per-epoch history its teacher.pt keeps),
    written to :func:`result_path`."""
    saved = json.loads((out / "report.json").read_text())
    teacher = saved["models"]["teacher"]
    history = read_model_file(out / "teacher.pt")["meta"]["history"]
    record = {
        "run": f"{run}@{tag}" if tag else run, "arch": arch, "seed": seed,
        "command": "python recipes/train_teacher.py " + " ".join(argv),
        "hardware": saved.get("hardware"), "threads": torch.get_num_threads(), "wall_s": wall_s,
        "accuracy": teacher["accuracy"], "tta_accuracy": teacher.get("tta_accuracy"), "flops": teacher["flops"],
        "epochs": [{"epoch": h["epoch"], "test_accuracy": h["val_accuracy"], "seconds": h["seconds"],
                    "images_per_s": h["images_per_s"]} for h in history],
    }
    write_json(result_path(run, arch, seed, tag), record)
    return record


def reach(record: dict, threshold: float) -> tuple[int | None, float | None]:
    """(first epoch whose test accuracy is ≥ threshold, training minutes up to its end), or (None, None)."""
    minutes = 0.0
    for e in record["epochs"]:
        minutes += e["seconds"] / 60
        if e["test_accuracy"] >= threshold:
            return e["epoch"], minutes
    return None, None


def table(records: list[dict]) -> str:
    """A markdown table, one row per run name (mean ± std over seeds)."""
    lines = ["| run | seeds | epochs | " + " | ".join(f"epoch / min to {t:g} %" for t in THRESHOLDS)
             + " | final % | TTA % | train min |", "|---|---|---|" + "---|" * len(THRESHOLDS) + "---|---|---|"]
    for run in sorted({r["run"] for r in records}):
        rs = [r for r in records if r["run"] == run]
        cells = []
        for t in THRESHOLDS:
            hits = [reach(r, t) for r in rs]
            cells.append(", ".join(f"{e} / {m:.1f}" if e else "not reached" for e, m in hits))
        cells += [_mean_std([r["accuracy"] for r in rs]),
                  _mean_std([r["tta_accuracy"] for r in rs if r["tta_accuracy"] is not None]),
                  _mean_std([sum(e["seconds"] for e in r["epochs"]) / 60 for r in rs])]
        lines.append(f"| {run} | {len(rs)} | {len(rs[0]['epochs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(records: list[dict]) -> str:
    """Accuracy after each epoch, one line per run and seed."""
    return "\n".join(f"{r['run']} seed {r['seed']}: " + " ".join(f"{e['test_accuracy']:.2f}" for e in r["epochs"])
                     for r in sorted(records, key=lambda r: (r["run"], r["seed"])))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 in ImageFolder layout")
    parser.add_argument("--arch", default="fast_cnn")
    parser.add_argument("--runs", default="fast,classic", help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--out", default="runs/fast_recipe", help="where the runs' folders go")
    parser.add_argument("--tag", default="", help="suffix of the result files and runs (another machine's runs)")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished runs")
    parser.add_argument("extra", nargs="*", help="more words for train_teacher.py after --, e.g. -- --limit-train 500")
    args = parser.parse_args(argv)
    print(Hardware.detect("auto", "cpu").describe())
    if not args.table:
        for run in args.runs.split(","):
            for seed in map(int, args.seeds.split(",")):
                done = result_path(run, args.arch, seed, args.tag)
                if done.is_file():
                    print(f"{run} seed {seed}: done already ({done.name})")
                    continue
                one_run(run, args, seed)
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"teacher_{args.arch}_*.json"))]
    print(table(records))
    print(curves(records))


if __name__ == "__main__":
    run_main(main)
