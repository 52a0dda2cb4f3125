"""Which precision and memory format to train in, chosen from the hardware rather than assumed.

``auto`` means bf16 autocast where the hardware computes bf16 natively — CUDA GPUs that support it, and CPUs with
AMX or AVX512-BF16 units — and fp32 elsewhere: on an AVX2-only CPU bf16 is emulated and slower than fp32. Channels-last
(NHWC) follows the same rule: oneDNN's bf16 convolutions and cuDNN prefer NHWC, while on an AVX2-only CPU in fp32 it
measured no faster (see BENCHMARKS.md). Losses and metrics are always computed in fp32 (the losses cast the logits).
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from models.common import PRECISIONS as COMPUTE_PRECISIONS
from models.common import autocast  # noqa: F401  (kd.precision.autocast: the one bf16 autocast, kept here for kd)

PRECISIONS = ("auto", *COMPUTE_PRECISIONS)
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (empty where the file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def cpu_model() -> str:
    """The CPU's model name, e.g. ``"AMD EPYC"`` or ``"Intel(R) Xeon(R) Platinum 8488C"``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The widest instruction set torch's CPU kernels use here (``"AVX2"``, ``"AVX512"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 units (AMX-BF16 or AVX512-BF16), where bf16 autocast is fast."""
    flags = set(_cpuinfo().get("flags", "").split())
    return bool(flags.intersection(_NATIVE_BF16_FLAGS))


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA device with bf16 support or a CPU with native bf16, else ``fp32``.

    Raises:
        ValueError: for a name outside :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def prefers_channels_last(precision: str, device: str | torch.device) -> bool:
    """Whether conv models should run channels-last: on CUDA, and on CPUs in bf16 (measured 1.2-1.5× on AMX)."""
    return torch.device(device).type == "cuda" or precision == "bf16"


@dataclass
class Hardware:
    """What a run trained on, for report.json: CPU model and instruction set, device, threads, precision and memory
    format actually used."""

    cpu: str
    cpu_capability: str
    native_bf16: bool
    device: str
    threads: int
    precision: str
    channels_last: bool

    @classmethod
    def detect(cls, precision: str, device: str | torch.device, channels_last: bool | None = None) -> "Hardware":
        """Resolves ``precision`` (and ``channels_last``: None = what :func:`prefers_channels_last` says)."""
        resolved = resolve_precision(precision, device)
        if channels_last is None:
            channels_last = prefers_channels_last(resolved, device)
        name = str(torch.device(device))
        if torch.device(device).type == "cuda":
            name += f" ({torch.cuda.get_device_name(torch.device(device))})"
        return cls(cpu_model(), cpu_capability(), cpu_has_native_bf16(), name, torch.get_num_threads(), resolved,
                   bool(channels_last))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Hardware":
        """From a recipe's config dict (``precision``, ``device``, ``channels_last``); ``device="auto"`` is CUDA when
        available, as `recipes.plumbing.config.resolve_device` has it."""
        device = config.get("device") or "auto"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls.detect(config.get("precision") or "auto", device, config.get("channels_last"))

    def describe(self) -> str:
        """One line: ``CPU AMD EPYC (AVX2, no native bf16), device cpu, 2 threads: fp32, NCHW``."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        layout = "channels_last" if self.channels_last else "NCHW"
        return (f"CPU {self.cpu} ({self.cpu_capability}, {bf16}), device {self.device}, {self.threads} threads: "
                f"{self.precision}, {layout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
