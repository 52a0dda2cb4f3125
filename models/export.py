"""ONNX export with a dynamic batch dimension, a numerical check against PyTorch, and ONNX Runtime latency.

The exporter is ``torch.onnx.export(..., dynamo=True)``: ``torch.export`` captures the graph and onnxscript translates
it. It is torch's default and maintained exporter; the TorchScript one (``dynamo=False``) warns on every call that it
is deprecated and will be removed. Both export ``wide_cnn``, ``resnet20``, ``shufflenet_v2`` and pruned students
exactly (max abs difference ~1e-8 against PyTorch), so ``dynamo=False`` stays available as a fallback for models that
``torch.export`` cannot capture. The graph is exported in eval mode (BatchNorm folded into the convolutions, dropout
gone); its input ``input`` (B, C, H, W) and output ``logits`` (B, num_classes) have a symbolic batch dimension.
Inputs are expected normalised, as the model saw them in training (a model file's ``meta`` has ``mean``/``std``).

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional packages: ``pip install -e ".[deploy]"``.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from models.checkpoint import atomic_write
from models.common import eval_mode, model_device
from models.latency import (
    DEFAULT_MIN_SECONDS, DEFAULT_REPEATS, DEFAULT_WARMUP, LatencyResult, measure_latency, time_callable,
)

DEFAULT_OPSET = 20  # what the dynamo exporter writes natively in torch 2.14 (no version conversion)
DEFAULT_TOLERANCE = 1e-3  # max abs difference of the logits accepted by ExportReport.passed
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportReport:
    """What :func:`export_and_check` found: the ONNX file, the largest absolute difference between its logits and
    PyTorch's (over every batch size), and the per-batch-size latency of both runtimes on the CPU."""

    path: str
    max_abs_diff: float
    tolerance: float
    torch_latency: list[LatencyResult] = field(default_factory=list)
    onnx_latency: list[LatencyResult] = field(default_factory=list)
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"

    @property
    def passed(self) -> bool:
        """True when ``max_abs_diff <= tolerance`` (a NaN difference fails)."""
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] = (3, 32, 32),
                opset: int = DEFAULT_OPSET, *, dynamo: bool = True, metadata: dict[str, Any] | None = None) -> Path:
    """Writes ``model`` (in eval mode) as an ONNX file whose batch dimension is dynamic; returns the path.

    The file is written to a temporary name and renamed, so ``path`` is either the old file or the complete new one.
    The model's train/eval mode is restored. ``input_size`` is one input without the batch dimension, (C, H, W).
    ``metadata`` (e.g. ``mean``, ``std``, ``classes``, ``image_size``) goes into the model's ``metadata_props``, each
    value as JSON text (:func:`deploy_metadata`), so a runtime reads how to feed the network from the file itself.

    Raises:
        ImportError: when onnx (or onnxscript, for ``dynamo=True``) is missing.
        RuntimeError: when the exporter cannot translate the model.
    """
    onnx = _require("onnx")
    if dynamo:
        _require("onnxscript")
    device = model_device(model)
    example = torch.zeros((2, *input_size), device=device)  # (2, C, H, W): a batch of 1 invites specialisation
    with eval_mode(model):
        path = atomic_write(path, lambda tmp: (_export(model, example, tmp, opset, dynamo),
                                               _add_metadata(onnx, tmp, metadata or {})))
    onnx.checker.check_model(str(path))
    return path


def deploy_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """What a deployed network needs to be fed, from a model file's meta: ``mean``, ``std``, ``classes`` and
    ``image_size`` (those present), each as JSON text, plus ``input``, the layout and scaling of the input tensor."""
    found = {k: json.dumps(meta[k]) for k in ("mean", "std", "classes", "image_size") if k in meta}
    if found:
        found["input"] = "(B, C, H, W) float32 images scaled to [0, 1], then (x - mean) / std per channel"
    return found


def _add_metadata(onnx: ModuleType, path: str, metadata: dict[str, str]) -> None:
    if not metadata:
        return
    proto = onnx.load(path)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def export_program(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] = (3, 32, 32),
                   metadata: dict[str, str] | None = None) -> float:
    """Writes ``model`` (eval mode, CPU copy) as a ``torch.export`` program (``.pt2``, batch dimension dynamic),
    with ``metadata`` as the extra file ``metadata.json``; loads it back and returns the largest absolute difference
    of its logits from the model's on seeded random inputs of batch sizes 1 and 3. Needs only torch to run:
    ``torch.export.load(path).module()(x)``.

    Raises:
        RuntimeError: when ``torch.export`` cannot capture the model.
    """
    work = copy.deepcopy(model).cpu().eval()
    example = torch.zeros((2, *input_size))  # (2, C, H, W): a batch of 1 invites specialisation
    try:
        program = torch.export.export(work, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as err:  # torch.export raises many types; the first line says what it could not capture
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"torch.export could not capture {type(model).__name__}: {first}") from err
    extra = {"metadata.json": json.dumps(metadata or {})}
    path = atomic_write(path, lambda tmp: torch.export.save(program, tmp, extra_files=extra))
    loaded = torch.export.load(str(path)).module()
    generator = torch.Generator().manual_seed(0)
    diffs = []
    with torch.no_grad():
        for b in (1, 3):
            x = torch.randn((b, *input_size), generator=generator)
            diffs.append(float((loaded(x) - work(x)).abs().max()))
    return max(diffs)


def _export(model: nn.Module, example: torch.Tensor, path: str, opset: int, dynamo: bool) -> None:
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        if dynamo:
            torch.onnx.export(model, (example,), path, dynamo=True, verbose=False, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        else:
            torch.onnx.export(model, (example,), path, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)
    except Exception as err:  # the exporters raise many types; give the one sentence that helps, keep the cause
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        other = "dynamo=False (the TorchScript exporter)" if dynamo else "dynamo=True"
        raise RuntimeError(f"torch.onnx.export could not export {type(model).__name__}: {first}; "
                           f"try {other}") from err


def verify_onnx(path: str | os.PathLike, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between the logits of the ONNX file (ONNX Runtime, CPU) and of ``model`` (eval
    mode, on its device, mode restored afterwards) on ``inputs`` (B, C, H, W)."""
    session = _session(path, threads=None)
    device = model_device(model)
    with eval_mode(model), torch.inference_mode():
        expected = model(inputs.to(device)).float().cpu()  # (B, K)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: _numpy(inputs)})[0])
    if got.shape != expected.shape:
        raise ValueError(f"the ONNX file {str(path)!r} returned shape {tuple(got.shape)} for inputs "
                         f"{tuple(inputs.shape)}, PyTorch {tuple(expected.shape)}")
    return float((got.float() - expected).abs().max())


def onnx_latency(path: str | os.PathLike, input_size: Sequence[int] = (3, 32, 32),
                 batch_sizes: Sequence[int] = (1, 64), threads: int | None = None, *, warmup: int = DEFAULT_WARMUP,
                 repeats: int = DEFAULT_REPEATS, min_seconds: float = DEFAULT_MIN_SECONDS) -> list[LatencyResult]:
    """ONNX Runtime (CPU) latency of one ``session.run`` per batch size, timed by :func:`models.time_callable` as
    :func:`models.measure_latency` times PyTorch. ``threads``: intra-op threads; None uses
    ``torch.get_num_threads()``, so that both runtimes get the same number by default."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
    threads = threads if threads is not None else torch.get_num_threads()
    session = _session(path, threads)
    name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(0)
    results = []
    for b in batch_sizes:
        feed = {name: torch.randn((b, *input_size), generator=generator).numpy()}  # (B, C, H, W) float32
        times = time_callable(lambda: session.run(None, feed), warmup=warmup, repeats=repeats,
                              min_seconds=min_seconds)
        results.append(LatencyResult.from_times(times, b, threads, "fp32", runtime="onnxruntime"))
    return results


def export_and_check(model: nn.Module, path: str | os.PathLike, input_size: Sequence[int] = (3, 32, 32),
                     batch_sizes: Sequence[int] = (1, 64), threads: int | None = None, *, opset: int = DEFAULT_OPSET,
                     dynamo: bool = True, tolerance: float = DEFAULT_TOLERANCE, warmup: int = DEFAULT_WARMUP,
                     repeats: int = DEFAULT_REPEATS, min_seconds: float = DEFAULT_MIN_SECONDS,
                     metadata: dict[str, str] | None = None) -> ExportReport:
    """Exports ``model`` to ``path``, compares ONNX Runtime with PyTorch on seeded random inputs of every batch size,
    and measures both on the CPU with the same number of threads (None: ``torch.get_num_threads()``).

    The report says whether the difference is within ``tolerance`` (``report.passed``); deciding what a failure means
    is the caller's. The model's mode and device are restored. ``metadata``: see :func:`export_onnx`.
    """
    path = export_onnx(model, path, input_size, opset, dynamo=dynamo, metadata=metadata)
    generator = torch.Generator().manual_seed(0)
    diff = max(verify_onnx(path, model, torch.randn((b, *input_size), generator=generator))
               for b in sorted(set(batch_sizes)))
    threads = threads if threads is not None else torch.get_num_threads()
    timing = {"warmup": warmup, "repeats": repeats, "min_seconds": min_seconds}
    torch_latency = measure_latency(model, input_size, batch_sizes, threads=threads, device="cpu", **timing)
    ort_latency = onnx_latency(path, input_size, batch_sizes, threads, **timing)
    return ExportReport(str(path), diff, tolerance, torch_latency, ort_latency, opset,
                        "dynamo" if dynamo else "torchscript")


def _session(path: str | os.PathLike, threads: int | None) -> Any:
    ort = _require("onnxruntime")
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's graph-optimisation notes are not for users
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _numpy(x: torch.Tensor) -> Any:
    return x.detach().float().cpu().numpy()


DEPLOY_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def missing_deploy_packages() -> list[str]:
    """The optional deploy packages (:data:`DEPLOY_PACKAGES`) that are not installed, found without importing them:
    what a run that exports at its end checks at its start."""
    return [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]


def _require(package: str) -> ModuleType:
    """Imports an optional deploy package, or says in one sentence how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"ONNX export and inference need the {package} package; install them with "
                          f'pip install -e ".[deploy]"') from None
