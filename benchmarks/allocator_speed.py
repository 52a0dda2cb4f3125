"""Is the C allocator slowing CPU training? Bare training steps of ``fast_cnn`` in a child process per allocator
setting, interleaved round by round so that whatever else the machine runs slows every arm alike.

    PYTHONPATH=. python benchmarks/allocator_speed.py --model-args '{"widths": [128, 128, 384, 384, 384, 384]}' \
        --jemalloc /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 --out benchmarks/results/allocator_speed.json

By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it
with ``munmap`` when freed. A training step of a wide network at batch 1024 allocates and frees activations far
larger than that (one bf16 (1024, 128, 31, 31) map is 252 MB), so each step the kernel maps and zeroes them again,
page by page. The arms, set from the environment before the child starts:

- ``default``: the machine's malloc as it is;
- ``glibc-keep``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10^11`` (large blocks from the heap, never trimmed);
- ``jemalloc`` (with ``--jemalloc PATH``): ``LD_PRELOAD=PATH MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``
  (freed pages never returned), the allocator PyTorch's CPU launcher (``torch.backends.xeon.run_cpu``) preloads.

A step is forward, label-smoothed cross-entropy, backward and an SGD step on one random (B, 3, 32, 32) batch, at the
precision and memory format a run would pick (bf16 + channels_last where the CPU computes bf16 natively). Each child
reports images/s over its timed steps (after ``--warmup`` steps), their minor page faults and kernel CPU seconds
(``getrusage``) and its peak resident memory. Prints the CPU, precision and threads, each round, and the medians with
their ratio to ``default``; ``--out`` writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GLIBC_KEEP = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(10 ** 11)}
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def arm_environments(jemalloc: str | None) -> dict[str, dict[str, str]]:
    """The environment variables each arm's child starts with."""
    arms = {"default": {}, "glibc-keep": dict(GLIBC_KEEP)}
    if jemalloc:
        arms["jemalloc"] = {"LD_PRELOAD": jemalloc, "MALLOC_CONF": JEMALLOC_CONF}
    return arms


def child(model_args: dict, batch: int, steps: int, warmup: int) -> dict:
    """Timed steps in this process: ``{"images_per_s", "minor_faults", "system_s", "max_rss_mib", "hardware"}``."""
    import torch
    import torch.nn.functional as F

    from kd.precision import Hardware, autocast
    from models import create_model

    hw = Hardware.detect("auto", "cpu")
    fmt = torch.channels_last if hw.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model("fast_cnn", 10, **model_args).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with autocast(hw.precision, "cpu"):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):  # oneDNN picks its kernels, the allocator reaches its working set
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_s": steps * batch / seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_s": after.ru_stime - before.ru_stime, "max_rss_mib": after.ru_maxrss / 1024,
            "hardware": hw.describe()}


def run_child(env: dict[str, str], args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model-args", args.model_args, "--batch-size",
           str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (each arm once per round)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=1024, help="images per step (the fast recipe's 1024)")
    parser.add_argument("--model-args", default="{}", help="JSON of fast_cnn's arguments (default: airbench94's)")
    parser.add_argument("--jemalloc", help="path of libjemalloc.so.2: adds the jemalloc arm")
    parser.add_argument("--out", type=Path, help="write the rounds and medians here as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model_args = json.loads(args.model_args)
    if args.child:
        print(json.dumps(child(model_args, args.batch_size, args.steps, args.warmup)))
        return
    arms = arm_environments(args.jemalloc)
    rounds = []
    for r in range(args.rounds):
        rows = {arm: run_child(env, args) for arm, env in arms.items()}
        rounds.append(rows)
        if r == 0:
            print(rows["default"]["hardware"], f"| fast_cnn {args.model_args}, batch {args.batch_size}")
        print(f"round {r}: " + ", ".join(f"{arm} {row['images_per_s']:.0f} img/s ({row['minor_faults']:,} faults)"
                                         for arm, row in rows.items()), flush=True)
    medians = {arm: {k: statistics.median(rw[arm][k] for rw in rounds)
                     for k in ("images_per_s", "minor_faults", "system_s", "max_rss_mib")} for arm in arms}
    ratios = {arm: m["images_per_s"] / medians["default"]["images_per_s"] for arm, m in medians.items()}
    for arm, m in medians.items():
        print(f"median {arm}: {m['images_per_s']:.0f} img/s (x{ratios[arm]:.2f}), {m['minor_faults']:,.0f} page "
              f"faults, {m['system_s']:.1f} s system, peak {m['max_rss_mib']:,.0f} MiB")
    if args.out:
        record = {"hardware": rounds[0]["default"]["hardware"], "model_args": model_args,
                  "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "environments": arms,
                  "rounds": rounds, "medians": medians, "ratios": ratios,
                  "command": " ".join(["python benchmarks/allocator_speed.py", *sys.argv[1:]])}
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
