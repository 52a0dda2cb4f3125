"""What a distillation run leaves besides the report block: metrics.csv and curves per stage, measured latency,
an ONNX student that onnxruntime agrees with, and a teacher cache that a second run reuses."""
import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import pruning
from recipes import distill_only, prune_then_distill

pytestmark = pytest.mark.slow  # end to end: see setup.cfg

TEACHER = ["--teacher-model-args", '{"widths": [8, 8, 8, 8], "hidden": 16}', "--teacher-epochs", "1"]
DATA = ["--dataset", "synthetic", "--limit-train", "96", "--limit-test", "32", "--image-size", "16", "--epochs", "2",
        "--batch-size", "32", "--no-progress", "--latency-batch-sizes", "1", "4"]


def test_prune_then_distill_writes_metrics_latency_and_a_checked_onnx_student(tmp_path, capsys):
    out = tmp_path / "run"
    result = prune_then_distill.main([*DATA, *TEACHER, "--ratio", "0.5", "--export", "onnx", "--out", str(out),
                                      "--finetune-lr", "0.02"])
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())

    for stage in ("teacher_train", "student_train"):  # one row per epoch, the loss parts as columns
        with open(out / stage / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["epoch"] for r in rows] == ["1"] * (stage == "teacher_train") + ["1", "2"] * (stage != "teacher_train")
        assert (out / stage / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(rows[0]) >= {"loss_ce", "loss_kd", "val_accuracy", "lr", "images_per_s"}
    assert float(rows[0]["lr"]) == pytest.approx(0.01)  # the student's cosine at --finetune-lr 0.02, half-way
    history = report["history"]
    assert [float(r["loss_kd"]) for r in rows] == [h["train_parts"]["kd"] for h in history]

    latency = report["latency"]
    assert [r["batch_size"] for r in latency["student"]] == [1, 4] and latency["teacher"][0]["median_ms"] > 0
    assert latency["speedup"]["1"] == latency["teacher"][0]["median_ms"] / latency["student"][0]["median_ms"]
    assert printed.index("Accuracy =") < printed.index("latency (") < printed.index("ONNX:")

    onnx = report["onnx"]
    assert onnx["passed"] and onnx["max_abs_diff"] < 1e-4 and Path(onnx["path"]) == out / "student.onnx"
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    student = pruning.load(out / "student.pt").eval()
    x = torch.randn(3, 3, 16, 16)  # another batch size than the export's example: the batch is dynamic
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, student(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert result.reports[-1].accuracy == report["accuracy"]


def test_a_teacher_cache_is_built_once_and_reused_by_the_next_run(tmp_path, capsys):
    teacher_run = tmp_path / "t"
    prune_then_distill.main([*DATA, *TEACHER, "--ratio", "0.5", "--no-latency", "--out", str(teacher_run)])
    common = [*DATA, "--teacher", str(teacher_run / "teacher.pt"), "--model-args", '{"widths": [4, 4, 4, 4], '
              '"hidden": 8}', "--teacher-cache", "3", "--cache-dir", str(tmp_path / "cache"), "--no-latency"]
    capsys.readouterr()
    first = distill_only.main([*common, "--out", str(tmp_path / "a")])
    built = capsys.readouterr().out
    second = distill_only.main([*common, "--out", str(tmp_path / "b")])
    reused = capsys.readouterr().out
    assert "teacher cache: 3 views × 96 images" in built and "built in" in built and "reused" in reused
    assert first[-1].accuracy == second[-1].accuracy  # same seed, same cached views: the same run
    history = json.loads((tmp_path / "a" / "report.json").read_text())["history"]
    assert all(h["train_parts"]["kd"] > 0 for h in history)
