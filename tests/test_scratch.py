"""The scratch arm: a pruned architecture with fresh weights (models.init.reinitialize), prune_then_distill's
``--student-init scratch`` and kd_gain's ``--init`` cells and four-way table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import pruning
from benchmarks import device_sweep, kd_gain
from models import create_model, profile, save_model
from models.init import first_conv, reinitialize
from recipes import prune_then_distill

pytestmark = pytest.mark.usefixtures("one_thread")


def _pruned() -> nn.Module:
    torch.manual_seed(0)
    teacher = create_model("fast_cnn", 10)
    first_conv(teacher).weight.requires_grad_(False)  # as a whitened, frozen first conv of a trained fast_cnn
    return pruning.prune(teacher, torch.zeros(1, 3, 32, 32), ratio=0.5, recalibrate_bn=False).model


def test_a_reinitialised_pruned_model_has_new_weights_and_the_same_architecture():
    model = _pruned()
    with torch.no_grad():  # trained-looking BatchNorm state, which a fresh model does not have
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(3.0), m.running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes, flops = {k: v.shape for k, v in before.items()}, profile(model).flops
    torch.manual_seed(1)
    assert reinitialize(model) > 0
    after = model.state_dict()
    assert {k: v.shape for k, v in after.items()} == shapes and profile(model).flops == flops
    weights = [k for k in before if k.endswith("weight") and after[k].dtype.is_floating_point]
    assert weights and all(not torch.equal(before[k], after[k]) for k in weights)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_mean,
                                                                              torch.zeros_like(bn.running_mean))
    assert all(p.requires_grad for p in model.parameters())  # the frozen first conv trains again, as in a new model


def test_a_parameter_without_reset_parameters_is_refused():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.scale = nn.Conv2d(3, 4, 3), nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match="scale belong to modules without reset_parameters"):
        reinitialize(Scaled())


def test_prune_then_distill_trains_the_pruned_architecture_from_scratch(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("wide_cnn", 10, widths=(8, 8, 8, 8), hidden=16)
    save_model(teacher, tmp_path / "teacher.pt")
    argv = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16", "--epochs",
            "1", "--batch-size", "32", "--no-progress", "--no-latency", "--teacher", str(tmp_path / "teacher.pt"),
            "--ratio", "0.5", "--student-init", "scratch", "--precision", "fp32", "--out", str(tmp_path / "run")]
    result = prune_then_distill.main(argv)
    assert [r.name for r in result.reports] == ["teacher", "student_scratch", "student"]
    expected = pruning.prune(teacher, torch.zeros(1, 3, 16, 16), ratio=0.5).after.flops
    assert result.reports[1].flops == result.reports[2].flops == expected  # the pruned widths, fresh weights
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["student_init"] == "scratch"


def _record(init: str | None, loss: str, lr: float, accuracy: float, seed: int = 0, epochs: int = 20) -> dict:
    record = {"flops_target": 100, "epochs": epochs, "loss": loss, "lr": lr, "seed": seed, "accuracy": accuracy}
    return record if init is None else {**record, "init": init}


def test_four_way_table_against_hand_means():
    records = [_record(None, "kd", 0.3, 90.0), _record(None, "kd", 0.3, 92.0, 1), _record("pruned", "kd", 0.1, 80.0),
               _record("pruned", "ce", 0.3, 89.0), _record("scratch", "kd", 0.3, 85.0),
               _record("scratch", "ce", 1.5, 86.0), _record("scratch", "ce", 1.5, 88.0, 1),
               _record("scratch", "ce", 0.3, 70.0), _record(None, "ce", 0.3, 50.0, epochs=8)]
    rows = kd_gain.four_way(records).splitlines()
    assert len(rows) == 3  # the 8-epoch cell has no scratch cells, so no four-way row
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells == ["100", "20", "91.00 ± 1.41 (kd at 0.3, 2)", "89.00 (ce at 0.3, 1)", "85.00 (kd at 0.3, 1)",
                     "87.00 ± 1.41 (ce at 1.5, 2)", "+4.00"]  # 91 (pruned kd) − 87 (scratch ce)
    # the Δ table keeps to the pruned cells: 91 − 89, not 91 − 87
    assert kd_gain.deltas(records)[100, 20][1] == pytest.approx(2.0)
    assert kd_gain.four_way([_record(None, "kd", 0.3, 90.0)]) == ""


def test_scratch_cells_are_named_apart_and_old_names_are_kept():
    assert kd_gain.cell_name(100, 8, "kd", 0.3, 0, "t") == "t_f100_e8_kd_lr0.3_s0"
    assert kd_gain.cell_name(100, 8, "kd", 0.3, 0, "t", "scratch") == "t_f100_e8_scratch-kd_lr0.3_s0"
    assert kd_gain.cell_init({"loss": "kd"}) == "pruned"


@pytest.mark.slow
def test_kd_gain_runs_and_tables_the_scratch_arm(cifar10_dir: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kd_gain, "RESULTS", tmp_path / "results")
    torch.manual_seed(0)
    teacher = create_model("wide_cnn", 10, widths=(8, 8, 8, 8), hidden=16)
    save_model(teacher, tmp_path / "teacher.pt")
    flops = profile(teacher).flops // 2
    kd_gain.main(["--teacher", str(tmp_path / "teacher.pt"), "--data-dir", str(cifar10_dir), "--recipe", "classic",
                  "--flops", str(flops), "--epochs", "1", "--losses", "ce,kd", "--lrs", "0.01", "--init", "scratch",
                  "--tag", "t", "--out", str(tmp_path / "runs"), "--", "--limit-train", "100", "--limit-test", "50",
                  "--batch-size", "50", "--precision", "fp32", "--cache-dir", str(tmp_path / "cache")])
    cells = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert cells == [f"t_f{flops}_e1_scratch-ce_lr0.01_s0.json", f"t_f{flops}_e1_scratch-kd_lr0.01_s0.json"]
    record = json.loads((tmp_path / "results" / cells[1]).read_text())
    assert record["init"] == "scratch" and "--student-init scratch" in record["command"]
    assert record["flops"] <= flops
    assert "| scratch + KD |" in capsys.readouterr().out


def test_device_sweep_lists_the_scratch_cells_for_a_given_teacher():
    args = argparse.Namespace(data_dir="d", runs="/tmp/r", tag="h200", device="cuda", teacher="t.pt", smoke=False,
                              grid="scratch", cell_tag="gpu-t92")
    jobs = device_sweep.grid(args)
    assert len(jobs) == len(device_sweep.scratch_cells()) == 6 * 3 * 6
    first = jobs[0].argv
    assert first[first.index("--init") + 1] == "scratch" and first[first.index("--epochs") + 1] == "20"
    assert first[first.index("--tag") + 1] == "gpu-t92" and jobs[0].after == ()
    starts = {j.argv[j.argv.index("--init") + 1] for j in jobs}
    assert starts == {"pruned", "scratch"}


def test_device_sweep_strong_grid_waits_for_its_teachers():
    args = argparse.Namespace(data_dir="d", runs="/tmp/r", tag="h200", device="cuda", teacher=None, smoke=False,
                              grid="strong", cell_tag=None)
    jobs = {j.name: j for j in device_sweep.grid(args)}
    teachers = [n for n in jobs if n.startswith("teacher-")]
    assert len(teachers) == len(device_sweep.STRONG_TEACHERS) and all(jobs[n].after == () for n in teachers)
    ensemble = jobs["ensemble-wide-80"]
    assert ensemble.after == ("teacher-fast-wide-40-s0", "teacher-fast-wide-40-s1", "teacher-fast-wide-40-s2")
    given = ensemble.argv[ensemble.argv.index("--teacher") + 1:ensemble.argv.index("--teacher-tta")]
    assert given == [f"/tmp/r/teachers/fast_cnn_fast-wide-40_seed{s}_h200/teacher.pt" for s in (0, 1, 2)]
    cells = [j for n, j in jobs.items() if n.startswith("cell-")]
    scratch = [j for j in cells if j.argv[j.argv.index("--init") + 1] == "scratch"]
    assert len(scratch) == 2 * 3 * 4  # 20 and 40 epochs, 3 seeds, CE and KD at two rates
    assert all(j.after == ("teacher-fast-wide-40-s0",) and j.argv[j.argv.index("--flops") + 1] == "31269888"
               and j.argv[j.argv.index("--tag") + 1] == "h200-wide40" for j in cells)
