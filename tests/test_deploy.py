"""Deployment: latency measurement, ONNX export and its check, the export recipe, per-epoch metrics files."""
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import models.export
import models.latency
import pruning
from kd import EpochRecord, MetricsLogger, TensorBoardLogger, Trainer
from kd.data import make_loaders
from models import LatencyResult, create_model, measure_latency, time_callable
from models.export import export_and_check, export_onnx, verify_onnx
from models.latency import num_threads
from recipes import export as export_recipe
from recipes.plumbing.errors import run_main

FAST = {"warmup": 1, "repeats": 5, "min_seconds": 0.0}  # few calls: these tests check behaviour, not speed


def tiny_cnn() -> nn.Module:
    return create_model("wide_cnn", 10, widths=[8, 16, 16, 16], hidden=32)


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so that BatchNorm folding into the ONNX graph is really exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


# ------------------------------------------------------------------------------------------------------- latency


@pytest.fixture
def three_threads():
    with num_threads(3):
        yield


def test_measure_latency_results_are_sane_and_ordered(three_threads):
    model = tiny_cnn().train()
    results = measure_latency(model, (3, 16, 16), (1, 4), threads=1, **FAST)
    assert [r.batch_size for r in results] == [1, 4]
    for r in results:
        assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms
        assert r.images_per_s == pytest.approx(r.batch_size * 1000 / r.median_ms)
        assert (r.threads, r.precision, r.runtime, r.samples) == (1, "fp32", "torch", 5)
    assert torch.get_num_threads() == 3  # restored
    assert model.training  # restored
    assert next(model.parameters()).device.type == "cpu"


def test_measure_latency_runs_in_eval_mode_and_restores_state_when_the_model_fails(three_threads):
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.seen_training = []

        def forward(self, x):
            self.seen_training.append(self.training)
            self.seen_threads = torch.get_num_threads()
            raise RuntimeError("boom")

    model = Fails().train()
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(model, (3, 8, 8), (2,), threads=1, **FAST)
    assert model.seen_training == [False] and model.seen_threads == 1
    assert model.training and torch.get_num_threads() == 3


def test_time_callable_counts_warmup_repeats_and_min_seconds(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(models.latency.time, "perf_counter", lambda: clock[0])
    calls = []

    def fn():  # every call "takes" 10 ms on the fake clock
        calls.append(1)
        clock[0] += 0.010

    times = time_callable(fn, warmup=2, repeats=3, min_seconds=0.0)
    assert len(calls) == 5 and times == pytest.approx([10.0] * 3)
    calls.clear()
    times = time_callable(fn, warmup=0, repeats=2, min_seconds=0.055)  # repeats reached, keeps going to 60 ms
    assert len(calls) == 6 and len(times) == 6
    with pytest.raises(ValueError, match="repeats"):
        time_callable(fn, repeats=0)


def test_latency_percentiles_match_numpy():
    times = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 30.0]
    r = LatencyResult.from_times(times, batch_size=8, threads=2, precision="fp32")
    assert r.median_ms == pytest.approx(np.percentile(times, 50))
    assert r.p10_ms == pytest.approx(np.percentile(times, 10))
    assert r.p90_ms == pytest.approx(np.percentile(times, 90))
    assert r.images_per_s == pytest.approx(8 * 1000 / 5.0) and r.samples == 7


def test_measure_latency_rejects_bad_arguments():
    with pytest.raises(ValueError, match="precision"):
        measure_latency(tiny_cnn(), (3, 8, 8), (1,), precision="fp8", **FAST)
    with pytest.raises(ValueError, match="batch_sizes"):
        measure_latency(tiny_cnn(), (3, 8, 8), (0,), **FAST)


# ----------------------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def pruned_wide_cnn():
    torch.manual_seed(0)
    teacher = randomise_batchnorm(create_model("wide_cnn", 10))
    return pruning.prune(teacher, torch.zeros(1, 3, 32, 32), ratio=0.5).model


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_pruned_wide_cnn_matches_pytorch_on_batch_1_and_5(pruned_wide_cnn, dynamo, tmp_path):
    model = pruned_wide_cnn.train()  # export must use eval mode and give the mode back
    path = export_onnx(model, tmp_path / "student.onnx", (3, 32, 32), dynamo=dynamo)
    assert model.training and path == tmp_path / "student.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]  # no temporary file left behind

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str)  # symbolic: any batch size
    model.eval()
    g = torch.Generator().manual_seed(0)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32, generator=g)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() < 1e-4
        assert verify_onnx(path, model, x) < 1e-4


@pytest.mark.slow
def test_verify_onnx_sees_a_different_model(tmp_path):
    path = export_onnx(tiny_cnn(), tmp_path / "a.onnx", (3, 16, 16))
    other = tiny_cnn()  # same architecture, other weights
    assert verify_onnx(path, other, torch.randn(2, 3, 16, 16)) > 1e-3


@pytest.mark.slow
def test_failed_export_keeps_the_previous_file(tmp_path):
    class Untraceable(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace me")

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="could not export Untraceable"):
        export_onnx(Untraceable(), target, (3, 8, 8))
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_missing_onnxruntime_is_one_sentence_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the package gives
    with pytest.raises(ImportError, match=r'onnxruntime package; install them with pip install -e "\.\[deploy\]"'):
        verify_onnx(tmp_path / "x.onnx", tiny_cnn(), torch.zeros(1, 3, 16, 16))


@pytest.mark.slow
def test_export_and_check_reports_both_runtimes(tmp_path):
    model = randomise_batchnorm(tiny_cnn())
    report = export_and_check(model, tmp_path / "m.onnx", (3, 16, 16), (1, 3), threads=1, **FAST)
    assert report.passed and report.max_abs_diff < 1e-4 and report.exporter == "dynamo"
    assert [(r.runtime, r.batch_size, r.threads) for r in report.torch_latency + report.onnx_latency] == [
        ("torch", 1, 1), ("torch", 3, 1), ("onnxruntime", 1, 1), ("onnxruntime", 3, 1)]
    assert all(0 < r.p10_ms <= r.median_ms <= r.p90_ms for r in report.onnx_latency)
    assert json.loads(json.dumps(report.to_dict()))["passed"] is True


# --------------------------------------------------------------------------------------------------------- recipe


@pytest.fixture
def saved_student(tmp_path):
    torch.manual_seed(0)
    student = pruning.prune(randomise_batchnorm(tiny_cnn()), torch.zeros(1, 3, 16, 16), ratio=0.5).model
    path = tmp_path / "student.pt"
    pruning.save(student, path, meta={"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    return path, student


RECIPE_FAST = ["--batch-sizes", "1", "3", "--threads", "1", "--warmup", "1", "--repeats", "3", "--min-seconds", "0"]


@pytest.mark.slow
def test_export_recipe_end_to_end(saved_student, capsys):
    path, student = saved_student
    report = export_recipe.main(["--student", str(path), *RECIPE_FAST])
    out = capsys.readouterr().out
    onnx_path = path.with_suffix(".onnx")
    assert Path(report.path) == onnx_path and onnx_path.is_file()
    assert "max abs difference ONNX Runtime vs PyTorch" in out and ": ok" in out
    table = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in table] == ["1", "3"]

    saved = json.loads(path.with_suffix(".export.json").read_text())
    assert saved["passed"] and saved["max_abs_diff"] < 1e-4 and saved["input_size"] == [3, 16, 16]
    assert [r["batch_size"] for r in saved["torch_latency"]] == [1, 3] == [r["batch_size"] for r in
                                                                          saved["onnx_latency"]]
    assert saved["normalisation"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert saved["config"]["threads"] == 1

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = student.eval()(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - expected).max() < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_export_recipe_exits_2_when_the_difference_is_above_tolerance(saved_student, monkeypatch, tmp_path, capsys):
    path, _ = saved_student
    monkeypatch.setattr(models.export, "verify_onnx", lambda *a, **k: 0.5)
    out = tmp_path / "elsewhere" / "s.onnx"
    with pytest.raises(SystemExit) as exit_info:
        run_main(export_recipe.main, ["--student", str(path), "--out", str(out), "--no-dynamo", *RECIPE_FAST])
    assert exit_info.value.code == 2
    assert "more than --tolerance 0.001" in capsys.readouterr().err
    saved = json.loads(out.with_suffix(".export.json").read_text())
    assert saved["passed"] is False and saved["exporter"] == "torchscript"


def test_export_recipe_needs_a_model_file(tmp_path, capsys):
    missing = str(tmp_path / "no.pt")
    for argv, message in (([], "--student FILE is required"), (["--student", missing], "does not exist")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(export_recipe.main, argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- metrics


@dataclass
class RecordWithParts(EpochRecord):
    """EpochRecord with the loss-parts field it is about to gain."""

    train_parts: dict[str, float] = field(default_factory=dict)


def record(epoch: int, scale: float = 1.0) -> RecordWithParts:
    return RecordWithParts(epoch, train_loss=scale / epoch, train_accuracy=10.0 * epoch + scale, val_loss=float("nan"),
                           val_accuracy=5.0 * epoch + 0.1, images_per_s=123.456, seconds=1.0 / 3, lr=0.05 / epoch,
                           train_parts={"kd": 0.7 * scale / epoch, "ce": 0.3 * scale / epoch})


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def same(cell: str, value: float) -> bool:
    return math.isnan(value) if math.isnan(float(cell)) else float(cell) == value


SCALARS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s", "seconds", "lr"]


def test_metrics_logger_writes_one_exact_row_per_epoch(tmp_path):
    logger = MetricsLogger(tmp_path, plot=False)
    records = [record(e) for e in (1, 2, 3)]
    for r in records:
        logger.log(r)
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["epoch", *SCALARS, "loss_kd", "loss_ce"]
    assert (tmp_path / "metrics.csv").read_text().count("epoch,") == 1  # header once
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    for row, r in zip(rows, records):
        assert all(same(row[c], getattr(r, c)) for c in SCALARS)
        assert float(row["loss_kd"]) == r.train_parts["kd"] and float(row["loss_ce"]) == r.train_parts["ce"]
    assert not (tmp_path / "curves.png").exists()


def test_metrics_logger_replaces_rows_after_a_simulated_resume(tmp_path):
    first = MetricsLogger(tmp_path, plot=False)
    for e in (1, 2, 3):
        first.log(record(e, scale=1.0))
    resumed = MetricsLogger(tmp_path, plot=False)  # a new process, resumed from the epoch-1 checkpoint
    for e in (2, 3, 4):
        resumed.log(record(e, scale=2.0))
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert [float(row["train_loss"]) for row in rows] == [1.0, 2.0 / 2, 2.0 / 3, 2.0 / 4]


@pytest.mark.slow
def test_metrics_logger_with_a_resumed_trainer(tiny, tmp_path):
    train, test = make_loaders(tiny, batch_size=64)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    logger = MetricsLogger(tmp_path, plot=False)
    Trainer(tiny_cnn(), epochs=2, out_dir=ckpt, progress=False, callbacks=[logger]).fit(train, test)
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["epoch", *SCALARS, "loss_ce"] and [row["epoch"] for row in rows] == ["1", "2"]
    assert all(float(row["loss_ce"]) == float(row["train_loss"]) for row in rows)  # cross-entropy is the only part
    # the previous process also left a row for epoch 3 (stopped before its checkpoint) and lost the one for epoch 2
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows([rows[0], {**rows[0], "epoch": "3", "train_loss": "99"}])

    trainer = Trainer(tiny_cnn(), epochs=3, out_dir=ckpt, progress=False, callbacks=[MetricsLogger(tmp_path)])
    result = trainer.fit(train, test, resume=True)
    _, after = read_csv(tmp_path / "metrics.csv")
    assert [row["epoch"] for row in after] == ["1", "2", "3"]
    for row, r in zip(after, result.history):
        assert all(same(row[c], getattr(r, c)) for c in SCALARS)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_metrics_logger_draws_curves_png(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(record(1))
    logger.log(record(2))
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv"]  # no temporary files


def test_tensorboard_logger_writes_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    records = [record(1), record(2)]
    for r in records:
        logger.on_epoch_end(None, r)
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {*SCALARS, "loss_kd", "loss_ce"}
    assert [(e.step, e.value) for e in events.Scalars("loss_kd")] == [
        (1, pytest.approx(records[0].train_parts["kd"])), (2, pytest.approx(records[1].train_parts["kd"]))]


def test_tensorboard_logger_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="needs the tensorboard package: pip install tensorboard"):
        TensorBoardLogger(tmp_path)
