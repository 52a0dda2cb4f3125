"""Inference latency: how long one forward pass of a batch takes, measured the same way for every runtime.

What is measured: the wall-clock time (``time.perf_counter``) of one forward call on a batch that is already in memory
on the model's device — no data loading, decoding, normalisation or host-to-device copy — after untimed warm-up calls.
PyTorch models run in ``eval()`` mode under ``torch.inference_mode()`` (fp32, or bf16 autocast); on CUDA each call
ends with ``torch.cuda.synchronize`` so the time covers the kernels, not just their launch. A result gives the median
and the 10th / 90th percentiles of the per-call times and ``images_per_s = batch_size / median``.

:func:`time_callable` is the one timing loop: :func:`measure_latency` (PyTorch), :func:`models.export.onnx_latency`
(ONNX Runtime) and benchmarks all call it, so their numbers are comparable.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.common import PRECISIONS, autocast, model_device, num_threads

DEFAULT_WARMUP = 5
DEFAULT_REPEATS = 20
DEFAULT_MIN_SECONDS = 1.0


@dataclass(frozen=True)
class LatencyResult:
    """Per-call latency of one batch size: median and 10th/90th percentiles in milliseconds, images/s at the median,
    the intra-op threads used, the precision, the runtime (``torch`` or ``onnxruntime``) and how many calls were
    timed."""

    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    images_per_s: float
    threads: int
    precision: str
    runtime: str = "torch"
    samples: int = 0

    @classmethod
    def from_times(cls, times_ms: Sequence[float], batch_size: int, threads: int, precision: str,
                   runtime: str = "torch") -> "LatencyResult":
        """Summarises per-call times (ms) as returned by :func:`time_callable`."""
        if not times_ms:
            raise ValueError("no timed calls to summarise; time_callable needs repeats >= 1")
        ordered = sorted(times_ms)
        median = _percentile(ordered, 50)
        return cls(batch_size=batch_size, median_ms=median, p10_ms=_percentile(ordered, 10),
                   p90_ms=_percentile(ordered, 90), images_per_s=batch_size * 1e3 / median, threads=threads,
                   precision=precision, runtime=runtime, samples=len(ordered))


def time_callable(fn: Callable[[], object], *, warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                  min_seconds: float = DEFAULT_MIN_SECONDS) -> list[float]:
    """Times ``fn()``: ``warmup`` untimed calls, then timed calls until there are at least ``repeats`` of them and
    they add up to at least ``min_seconds``. Returns each timed call's wall-clock time in milliseconds, in call order.

    ``fn`` must finish its work before returning (synchronise asynchronous devices inside it).
    """
    if warmup < 0 or repeats < 1 or min_seconds < 0:
        raise ValueError(f"time_callable needs warmup >= 0, repeats >= 1 and min_seconds >= 0, got warmup={warmup}, "
                         f"repeats={repeats}, min_seconds={min_seconds}")
    for _ in range(warmup):
        fn()
    times_ms, total_s = [], 0.0
    while len(times_ms) < repeats or total_s < min_seconds:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times_ms.append(elapsed * 1e3)
        total_s += elapsed
    return times_ms


def measure_latency(model: nn.Module, input_size: Sequence[int] = (3, 32, 32), batch_sizes: Sequence[int] = (1, 64),
                    *, threads: int | None = None, precision: str = "fp32", device: str | torch.device | None = None,
                    warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
                    min_seconds: float = DEFAULT_MIN_SECONDS) -> list[LatencyResult]:
    """Forward-pass latency of ``model`` for each batch size (see the module docstring for what is timed).

    Args:
        model: any module taking one tensor ``(B, *input_size)``.
        input_size: one input without the batch dimension, ``(C, H, W)``.
        batch_sizes: a result per batch size, in this order.
        threads: ``torch.set_num_threads`` during the measurement (restored afterwards); None keeps the current one.
        precision: ``fp32``, or ``bf16`` (forward under ``torch.autocast(dtype=torch.bfloat16)``, as ``--amp``).
        device: where to run; None is the model's device. The model is moved back afterwards.
        warmup, repeats, min_seconds: see :func:`time_callable`.

    The model's train/eval mode and device are restored afterwards. Inputs are seeded random tensors (the global
    random state is not touched).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    home = model_device(model)
    target = torch.device(device) if device is not None else home
    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    results = []
    try:
        model.to(target).eval()
        with num_threads(threads), torch.inference_mode():
            used = torch.get_num_threads()
            for b in batch_sizes:
                x = torch.randn((b, *input_size), generator=generator).to(target)  # (B, C, H, W)
                times = time_callable(_forward(model, x, precision), warmup=warmup, repeats=repeats,
                                      min_seconds=min_seconds)
                results.append(LatencyResult.from_times(times, b, used, precision))
    finally:
        model.to(home).train(was_training)
    return results


def _forward(model: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    cuda = x.device.type == "cuda"

    def call() -> None:
        with autocast(precision, x.device):
            model(x)
        if cuda:
            torch.cuda.synchronize(x.device)
    return call


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks of sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
