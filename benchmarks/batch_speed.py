"""Images per second of one training step of ``fast_cnn`` at several batch sizes, at the precision and memory format
``--precision auto`` picks here; ratios against the first batch size, measured in one run.

    OMP_NUM_THREADS=1 python benchmarks/batch_speed.py --batch-sizes 128 256 512 1024
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from kd.precision import Hardware, autocast
from models import create_model
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


def images_per_s(batch_size: int, hw: Hardware, images: int = 2048) -> float:
    """SGD steps of a fresh ``fast_cnn`` on random (B, 3, 32, 32) inputs: 2 untimed, then ``images`` timed."""
    model = create_model("fast_cnn", 10)
    fmt = torch.channels_last if hw.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        with autocast(hw.precision, "cpu"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    steps = max(2, images // batch_size)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    args = parser.parse_args(argv)
    hw = Hardware.detect("auto", "cpu")
    print(hw.describe())
    rates = {b: images_per_s(b, hw) for b in args.batch_sizes}
    first = rates[args.batch_sizes[0]]
    for b, r in rates.items():
        print(f"batch {b:>5}: {r:7.0f} img/s  {r / first:.2f}×")


if __name__ == "__main__":
    run_main(main)
