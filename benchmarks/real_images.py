"""Images above 32 px: timm's transforms against the in-memory tensor path, same network, data and epochs.

Each arm is one ``recipes/train_teacher.py`` run (in this process) on an image folder at ``--image-size``: ``tensor``
(decoded once, squashed to the square, pad-crop + flip of whole batches) or ``timm`` (each image at its own size
through timm's RandomResizedCrop + flip in DataLoader workers; evaluation: shorter side resized, centre crop). Its
record (test accuracy, training images/s per epoch, wall time, CPU and precision) goes to
``benchmarks/results/real_images/<tag>_<arm>_s<seed>.json`` (committed); ``--table`` prints the finished arms.

    python benchmarks/real_images.py --data-dir /work/shared/data/cifar10 --image-size 64 --epochs 4 \\
        --arms tensor,timm --tag cpu64 -- --limit-train 10000 --limit-test 2000
    python benchmarks/real_images.py --table --tag cpu64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kd.precision import Hardware
from recipes import train_teacher
from recipes.plumbing.report import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "real_images"
ARMS = {"tensor": ["--transforms", "tensor"], "timm": ["--transforms", "timm"],
        "timm-scale0.35": ["--transforms", "timm", "--scale", "0.35", "1.0"]}


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One ``train_teacher`` run; its record is written to ``RESULTS/<tag>_<arm>_s<seed>.json``."""
    name = f"{args.tag}_{arm}_s{seed}"
    out = Path(args.out) / name
    argv = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--image-size", str(args.image_size),
            "--arch", args.arch, "--model-args", args.model_args, "--epochs", str(args.epochs), "--seed", str(seed),
            "--out", str(out), "--overwrite", "--no-progress", *ARMS[arm], *args.extra]
    start = time.perf_counter()
    train_teacher.main(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    rows = (out / "teacher_train" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    history = [dict(zip(header, r.split(","))) for r in rows[1:]]
    rates = [float(r["images_per_s"]) for r in history]
    record = {"cell": name, "arm": arm, "seed": seed, "image_size": args.image_size, "epochs": args.epochs,
              "accuracy": report["accuracy"], "accuracy_per_epoch": [float(r["val_accuracy"]) for r in history],
              "train_images_per_s": rates, "train_images_per_s_median": statistics.median(rates), "wall_s": wall,
              "flops": report["flops"], "data": report.get("data"), "hardware": report.get("hardware"),
              "command": "python recipes/train_teacher.py " + " ".join(argv)}
    write_json(RESULTS / f"{name}.json", record)
    return record


def table(tag: str) -> str:
    """``| arm | seeds | accuracy % | train img/s (median) | wall s |`` of the finished arms of ``tag``."""
    records = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{tag}_*.json"))]
    lines = ["| arm | seeds | accuracy % | train img/s (median) | wall s |", "|---|---|---|---|---|"]
    for arm in ARMS:
        mine = [r for r in records if r["arm"] == arm]
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        acc = f"{accs[0]:.2f}" if len(accs) == 1 else f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
        rate = statistics.mean(r["train_images_per_s_median"] for r in mine)
        wall = statistics.mean(r["wall_s"] for r in mine)
        lines.append(f"| {arm} | {len(mine)} | {acc} | {rate:.0f} | {wall:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="/work/shared/data/cifar10")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--arch", default="wide_cnn")
    parser.add_argument("--model-args", default='{"widths": [16, 32, 64, 64], "hidden": 128}')
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--arms", default="tensor,timm", help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tag", default="cpu64")
    parser.add_argument("--out", default="runs/real_images")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished arms")
    parser.add_argument("extra", nargs="*", help="more words for train_teacher.py after --")
    args = parser.parse_args()
    if not args.table:
        print(Hardware.detect("auto", "cpu").describe())
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                run_arm(args, arm, seed)
    print(table(args.tag))


if __name__ == "__main__":
    main()
