"""Training images/s: the in-memory uint8 pipeline (kd.data) against torchvision's DataLoader(ImageFolder).

Both loops train the same model with the same SGD step and the same augmentation (pad-4 random crop, horizontal
flip, normalisation) on the same real images; only the data path differs. Measured in one run, reported as a ratio.

    python benchmarks/data_pipeline.py --data-dir ../shared/data/cifar10 --steps 20

The first kd.data run decodes the images once into the cache (not timed); DataLoader decodes JPEGs every epoch.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from kd.data import balanced_indices, load_dataset, make_loaders
from models import create_model
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


def images_per_s(batches, steps: int, step=None, warmup: int = 2) -> float:
    """Images/s over ``steps`` batches after ``warmup`` untimed ones, data loading included; ``step(x, y)`` is the
    work done on each batch (none: the data path alone)."""
    seen, start, it = 0, 0.0, iter(batches)
    for i in range(warmup + steps):
        if i == warmup:
            seen, start = 0, time.perf_counter()
        x, y = next(it)
        if step is not None:
            step(x, y)
        seen += y.numel()
    return seen / (time.perf_counter() - start)


def sgd_step(model: torch.nn.Module):
    """One cross-entropy SGD step on ``model`` per call."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--arch", default="wide_cnn")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    data = load_dataset("imagefolder", args.data_dir, limit_train=args.limit_train, limit_test=10)
    ours, _ = make_loaders(data, args.batch_size)
    folder = datasets.ImageFolder(str(Path(args.data_dir) / "train"), transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(data.mean, data.std)]))
    keep = balanced_indices(torch.tensor(folder.targets), args.limit_train).tolist()
    theirs = DataLoader(Subset(folder, keep), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True, persistent_workers=args.workers > 0)

    rows = []
    for name, batches in (("kd.data BatchIterator", ours), (f"DataLoader(ImageFolder, workers={args.workers})", theirs)):
        torch.manual_seed(0)
        model = create_model(args.arch, data.num_classes)
        rows.append((name, images_per_s(batches, args.steps), images_per_s(batches, args.steps, sgd_step(model))))
    print(f"\n{args.arch}, batch {args.batch_size}, {args.steps} timed steps, torch threads {torch.get_num_threads()}\n")
    print("| data path | loading only (img/s) | training (img/s) |\n|---|---:|---:|")
    for name, load, train in rows:
        print(f"| {name} | {load:,.0f} | {train:,.1f} |")
    print(f"\nratio kd.data / DataLoader: loading {rows[0][1] / rows[1][1]:.1f}x, training {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    run_main(main)
