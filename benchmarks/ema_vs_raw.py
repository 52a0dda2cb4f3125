"""What the weight average (``--ema``) adds: a teacher run's saved model (the average) against the raw weights of its
last epoch (``teacher_train/last.pt``), both scored single-view on the test split.

    python benchmarks/ema_vs_raw.py runs/fast_recipe/fast_cnn_fast_seed0 --data-dir ../shared/data/cifar10
"""
from __future__ import annotations


import torch

from kd.data import load_dataset, make_loaders
from kd.precision import Hardware
from kd.trainer import evaluate
from models import load_model
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the --out folder of a train_teacher.py run with --ema")
    parser.add_argument("--data-dir", default="../shared/data/cifar10")
    args = parser.parse_args(argv)
    hw = Hardware.detect("auto", "cpu")
    print(hw.describe())
    teacher = load_model(f"{args.run}/teacher.pt")
    data = load_dataset("imagefolder", args.data_dir, progress=False)
    data.mean, data.std = tuple(teacher.meta["mean"]), tuple(teacher.meta["std"])
    _, test = make_loaders(data, 1000)
    score = lambda: evaluate(teacher, test, precision=hw.precision, channels_last=hw.channels_last).accuracy  # noqa: E731
    averaged = score()
    state = torch.load(f"{args.run}/teacher_train/last.pt", map_location="cpu", weights_only=True)
    teacher.load_state_dict(state["student"])
    print(f"weight average (saved): {averaged:.2f} %   raw weights of the last epoch: {score():.2f} %")


if __name__ == "__main__":
    run_main(main)
