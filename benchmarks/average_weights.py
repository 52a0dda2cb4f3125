"""Average the weights of model files of one network (a "model soup", Wortsman et al., ICML 2022; SWA, Izmailov et
al., 2018), re-estimate its BatchNorm statistics on training images, score it and save it as a model file.

    python benchmarks/average_weights.py benchmarks/weights/fast_cnn_wide_kd_cifar10_e40.pt runs/round2/student.pt \\
        --data-dir ../shared/data/cifar10 --out runs/soup.pt

Only files that hold the same network (the same tensor names and shapes: one started from the other, e.g. with
``distill_only.py --initial-checkpoint``) average into something useful; files trained from other random
initialisations sit in other basins and their average scores near chance. Each float tensor is the mean
``w = (1/n) · Σ_i w_i``; BatchNorm's running mean and variance are then re-estimated (cumulative average,
``pruning.fitting.recalibrate_bn``) over ``--bn-images`` training images, padded, cropped and flipped as in training,
because the mean of running statistics is not the statistics of the averaged network.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from kd.data import load_dataset, make_loaders
from kd.precision import Hardware
from kd.trainer import evaluate
from models import load_model, save_model
from pruning.fitting import recalibrate_bn
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main
from recipes.plumbing.inputs import file_sha256
from recipes.plumbing.report import write_json

BN_BATCH = 250


def average_state_dicts(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the models' floating-point tensors (integer buffers, such as BatchNorm's
    ``num_batches_tracked``, are the first model's).

    Raises:
        ValueError: when the models' tensor names or shapes differ (naming the first that does).
    """
    states = [m.state_dict() for m in models]
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys():
            key = next(iter(set(state) ^ set(first)))
            raise ValueError(f"model {i} is another network: {key!r} is in only one of them")
        bad = next((k for k in first if state[k].shape != first[k].shape), None)
        if bad is not None:
            raise ValueError(f"model {i} is another network: {bad!r} has shape {tuple(state[bad].shape)}, "
                             f"not {tuple(first[bad].shape)}")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in first.items()}


def main(argv: list[str] | None = None) -> float:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="model files of one network (two or more)")
    parser.add_argument("--data-dir", default="../shared/data/cifar10", help="image folder: BatchNorm statistics from "
                        "its train split, accuracy on its test split")
    parser.add_argument("--bn-images", type=int, default=10_000, help="training images for the BatchNorm statistics")
    parser.add_argument("--pad", type=int, default=4, help="translation of those images (pixels), as in training")
    parser.add_argument("--seed", type=int, default=0, help="which training images and augmentations")
    parser.add_argument("--out", required=True, help="the averaged model file")
    parser.add_argument("--record", help="also write a JSON record (files, their accuracies, the average's) here")
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        parser.error("give two or more model files to average")
    hw = Hardware.detect("auto", "cpu")
    print(hw.describe())
    models = [load_model(f) for f in args.files]
    meta = dict(models[0].meta)
    soup = models[0]
    soup.load_state_dict(average_state_dicts(models))
    data = load_dataset("imagefolder", args.data_dir, progress=False)
    data.mean, data.std = tuple(meta["mean"]), tuple(meta["std"])  # as the networks were trained
    train, test = make_loaders(data, BN_BATCH, seed=args.seed, pad=args.pad)
    count = min(max(1, args.bn_images // BN_BATCH), len(train))
    recalibrate_bn(soup, itertools.islice(train, count))
    accuracy = evaluate(soup.eval(), test, precision=hw.precision, channels_last=hw.channels_last).accuracy
    sources = [{"path": f, "sha256": file_sha256(f)} for f in args.files]
    save_model(soup, args.out, meta={**meta, "accuracy": accuracy, "averaged": sources})
    out_sha256 = file_sha256(args.out)
    if args.record:
        write_json(Path(args.record), {
            "hardware": hw.to_dict(), "bn_images": count * BN_BATCH, "pad": args.pad, "seed": args.seed,
            "files": [{**source, "accuracy": m.meta.get("accuracy")} for source, m in zip(sources, models)],
            "accuracy": accuracy, "out": {"path": args.out, "sha256": out_sha256}})
    print(f"average of {len(args.files)} files, BatchNorm from {count * BN_BATCH} training images: "
          f"{accuracy:.2f} % on {len(data.test)} test images\nsaved {args.out} (sha256 {out_sha256})")
    return accuracy


if __name__ == "__main__":
    run_main(main)
