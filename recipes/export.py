"""Export a saved model to ONNX, check it against PyTorch, and time both runtimes on the CPU side by side.

    python recipes/export.py --student runs/prune_then_distill/student.pt --batch-sizes 1 64 --threads 2

Reads a model file (student.pt from pruning.save, teacher.pt from models.save_model), writes --out (default: the model
file with .onnx) with a dynamic batch dimension, and prints the largest absolute difference between ONNX Runtime's and
PyTorch's logits on seeded random inputs of every batch size (exit status 2 when it is above --tolerance) and the median
latency and images/s per batch size of both. Writes the numbers and this config to OUT with .export.json.
Needs the deploy packages: pip install -e ".[deploy]".
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

import pruning
from models import profile
from models.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, ExportReport, export_and_check
from models.latency import DEFAULT_MIN_SECONDS, DEFAULT_REPEATS, DEFAULT_WARMUP, LatencyResult
from recipes.plumbing import option_checks
from recipes.plumbing.config import (
    COUNT, NON_NEGATIVE, NON_NEGATIVE_COUNT, POSITIVE, Limit, arg, check_values, config_file, parse_config,
)
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import write_json


@dataclass
class ExportConfig:
    student: str | None = arg(None, "model file to export: student.pt (pruning.save) or teacher.pt (models.save_model)")
    out: str | None = arg(None, "ONNX file to write (default: the model file with .onnx)")
    batch_sizes: tuple[int, ...] = arg((1, 64), "batch sizes to check and time", limit=COUNT)
    threads: int | None = arg(None, "CPU threads of both runtimes (default: torch's current number)", limit=COUNT)
    image_size: int | None = arg(None, "input height and width, for a model file that records none (default: the "
                                 "file's image_size, else 32; a different size than the file's is refused)",
                                 limit=Limit(lambda v: v >= 8, ">= 8 (pixels)"))
    opset: int = arg(DEFAULT_OPSET, "ONNX opset version", limit=COUNT)
    dynamo: bool = arg(True, "torch.export-based exporter; --no-dynamo uses the deprecated TorchScript one")
    tolerance: float = arg(DEFAULT_TOLERANCE, "largest accepted absolute difference between the two runtimes' logits",
                           limit=POSITIVE)
    warmup: int = arg(DEFAULT_WARMUP, "untimed calls before timing each batch size", limit=NON_NEGATIVE_COUNT)
    repeats: int = arg(DEFAULT_REPEATS, "at least this many timed calls per batch size", limit=COUNT)
    min_seconds: float = arg(DEFAULT_MIN_SECONDS, "and at least this many seconds of timed calls per batch size",
                             limit=NON_NEGATIVE)


def main(argv: list[str] | None = None) -> ExportReport:
    cfg = parse_config(ExportConfig, argv, description=__doc__.split("\n")[0])
    check_values(cfg)
    if cfg.student is None:
        raise ValueError("--student FILE is required: a model file written by pruning.save or models.save_model")
    option_checks.check_export(cfg)  # before the model file is read or anything written
    out = Path(cfg.out) if cfg.out else Path(cfg.student).with_suffix(".onnx")
    _check_outputs_spare_the_inputs({"--student": cfg.student, "--config": config_file(argv)},
                                    [out, out.with_suffix(".export.json")])
    model = pruning.load(cfg.student)
    input_size = _input_size(cfg, model)
    complexity = profile(model, (1, *input_size))
    print(f"exporting {cfg.student} ({model.arch_spec['name']}, {complexity.flops:,} flops, {complexity.params:,} "
          f"params) to {out}")
    report = export_and_check(model, out, input_size, cfg.batch_sizes, cfg.threads, opset=cfg.opset,
                              dynamo=cfg.dynamo, tolerance=cfg.tolerance, warmup=cfg.warmup, repeats=cfg.repeats,
                              min_seconds=cfg.min_seconds)
    verdict = "ok" if report.passed else "TOO LARGE"
    print(f"max abs difference ONNX Runtime vs PyTorch: {report.max_abs_diff:.3g} "
          f"(tolerance {cfg.tolerance:g}, batch sizes {', '.join(map(str, sorted(set(cfg.batch_sizes))))}): {verdict}")
    print_latency(report)
    meta = getattr(model, "meta", {})
    body = {**report.to_dict(), "model": cfg.student, "input_size": list(input_size), "flops": complexity.flops,
            "params": complexity.params, "normalisation": {k: meta[k] for k in ("mean", "std") if k in meta},
            "config": dataclasses.asdict(cfg)}
    json_path = out.with_suffix(".export.json")
    write_json(json_path, body)
    print(f"\nwrote {out} and {json_path}")
    if not report.passed:
        raise ValueError(f"the ONNX file differs from PyTorch by {report.max_abs_diff:.3g}, more than --tolerance "
                         f"{cfg.tolerance:g}; do not deploy {out}")
    return report


def _check_outputs_spare_the_inputs(inputs: dict[str, str | None], outputs: list[Path]) -> None:
    """No written file (the ONNX file, its ``.export.json``) is a file read (``{flag: path}``): the export would
    replace the trained model, or the config it was asked to repeat.

    Raises:
        ValueError: naming the clash and what to pass.
    """
    for flag, given in inputs.items():
        for path in outputs if given else []:
            if path.resolve() == Path(given).resolve() or (path.exists() and os.path.samefile(path, given)):
                raise ValueError(f"--out {str(outputs[0])!r} would write {str(path)!r}, which is the {flag} file "
                                 "this export reads; pass another --out (e.g. a name ending in .onnx)")


def _input_size(cfg: ExportConfig, model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W): channels from the architecture arguments, size from the file's meta, else --image-size, else 32.

    Raises:
        ValueError: ``--image-size`` differs from the size the model file records (it was trained on that size;
            the recipes refuse the same mismatch).
    """
    recorded = getattr(model, "meta", {}).get("image_size")
    if cfg.image_size is not None and recorded is not None and cfg.image_size != recorded:
        raise ValueError(f"{cfg.student!r} was trained on {recorded}-pixel images (its file says so); pass "
                         f"--image-size {recorded} or leave --image-size out")
    size = recorded or cfg.image_size or 32
    return int(model.arch_spec["kwargs"].get("in_chans", 3)), int(size), int(size)


def print_latency(report: ExportReport) -> None:
    """Median latency (10th–90th percentile) and images/s per batch size, PyTorch beside ONNX Runtime."""
    threads = report.torch_latency[0].threads if report.torch_latency else "?"
    print(f"\nCPU latency, {threads} threads (median ms [p10–p90], images/s at the median):")
    print(f"  {'batch':>5}  {'PyTorch ms':>22} {'img/s':>9}  {'ONNX Runtime ms':>22} {'img/s':>9}  "
          f"{'ORT speed-up':>12}")
    for t, o in zip(report.torch_latency, report.onnx_latency):
        print(f"  {t.batch_size:>5}  {_ms(t):>22} {t.images_per_s:>9.1f}  {_ms(o):>22} {o.images_per_s:>9.1f}  "
              f"{t.median_ms / o.median_ms:>11.2f}×")


def _ms(r: LatencyResult) -> str:
    return f"{r.median_ms:.3f} [{r.p10_ms:.3f}–{r.p90_ms:.3f}]"


if __name__ == "__main__":
    try:
        run_main(main)
    except ImportError as err:  # a missing deploy package: its one sentence says what to install
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
