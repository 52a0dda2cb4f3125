"""Memory mode against stream mode: accuracy after one epoch, training images/s and peak memory (RSS).

Each mode runs in its own fresh process (so peak RSS is that mode's alone): load the image folder (memory: decode
every image into uint8 tensors, into an empty cache folder, so decoding is timed; stream: list the files), train the
same model with the same seed for ``--epochs`` epochs through ``kd.Trainer``, and score the test split.

    python benchmarks/data_modes.py --data-dir ../shared/data/cifar10 --limit-train 2000 --limit-test 1000

Peak RSS is the main process's high-water mark (VmHWM); stream mode also reports the largest sum of its DataLoader
workers' resident memory, sampled every 0.1 s (the workers share most pages with the main process through fork, so
the sum over-counts).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from kd import Trainer
from kd.data import load_dataset, make_loaders
from models import create_model
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


def _status_kib(pid: int | str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class WorkerRSS:
    """Samples the summed VmRSS of this process's children (the DataLoader workers) and keeps the peak (KiB)."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[str]:
        pid = os.getpid()
        try:
            return open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, sum(_status_kib(c, "VmRSS") for c in self._children()))

    def __enter__(self) -> "WorkerRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_mode(args: argparse.Namespace) -> dict:
    """Loads, trains and scores in this process; returns the measurements."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        data = load_dataset("imagefolder", args.data_dir, limit_train=args.limit_train, limit_test=args.limit_test,
                            seed=args.seed, cache_dir=cache, progress=False, data_mode=args.one)
    load_s = time.perf_counter() - start
    train, test = make_loaders(data, args.batch_size, seed=args.seed, workers=args.workers)
    torch.manual_seed(args.seed)
    model = create_model(args.arch, data.num_classes, **json.loads(args.model_args))
    with WorkerRSS() as workers:
        result = Trainer(model, epochs=args.epochs, progress=False, precision="fp32").fit(train, test)
    last = result.history[-1]
    return {"mode": data.mode, "train_images": len(data.train), "test_images": len(data.test),
            "load_s": load_s, "accuracy": last.val_accuracy, "train_accuracy": last.train_accuracy,
            "images_per_s": sum(r.images_per_s for r in result.history) / len(result.history),
            "epoch_s": sum(r.seconds for r in result.history), "peak_rss_mib": _status_kib("self", "VmHWM") / 1024,
            "worker_rss_peak_mib": workers.peak / 1024, "mean": data.mean}


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--limit-train", type=int, default=None, help="class-balanced subset (default: all images)")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--arch", default="wide_cnn")
    p.add_argument("--model-args", default='{"widths": [32, 64, 128, 128], "hidden": 256}')
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of stream mode")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="+", default=["memory", "stream"], choices=["memory", "stream"])
    p.add_argument("--one", choices=["memory", "stream"], help=argparse.SUPPRESS)  # the per-mode child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_mode(args)))
        return
    rows = []
    for mode in args.modes:
        child = [sys.executable, __file__, "--one", mode, *(argv if argv is not None else sys.argv[1:])]
        done = subprocess.run(child, capture_output=True, text=True)
        if done.returncode != 0:  # the child said what went wrong in its last line (run_main's error line)
            said = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
            raise ValueError(f"--modes {mode}: {said.removeprefix('error: ')}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"\n{args.arch} {args.model_args}, {r0['train_images']} training / {r0['test_images']} test images, "
          f"batch {args.batch_size}, {args.epochs} epoch(s), seed {args.seed}, torch threads {args.threads}, "
          f"stream workers {args.workers}\n")
    print("| mode | load (s) | test acc (%) | train img/s | epoch (s) | peak RSS main (MiB) | peak RSS workers (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        workers = f"{r['worker_rss_peak_mib']:.0f}" if r["mode"] == "stream" else "–"
        print(f"| {r['mode']} | {r['load_s']:.1f} | {r['accuracy']:.2f} | {r['images_per_s']:.1f} | "
              f"{r['epoch_s']:.1f} | {r['peak_rss_mib']:.0f} | {workers} |")
    decoded = r0["train_images"] * 3 * 32 * 32 + r0["test_images"] * 3 * 32 * 32
    print(f"\ndecoded images (N·3·32·32, both splits): {decoded / 2**20:.1f} MiB")


if __name__ == "__main__":
    run_main(main)
