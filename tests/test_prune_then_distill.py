"""recipes/prune_then_distill.py end to end on a few hundred real CIFAR-10 images, and its offline message."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import pruning
from kd import evaluate
from kd.data import load_dataset, make_loaders
from models import create_model, profile
from recipes import prune_then_distill

BLOCK = re.compile(r"== (\w+) ==\nflops = (\d+)\nModel parameter size = (\d+\.\d{3}) kB\nAccuracy = (\d+\.\d{2}) %")
TEACHER_ARGS = {"widths": [8, 16, 16, 16], "hidden": 32, "dropout": 0.0}
SMALL = ["--limit-train", "300", "--limit-test", "200", "--batch-size", "50", "--no-progress"]


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # end to end


def _data_args(cifar10_dir: Path, cache: Path) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--cache-dir", str(cache), *SMALL]


def test_recipe_trains_teacher_prunes_distills_and_saves(cifar10_dir, tmp_path, capsys):
    teacher_flops = profile(create_model("wide_cnn", 10, **TEACHER_ARGS)).flops
    target = teacher_flops // 2
    out = tmp_path / "run"
    argv = [*_data_args(cifar10_dir, tmp_path / "cache"), "--teacher-model-args", json.dumps(TEACHER_ARGS),
            "--teacher-epochs", "1", "--epochs", "1", "--target-flops", str(target), "--out", str(out)]
    result = prune_then_distill.main(argv)

    printed = capsys.readouterr().out
    blocks = {name: (int(f), float(kb), float(acc)) for name, f, kb, acc in BLOCK.findall(printed)}
    assert list(blocks) == ["teacher", "student_pruned", "student"]
    assert "pruning (l1" in printed and "before" in printed and "after" in printed
    saved = json.loads((out / "report.json").read_text())
    models = saved["models"]
    assert models["teacher"]["flops"] == teacher_flops == blocks["teacher"][0]
    assert models["student"]["flops"] == models["student_pruned"]["flops"] == blocks["student"][0]
    assert 0.9 * target <= models["student"]["flops"] <= target
    assert saved["flops"] == models["student"]["flops"] and saved["accuracy"] == models["student"]["accuracy"]
    assert saved["config"]["target_flops"] == target and saved["config"]["kd_loss"] == "kd-ls"
    assert saved["pruning"]["after"]["flops"] == models["student"]["flops"] and saved["pruning"]["layers"]
    for r in models.values():
        assert 0.0 <= r["accuracy"] <= 100.0
        assert r["param_size_kb"] == pytest.approx(r["params"] * 4 / 1024)
    assert [r.name for r in result.reports] == ["teacher", "student_pruned", "student"]

    payload = torch.load(out / "student.pt", weights_only=True)  # pickle-free
    assert payload["arch"] == "wide_cnn" and payload["meta"]["accuracy"] == models["student"]["accuracy"]
    loaded = pruning.load(out / "student.pt")
    x = torch.randn(4, 3, 32, 32)
    result.student.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.student(x))
    # the saved student scores exactly what the report says, on the same test images and normalisation
    data = load_dataset("imagefolder", cifar10_dir, limit_train=300, limit_test=200, cache_dir=tmp_path / "cache")
    _, test = make_loaders(data, 50)
    assert evaluate(loaded, test).accuracy == models["student"]["accuracy"]

    # a saved teacher is reused: loaded (its normalisation too), scored on the same split, pruned by activation
    again = tmp_path / "again"
    argv = [*_data_args(cifar10_dir, tmp_path / "cache"), "--teacher", str(out / "teacher.pt"), "--ratio", "0.5",
            "--importance", "activation", "--calibration-images", "100", "--alpha", "0", "--epochs", "1",
            "--hint-layer", "features.conv3", "--out", str(again)]
    second = prune_then_distill.main(argv)
    assert second.reports[0].accuracy == models["teacher"]["accuracy"]
    assert second.pruning.importance == "activation"
    assert second.pruning.pruned_layers()["features.conv2.conv"] == (16, 8)
    assert "cross-entropy only + FitNet hint on features.conv3" in capsys.readouterr().out  # the hint runs the teacher
    assert not second.student.features.conv3._forward_hooks  # the hint's hooks are gone after training

    # cross-entropy only, no hint: the teacher is not run during fine-tuning
    argv = [*argv[:-4], "--out", str(tmp_path / "ce")]
    prune_then_distill.main(argv)
    assert "cross-entropy only" in capsys.readouterr().out


def test_without_arguments_it_is_the_lab_job_on_what_ships(tmp_path, monkeypatch, capsys):
    """The no-argument run: the shipped CIFAR-10 pack, the committed teacher, the lab's budget, 8 fast epochs of KD.
    Run here on a class-balanced slice of the shipped images (the full job is the README's measured 15 minutes)."""
    cfg = prune_then_distill.parse_config(prune_then_distill.PruneThenDistillConfig, [])
    assert (cfg.dataset, cfg.recipe, cfg.epochs, cfg.kd_loss, cfg.target_flops) == ("cifar10-jpeg", "fast", 8, "kd",
                                                                                    None)
    monkeypatch.chdir(tmp_path)
    result = prune_then_distill.main(["--limit-train", "300", "--limit-test", "200", "--recipe", "fast",
                                      "--batch-size", "100", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
                                      "--no-latency", "--no-progress"])
    out = capsys.readouterr().out
    assert "the committed cifar10-jpeg teacher" in out and "sha256 checked" in out
    teacher, student = result.reports[0], result.reports[-1]
    assert teacher.flops == 118_381_344 and teacher.accuracy > 80  # 90.88 % on all 10,000 test images
    assert student.flops <= prune_then_distill.LAB_TARGET_FLOPS and student.param_size_kb <= 8677.812
    assert (tmp_path / "runs" / "prune_then_distill" / "student.pt").is_file()


def test_offline_torchvision_sets_say_what_ships(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    seen = {}

    def offline(root, train, download):
        seen["root"] = root
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        prune_then_distill.run_main(prune_then_distill.main, ["--dataset", "cifar100"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: could not download cifar100")
    assert "--dataset cifar10-jpeg" in err and "--dataset imagefolder --data-dir DIR" in err
    assert seen and not (tmp_path / "runs").exists()  # nothing is written before the data is there


def test_impossible_target_is_one_line(cifar10_dir, tmp_path, capsys):
    argv = [*_data_args(cifar10_dir, tmp_path / "cache"), "--teacher-model-args", json.dumps(TEACHER_ARGS),
            "--teacher-epochs", "1", "--target-flops", "1000", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        prune_then_distill.run_main(prune_then_distill.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "smallest reachable value" in err
