"""After training: teacher and student latency side by side and, with ``--export onnx``, the checked ONNX student."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from kd import distributed
from models import measure_latency
from models.export import DEFAULT_TOLERANCE, deploy_metadata, export_and_check, export_program
from recipes.plumbing.config import KDConfig
from recipes.plumbing.training import hardware


def deployment(cfg: KDConfig, teacher: nn.Module, student: nn.Module, input_size: tuple[int, ...],
               out: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measured forward latency of teacher and student (``--latency-batch-sizes``, this run's precision and threads)
    and, with ``--export onnx``, ``OUT/student.onnx`` checked against PyTorch with onnxruntime (with ``--export
    torch-export``, ``OUT/student.pt2`` checked against PyTorch); either carries ``meta``'s mean, std, classes and
    image size (the data's, :func:`models.export.deploy_metadata`). Prints both after the report blocks and returns
    them for report.json. FLOPs are not speed: this is what users prune for.

    Raises:
        ValueError: when the ONNX model's outputs differ from PyTorch's by more than the tolerance.
    """
    found: dict[str, Any] = {}
    if not distributed.is_main():
        return found  # rank 0 measures and writes; the others would only compete for the cores
    shape = tuple(input_size[1:])
    if cfg.latency:
        precision = hardware(cfg).precision
        timing = {"batch_sizes": cfg.latency_batch_sizes, "precision": precision, "repeats": 10, "min_seconds": 0.2}
        rows = {name: measure_latency(m, shape, **timing) for name, m in (("teacher", teacher), ("student", student))}
        print(f"\nlatency ({precision}, {rows['student'][0].threads} threads, median of >= 10 forward passes):")
        for t, s in zip(rows["teacher"], rows["student"]):
            print(f"  batch {t.batch_size:3d}: teacher {t.median_ms:9.2f} ms  student {s.median_ms:9.2f} ms  "
                  f"{speed_wording(t.median_ms, s.median_ms)}  ({s.images_per_s:,.0f} images/s)")
        found["latency"] = {name: [dataclasses.asdict(r) for r in res] for name, res in rows.items()}
        found["latency"]["speedup"] = {t.batch_size: t.median_ms / s.median_ms for t, s in zip(*rows.values())}
    metadata = deploy_metadata(meta or getattr(student, "meta", None) or {})
    if cfg.export == "torch-export":
        diff = export_program(student, out / "student.pt2", shape, metadata)
        if diff > DEFAULT_TOLERANCE:
            raise ValueError(f"{out / 'student.pt2'} differs from the PyTorch student by {diff:.3g} (tolerance "
                             f"{DEFAULT_TOLERANCE:g}); the exported program is not trustworthy")
        print(f"\ntorch.export: {out / 'student.pt2'} (max abs difference to PyTorch {diff:.2e}; load it with "
              "torch.export.load(path).module(), metadata.json among its extra files)")
        found["torch_export"] = {"path": str(out / "student.pt2"), "max_abs_diff": diff, "metadata": metadata}
    if cfg.export == "onnx":
        rep = export_and_check(student, out / "student.onnx", shape, cfg.latency_batch_sizes, repeats=10,
                               min_seconds=0.5, metadata=metadata)
        if not rep.passed:
            raise ValueError(f"{rep.path} differs from the PyTorch student by {rep.max_abs_diff:.3g} (tolerance "
                             f"{rep.tolerance:g}); the ONNX file is not trustworthy")
        print(f"\nONNX: {rep.path} (max abs difference to PyTorch {rep.max_abs_diff:.2e})")
        for t, o in zip(rep.torch_latency, rep.onnx_latency):
            print(f"  batch {t.batch_size:3d}: PyTorch {t.median_ms:9.2f} ms  onnxruntime {o.median_ms:9.2f} ms")
        found["onnx"] = rep.to_dict()
    return found


def speed_wording(teacher_ms: float, student_ms: float) -> str:
    """How the student's latency compares with the teacher's, as a factor above 1: ``teacher_ms / student_ms``
    ``x faster`` when the student is quicker, ``student_ms / teacher_ms`` ``x slower`` when it is not (never
    "0.83x faster")."""
    if student_ms <= teacher_ms:
        return f"{teacher_ms / student_ms:5.2f}x faster"
    return f"{student_ms / teacher_ms:5.2f}x slower"
