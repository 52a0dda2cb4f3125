"""Is the training loop as fast as a bare training step? One epoch of ``fit_model`` against bare bf16 steps of
``fast_cnn``, at the same batch, precision and memory format, interleaved round by round in one process so that
whatever else the machine runs slows both alike.

    PYTHONPATH=. python benchmarks/loop_speed.py --batches 3 --rounds 4 -- --recipe fast --lookahead --ema 0

Words after ``--`` are ``train_teacher.py`` options (``--recipe``, ``--lookahead`` ...) and ``--model-args`` of
``fast_cnn``; both the loop and the bare step build the network with those arguments.

The loop is the fast recipe's as ``train_teacher.py --recipe fast`` runs it (its recipe options, lookahead, BatchNorm
momentum, the stem bias hold, EMA if the recipe keeps one), on in-memory uint8 images through
:class:`kd.data.BatchIterator` (shuffle, pad-2 crop, alternating flip, normalisation); its figure is the epoch's
``images_per_s`` the Trainer reports. The bare step is forward, label-smoothed cross-entropy, backward and the
recipe's optimizer step (``--optimizer``: SGD, or Muon on the filters as airbench94_muon's step) on a batch made
once. Prints both medians and their ratio (the issue asks for >= 0.85), the CPU and precision.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from kd.data import BatchIterator
from kd.data.sources import ImageTensors
from kd.optim import optimizer_for
from kd.precision import Hardware, autocast
from kd.trainer import fit_model
from models import create_model
from recipes.train_teacher import TeacherConfig
from recipes.plumbing.config import parse_config


def loop_epoch(cfg: TeacherConfig, data: ImageTensors, hw: Hardware, arch_args: dict) -> float:
    """Images/s of one epoch of :func:`kd.trainer.fit_model` over ``data`` with the recipe's options."""
    model = create_model("fast_cnn", 10, **arch_args)
    batches = BatchIterator(data, cfg.batch_size, train=True, mean=(0.5,) * 3, std=(0.25,) * 3, pad=cfg.pad,
                            flip=cfg.flip, pad_mode=cfg.pad_mode)
    result = fit_model(model, batches, epochs=1, lr=cfg.lr, optimizer=cfg.optimizer, schedule=cfg.schedule,
                       weight_decay=cfg.weight_decay, muon_lr_scale=cfg.muon_lr_scale,
                       muon_momentum=cfg.muon_momentum, momentum=cfg.momentum,
                       decay_norm_and_bias=cfg.decay_norm_and_bias,
                       bn_bias_lr_scale=cfg.bn_bias_lr_scale, bn_weight_lr_scale=cfg.bn_weight_lr_scale,
                       warmup=cfg.warmup, ema=cfg.ema or None, lookahead=cfg.lookahead,
                       bn_momentum=cfg.bn_momentum or None, stem_bias_epochs=cfg.stem_bias_epochs,
                       precision=hw.precision, channels_last=hw.channels_last, progress=False)
    return result.history[0].images_per_s


def bare_steps(cfg: TeacherConfig, steps: int, hw: Hardware, arch_args: dict) -> float:
    """Images/s of ``steps`` bare steps of the recipe's optimizer (SGD, or Muon on the filters) on a fresh
    ``fast_cnn`` and one random (B, 3, 32, 32) batch."""
    batch_size = cfg.batch_size
    fmt = torch.channels_last if hw.channels_last else torch.contiguous_format
    model = create_model("fast_cnn", 10, **arch_args).to(memory_format=fmt).train()
    opt = optimizer_for(cfg.optimizer, [model], 0.01, 0.0, 0.85, muon_lr_scale=cfg.muon_lr_scale,
                        muon_momentum=cfg.muon_momentum)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,))
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(hw.precision, "cpu"):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=3, help="batches per epoch (and bare steps per round)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the first is a warm-up")
    parser.add_argument("options", nargs="*", help="train_teacher.py options after --, e.g. -- --recipe fast")
    args = parser.parse_args(argv)
    cfg = parse_config(TeacherConfig, args.options or ["--recipe", "fast"])
    arch_args = json.loads(cfg.model_args)
    hw = Hardware.detect(cfg.precision, "cpu", cfg.channels_last)
    print(hw.describe())
    print("options:", " ".join(args.options or ["--recipe", "fast"]))
    n = cfg.batch_size * args.batches
    g = torch.Generator().manual_seed(0)
    data = ImageTensors(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g), [str(c) for c in range(10)])
    loop, bare = [], []
    for r in range(args.rounds):
        loop.append(loop_epoch(cfg, data, hw, arch_args))
        bare.append(bare_steps(cfg, args.batches, hw, arch_args))
        print(f"round {r}: loop {loop[-1]:.0f} img/s, bare step {bare[-1]:.0f} img/s, ratio {loop[-1] / bare[-1]:.3f}"
              + ("  (warm-up, not counted)" if r == 0 else ""), flush=True)
    lm, bm = statistics.median(loop[1:]), statistics.median(bare[1:])
    print(f"median over rounds 1-{args.rounds - 1}: loop {lm:.0f} img/s, bare step {bm:.0f} img/s, "
          f"ratio {lm / bm:.3f} (batch {cfg.batch_size}, {hw.precision}, channels_last {hw.channels_last})")


if __name__ == "__main__":
    main()
