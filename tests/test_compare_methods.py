"""recipes/compare_methods.py on tiny synthetic data: every method row, honest FLOPs, mean ± std, the PNG."""
from __future__ import annotations

import json

import pytest
import torch

from models import create_model, profile, save_model
from pruning.wide_config import scaled_wide_cnn
from recipes import compare_methods
from recipes.plumbing.compare import MethodResult, markdown_table, summarize

TINY = {"widths": [4, 8, 8, 12], "hidden": 8}
SIZE = (1, 3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(create_model("wide_cnn", 10, **TINY), path)  # no mean/std in meta: the data's own are used
    return path


METHODS = "l1+kd,l1+ce,random+kd,activation-progressive,layer-removal+kd,1x1+kd,scratch+kd,scratch+ce"


@pytest.mark.slow
def test_compare_recipe_writes_table_and_plot(teacher_file, tmp_path):
    out = tmp_path / "cmp"
    rows = compare_methods.main(["--dataset", "synthetic", "--limit-train", "80", "--limit-test", "32", "--image-size",
                           "16", "--teacher", str(teacher_file), "--epochs", "1", "--batch-size", "16",
                           "--methods", METHODS, "--seeds", "2", "--val-size", "0.2", "--calibration-batches", "2",
                           "--no-progress", "--out", str(out)])
    table = (out / "compare.md").read_text().splitlines()
    methods = METHODS.split(",")
    assert [r.method for r in rows] == ["teacher", *methods]
    for name in ["teacher", *methods]:
        assert sum(line.startswith(f"| {name} |") for line in table) == 1
    assert "±" in table[3]  # two seeds → mean ± std
    png = out / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = json.loads((out / "report.json").read_text())
    target = report["target_flops"]
    assert target == int(0.25 * profile(create_model("wide_cnn", 10, **TINY), SIZE).flops)
    assert len(report["results"]) == 2 * len(methods) and {r["seed"] for r in report["results"]} == {0, 1}
    by = {r.method: r for r in rows}
    for name in ("l1+kd", "l1+ce", "random+kd", "activation-progressive", "layer-removal+kd", "1x1+kd",
                 "scratch+kd"):
        assert by[name].flops <= target, f"{name} reports {by[name].flops} FLOPs over the budget {target}"
    assert by["l1+kd"].flops == by["l1+ce"].flops  # same pruned architecture, different loss


def test_unknown_method_is_one_clear_error(teacher_file, tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods.main(["--dataset", "synthetic", "--teacher", str(teacher_file), "--methods", "l1+kd,magic",
                        "--out", str(tmp_path)])


def test_summary_mean_std_and_table():
    results = [MethodResult("a", s, 100, 10, 0.04, acc, 2.0) for s, acc in ((0, 50.0), (1, 60.0))]
    (row,) = summarize(results)
    assert row.accuracy == 55.0 and row.accuracy_std == pytest.approx(7.0711, abs=1e-3) and row.seeds == 2
    assert "| a | 100 | 0.50 | 0.0 | 55.00 ± 7.07 | 2 |" in markdown_table([row], 200)


def test_scaled_scratch_student_fits_budget():
    teacher = create_model("wide_cnn", 10, **TINY)
    target = profile(teacher, SIZE).flops // 4
    student = scaled_wide_cnn(teacher, target, SIZE)
    assert 0.6 * target < profile(student, SIZE).flops <= target


def test_methods_do_not_depend_on_what_ran_before():
    from kd.data import load_dataset
    from recipes.plumbing.compare import make_setup, run_method

    torch.manual_seed(0)
    data = load_dataset("synthetic", limit_train=64, limit_test=32, image_size=16)
    teacher = create_model("wide_cnn", 10, **TINY)
    setup = make_setup(teacher, data, target_flops=profile(teacher, SIZE).flops // 4, epochs=1, batch_size=16,
                       val_size=16, calibration_batches=1, seed=3)
    first = run_method("scratch+ce", setup)
    run_method("l1+ce", setup)
    again = run_method("scratch+ce", setup)
    assert (first.accuracy, first.flops, first.seed) == (again.accuracy, again.flops, 3)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        torch.testing.assert_close(a, b)  # same init, same batches: the same trained weights
