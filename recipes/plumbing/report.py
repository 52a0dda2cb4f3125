"""The report users hand in: the three-line block per model, and ``report.json``."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from kd.precision import Hardware
from models.checkpoint import atomic_write_text
from models.profile import Complexity, format_report, profile, torch_pruning_flops

# Torch-Pruning's count above thop's by more than this fraction: thop missed operations (attention's matmuls)
MISSED_FLOPS = 0.005


@dataclass
class ModelReport:
    """One model's line in ``report.json``: flops (thop MACs), params, param_size_kb (params × 4 / 1024), accuracy %
    (single view), and the test-time-augmented accuracy % when it was measured (``--tta``)."""

    name: str
    flops: int
    params: int
    param_size_kb: float
    accuracy: float
    tta_accuracy: float | None = None

    @classmethod
    def measure(cls, name: str, model: nn.Module, accuracy: float, input_size: tuple[int, ...],
                tta_accuracy: float | None = None) -> "ModelReport":
        c = profile(model, input_size)
        return cls(name, c.flops, c.params, c.param_size_kb, accuracy, tta_accuracy)

    def block(self) -> str:
        """The seed-format block: ``flops = …`` / ``Model parameter size = … kB`` / ``Accuracy = … %``."""
        return format_report(Complexity(self.flops, self.params, self.param_size_kb), self.accuracy)


def print_reports(reports: list[ModelReport]) -> None:
    """Prints each model's block under a ``== name ==`` header."""
    for r in reports:
        tta = f"\n(with test-time augmentation: {r.tta_accuracy:.2f} %)" if r.tta_accuracy is not None else ""
        print(f"\n== {r.name} ==\n{r.block()}{tta}")


def write_report(path: str | os.PathLike, reports: list[ModelReport], config: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Writes ``report.json``: ``{"models": {name: {...}}, "config": {...}, **extra}``; the last model's numbers are
    also at top level (``flops``, ``params``, ``param_size_kb``, ``accuracy``). Valid JSON: NaN/inf are null."""
    body: dict[str, Any] = {}
    if reports:
        last = asdict(reports[-1])
        body.update({k: last[k] for k in ("flops", "params", "param_size_kb", "accuracy")})
    body["models"] = {r.name: asdict(r) for r in reports}
    body["config"] = config
    if "precision" in config:  # what the run trained on: CPU model, instruction set, precision, memory format
        body["hardware"] = Hardware.from_config(config).to_dict()
    body.update(extra or {})
    write_json(path, body)


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or ±inf float (at any depth) replaced by None, tuples by lists, and anything else
    JSON cannot hold by its ``str``: what strict JSON readers accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    item = getattr(value, "item", None)  # numpy scalars, one-element tensors
    if callable(item):
        try:
            return json_ready(item())
        except (ValueError, RuntimeError, TypeError):
            pass
    return str(value)


def write_json(path: str | os.PathLike, body: Any) -> None:
    """Writes ``body`` as strict JSON (NaN and inf become null) through a temporary file and a rename."""
    atomic_write_text(json.dumps(json_ready(body), indent=2, allow_nan=False) + "\n", path)


def flops_check(models: dict[str, nn.Module], input_size: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """``{name: {"thop", "torch_pruning", "thop_missed"}}`` for each model whose FLOPs by Torch-Pruning's
    ``count_ops_and_params`` exceed thop's by more than :data:`MISSED_FLOPS` (thop counts no attention matmuls and no
    other operations outside layers); empty when thop missed nothing. The report's flops stay thop's."""
    found = {}
    for name, model in models.items():
        thop_flops, tp_flops = profile(model, input_size).flops, torch_pruning_flops(model, input_size)
        if tp_flops > thop_flops * (1 + MISSED_FLOPS):
            found[name] = {"thop": thop_flops, "torch_pruning": tp_flops, "thop_missed": tp_flops - thop_flops}
    return found


def print_flops_check(found: dict[str, dict[str, Any]]) -> None:
    """One line per model whose thop count misses operations, Torch-Pruning's count beside it."""
    for name, c in found.items():
        print(f"note: thop counts {c['thop']:,} flops for the {name} but misses operations outside layers (attention "
              f"matmuls): Torch-Pruning's count_ops_and_params gives {c['torch_pruning']:,} "
              f"(+{c['thop_missed'] / c['thop']:.1%}); the report's flops stay thop's")
