"""The report users hand in: the three-line block per model, and ``report.json``."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from models.profile import Complexity, format_report, profile


@dataclass
class ModelReport:
    """One model's line in ``report.json``: flops (thop MACs), params, param_size_kb (params × 4 / 1024), accuracy %."""

    name: str
    flops: int
    params: int
    param_size_kb: float
    accuracy: float

    @classmethod
    def measure(cls, name: str, model: nn.Module, accuracy: float, input_size: tuple[int, ...]) -> "ModelReport":
        c = profile(model, input_size)
        return cls(name, c.flops, c.params, c.param_size_kb, accuracy)

    def block(self) -> str:
        """The seed-format block: ``flops = …`` / ``Model parameter size = … kB`` / ``Accuracy = … %``."""
        return format_report(Complexity(self.flops, self.params, self.param_size_kb), self.accuracy)


def print_reports(reports: list[ModelReport]) -> None:
    """Prints each model's block under a ``== name ==`` header."""
    for r in reports:
        print(f"\n== {r.name} ==\n{r.block()}")


def write_report(path: str | os.PathLike, reports: list[ModelReport], config: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Writes ``report.json``: ``{"models": {name: {...}}, "config": {...}, **extra}``; the last model's numbers are
    also at top level (``flops``, ``params``, ``param_size_kb``, ``accuracy``)."""
    body: dict[str, Any] = {}
    if reports:
        last = asdict(reports[-1])
        body.update({k: last[k] for k in ("flops", "params", "param_size_kb", "accuracy")})
    body["models"] = {r.name: asdict(r) for r in reports}
    body["config"] = config
    body.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n")
    os.replace(tmp, path)
