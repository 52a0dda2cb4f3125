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
from models.profile import Complexity, format_report, profile


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
