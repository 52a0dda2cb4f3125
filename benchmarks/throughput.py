"""Training images/s: the tutorial loop against the toolkit's defaults, side by side in one run, plus inference latency.

(a) the tutorial loop: torchvision ``ImageFolder`` + per-sample transforms (pad-4 random crop, flip, ToTensor,
    Normalize) + ``DataLoader(num_workers=2, shuffle=True)``, fp32, NCHW, a plain SGD loop (KD runs the teacher on
    every batch);
(b) the toolkit's defaults: ``kd.data`` in-memory batches augmented on the device and ``kd.Trainer`` with
    ``precision="auto"`` and its memory-format choice, for teacher CE, student CE, student KD and student KD from
    the teacher cache (``kd.teacher_cache``; its build time is reported on its own line, since it is paid once per
    teacher and data set and then shared by every run).

Same models (the ``wide_cnn`` teacher and its ¼-FLOPs L1-pruned student; random weights do not change speed), same
batch size, same images; images/s over ``--steps`` timed steps after ``--warmup`` untimed ones. Then the forward
latency of teacher and student at batch 1 and 64 (``models.measure_latency``): FLOPs are not speed.

    python benchmarks/throughput.py --data-dir ../shared/data/cifar10 --steps 20

Prints the CPU model, instruction set and the precision ``auto`` chose; numbers are only comparable within one run.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import pruning
from kd import Callback, Trainer, create_loss
from kd.data import BatchIterator, balanced_indices, load_dataset
from kd.precision import Hardware
from kd.teacher_cache import CachedBatchIterator, build_teacher_cache
from models import create_model, measure_latency, profile
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


class StepClock(Callback):
    """Timestamps of every optimizer step, so the rate can leave out warm-up steps."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.times.append(time.perf_counter())


def rate(times: list[float], warmup: int, batch_size: int) -> float:
    """Images/s between the end of step ``warmup`` and the end of the last step."""
    return (len(times) - warmup) * batch_size / (times[-1] - times[warmup - 1])


def tutorial_rate(loader: DataLoader, student: nn.Module, teacher: nn.Module | None, steps: int, warmup: int) -> float:
    """The textbook loop: fp32 NCHW, cross-entropy, plus T=4 soft-target KL from a live teacher when given."""
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    student.train()
    if teacher is not None:
        teacher.eval()
    times, it = [], iter(loader)
    for _ in range(warmup + steps):
        x, y = next(it)
        logits = student(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            loss = 0.1 * loss + 0.9 * 16 * F.kl_div(F.log_softmax(logits / 4, 1), F.log_softmax(t / 4, 1),
                                                     reduction="batchmean", log_target=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    return rate(times, warmup, loader.batch_size)


def toolkit_rate(student: nn.Module, teacher: nn.Module | None, batches: Iterable, batch_size: int, warmup: int,
                 **options) -> float:
    """One epoch of ``kd.Trainer`` with its defaults (``precision="auto"``) over ``batches``."""
    clock = StepClock()
    loss = create_loss("kd") if teacher is not None or isinstance(batches, CachedBatchIterator) else None
    Trainer(student, teacher, loss, epochs=1, progress=False, callbacks=[clock], **options).fit(batches)
    return rate(clock.times, warmup, batch_size)


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--views", type=int, default=2, help="teacher-cache views built for the cached row")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the tutorial loop")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compile time included)")
    args = p.parse_args(argv)

    n = (args.steps + args.warmup) * args.batch_size
    data = load_dataset("imagefolder", args.data_dir, limit_train=n, limit_test=10, progress=False)
    hw = Hardware.detect("auto", "cpu")
    print(f"{hw.describe()}; torch {torch.__version__}, batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup}")

    torch.manual_seed(0)
    teacher = create_model("wide_cnn", data.num_classes)
    x0 = torch.zeros(data.input_size)
    student = pruning.prune(teacher, x0, target_flops=profile(teacher).flops // 4).model
    print(f"teacher {profile(teacher).flops:,} flops, student {profile(student).flops:,} flops")

    folder = datasets.ImageFolder(str(Path(args.data_dir) / "train"), transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(data.mean, data.std)]))
    keep = balanced_indices(torch.tensor(folder.targets), n).tolist()
    loader = DataLoader(Subset(folder, keep), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True, persistent_workers=False)

    def ours() -> BatchIterator:
        return BatchIterator(data.train, args.batch_size, train=True, mean=data.mean, std=data.std, seed=0)

    start = time.perf_counter()
    cache = build_teacher_cache(teacher, data.train.images, views=args.views, mean=data.mean, std=data.std,
                                progress=False)
    build_s = time.perf_counter() - start
    cached = CachedBatchIterator(cache, ours())

    fresh: Callable[[nn.Module], nn.Module] = copy.deepcopy
    rows = [
        ("teacher, cross-entropy", tutorial_rate(loader, fresh(teacher), None, args.steps, args.warmup),
         toolkit_rate(fresh(teacher), None, ours(), args.batch_size, args.warmup)),
        ("student, cross-entropy", tutorial_rate(loader, fresh(student), None, args.steps, args.warmup),
         toolkit_rate(fresh(student), None, ours(), args.batch_size, args.warmup)),
        ("student, KD (live teacher)", tutorial_rate(loader, fresh(student), teacher, args.steps, args.warmup),
         toolkit_rate(fresh(student), teacher, ours(), args.batch_size, args.warmup)),
    ]
    kd_tutorial = rows[-1][1]
    rows.append(("student, KD from the teacher cache", kd_tutorial,
                 toolkit_rate(fresh(student), None, cached, args.batch_size, args.warmup)))
    if args.compile:
        start = time.perf_counter()
        rows.append(("student, KD from the cache, torch.compile", kd_tutorial,
                     toolkit_rate(fresh(student), None, CachedBatchIterator(cache, ours()), args.batch_size,
                                  args.warmup, compile=True)))
        print(f"torch.compile row took {time.perf_counter() - start:.0f} s in all (compilation included)")

    print("\n| training | (a) tutorial loop img/s | (b) toolkit defaults img/s | (b) / (a) |\n|---|---:|---:|---:|")
    for name, a, b in rows:
        print(f"| {name} | {a:,.1f} | {b:,.1f} | {b / a:.2f}× |")
    per_view = cache.nbytes / (cache.views * len(data.train))
    print(f"\nteacher cache: {cache.views} views × {len(data.train)} images built in {build_s:.1f} s "
          f"({cache.views * len(data.train) / build_s:,.0f} teacher forwards/s), {per_view:.0f} bytes per view; "
          f"at K = 10 that is {10 * 50000 * per_view / 2**20:.1f} MiB and ~{10 * 50000 * build_s / (cache.views * len(data.train)) / 60:.0f} "
          f"min for CIFAR-10 (50,000 images, 10 classes), "
          f"{10 * 50000 * (3 + 2 * 100) / 2**20:.1f} MiB for CIFAR-100 (100 classes, full fp16 logits) on this CPU")

    print("\nforward latency, median ms (images/s):\n| batch | teacher | student | speed-up |\n|---:|---:|---:|---:|")
    lat = {name: measure_latency(m, data.input_size[1:], (1, 64), precision=hw.precision, repeats=10,
                                 min_seconds=1.0) for name, m in (("teacher", teacher), ("student", student))}
    for t, s in zip(lat["teacher"], lat["student"]):
        print(f"| {t.batch_size} | {t.median_ms:.2f} ({t.images_per_s:,.0f}) | {s.median_ms:.2f} "
              f"({s.images_per_s:,.0f}) | {t.median_ms / s.median_ms:.2f}× |")


if __name__ == "__main__":
    run_main(main)
