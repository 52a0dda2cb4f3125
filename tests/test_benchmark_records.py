"""benchmarks/record_run.py keeps a run's numbers and curves; benchmarks/teacher_ensemble.py scores every subset;
benchmarks/average_weights.py averages model files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch
from torch import nn

from benchmarks import average_weights, record_run, teacher_ensemble
from models import load_model
from recipes.plumbing.errors import run_main


def test_a_run_is_kept_with_its_models_and_per_epoch_curves(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "student_train").mkdir(parents=True)
    models = {"student": {"flops": 30667737, "param_size_kb": 2017.18359375, "accuracy": 88.67}}
    sittings = [{"started": None, "hardware": None}, {"started": "2026-12-07T16:50:50Z", "hardware": {"threads": 1}}]
    (run / "report.json").write_text(json.dumps({"models": models, "hardware": {"threads": 1}, "sittings": sittings}))
    (run / "student_train" / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,images_per_s,seconds,lr\n"
        "1,0.91749,37.9374,1.49,53.74,1400.3,35.0996,0.0861\n2,0.63087,61.4644,1.11,67.86,1376.0,35.7215,0.1122\n"
        "3,0.5,70.0,,,1300.0,36.0,0.0\nx,cut short\n")  # no evaluation at epoch 3; a line cut by a crash
    monkeypatch.setattr(record_run, "RESULTS", tmp_path / "results")
    record_run.main([str(run), "--name", "budget/s0", "--command", "python x.py --seed 0"])
    kept = json.loads((tmp_path / "results" / "budget" / "s0.json").read_text())
    assert kept["command"] == "python x.py --seed 0" and kept["models"] == models and kept["sittings"] == sittings
    assert kept["curves"]["student_train"] == [
        {"epoch": 1, "train_loss": 0.9175, "train_accuracy": 37.9374, "val_accuracy": 53.74, "seconds": 35.0996,
         "lr": 0.0861},
        {"epoch": 2, "train_loss": 0.6309, "train_accuracy": 61.4644, "val_accuracy": 67.86, "seconds": 35.7215,
         "lr": 0.1122},
        {"epoch": 3, "train_loss": 0.5, "train_accuracy": 70.0, "seconds": 36.0, "lr": 0.0}]
    with pytest.raises(SystemExit) as exit_:  # an unfinished run: one line, exit status 2
        run_main(record_run.main, [str(tmp_path), "--name", "x", "--command", "y"])
    assert exit_.value.code == 2 and "holds no report.json: not a finished recipe run" in capsys.readouterr().err


def test_every_subset_of_the_teachers_is_scored_once():
    assert teacher_ensemble.subsets(["a", "b", "c"]) == [
        ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]


def test_a_subset_scores_the_mean_of_its_members_logits():
    """Each member alone is right on one of the two images; their mean logits are right on both."""
    labels = torch.tensor([0, 1])
    a = teacher_ensemble.MemberLogits("a", 10, torch.tensor([[3.0, 0.0], [1.0, 0.0]]),
                                      torch.tensor([[3.0, 0.0], [0.0, 5.0]]), labels)
    b = teacher_ensemble.MemberLogits("b", 32, torch.tensor([[0.0, 1.0], [0.0, 4.0]]),
                                      torch.tensor([[0.0, 4.0], [0.0, 1.0]]), labels)
    assert teacher_ensemble.score_subset([a]) == {"teachers": ["a"], "flops": 10, "accuracy": 50.0,
                                                  "mirror_accuracy": 100.0}
    assert teacher_ensemble.score_subset([a, b]) == {"teachers": ["a", "b"], "flops": 42, "accuracy": 100.0,
                                                     "mirror_accuracy": 50.0}  # image 0: (3, 4) / 2, class 1


@pytest.mark.slow
def test_an_ensemble_of_the_committed_teachers_scores_as_the_teacher_ensemble_does(one_thread, tmp_path):
    from kd.data import load_dataset, make_loaders
    from kd.precision import Hardware
    from kd.trainer import evaluate
    from recipes.plumbing.teachers import load_teachers, wrap_teacher

    weights = Path(__file__).resolve().parent.parent / "benchmarks" / "weights"
    pair = [str(weights / "fast_cnn_cifar10_e40.pt"), str(weights / "fast_cnn_wide_cifar10_e40.pt")]
    data = load_dataset("imagefolder", Path(__file__).resolve().parent / "data" / "cifar10", progress=False,
                        cache_dir=tmp_path)
    fp32 = Hardware.detect("fp32", "cpu")
    row = teacher_ensemble.score_subset([teacher_ensemble.member_logits(p, data, fp32) for p in pair])
    assert row["teachers"] == ["fast_cnn_cifar10_e40.pt", "fast_cnn_wide_cifar10_e40.pt"]
    assert row["flops"] == 118_381_344 + 301_969_440
    assert row["accuracy"] > 80.0 and row["mirror_accuracy"] > 80.0  # 200 real test images; 10 % is chance
    ensemble = load_teachers(pair)  # what --teacher A B [--teacher-tta] distils from, scored by the trainer's evaluate
    _, test = make_loaders(data, 500)
    assert row["accuracy"] == pytest.approx(evaluate(ensemble, test).accuracy)
    mirrored = wrap_teacher(list(ensemble.members), mirror=True)
    assert row["mirror_accuracy"] == pytest.approx(evaluate(mirrored, test).accuracy)


def _tiny(weight: float, shift: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.fill_(weight)
        net[0].bias.fill_(shift)
        net[1].running_mean.fill_(shift)
    net[1].num_batches_tracked.fill_(int(weight))
    return net


def test_weights_are_averaged_tensor_by_tensor_and_other_networks_refused():
    mean = average_weights.average_state_dicts([_tiny(1.0, -2.0), _tiny(2.0, 0.0), _tiny(6.0, 5.0)])
    assert torch.equal(mean["0.weight"], torch.full((2, 2), 3.0))  # (1 + 2 + 6) / 3
    assert torch.equal(mean["0.bias"], torch.full((2,), 1.0)) and torch.equal(mean["1.running_mean"], mean["0.bias"])
    assert mean["1.num_batches_tracked"].item() == 1  # an integer buffer: the first model's
    with pytest.raises(ValueError, match=r"model 2 is another network: '0.weight' has shape \(3, 2\), not \(2, 2\)"):
        average_weights.average_state_dicts([_tiny(1.0, 0.0), nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(2))])


@pytest.mark.slow
def test_a_file_averaged_with_itself_keeps_its_accuracy(one_thread, tmp_path, capsys):
    weights = Path(__file__).resolve().parent.parent / "benchmarks" / "weights"
    data_dir = Path(__file__).resolve().parent / "data" / "cifar10"
    one = str(weights / "fast_cnn_cifar10_e40.pt")
    accuracy = average_weights.main([one, one, "--data-dir", str(data_dir), "--bn-images", "250",
                                     "--out", str(tmp_path / "soup.pt"), "--record", str(tmp_path / "soup.json")])
    soup = load_model(tmp_path / "soup.pt")  # the same weights; BatchNorm re-estimated on 250 training images
    assert soup.meta["accuracy"] == accuracy > 80.0 and len(soup.meta["averaged"]) == 2  # 200 test images
    assert "average of 2 files, BatchNorm from 250 training images" in capsys.readouterr().out
    record = json.loads((tmp_path / "soup.json").read_text())
    assert record["accuracy"] == accuracy and record["bn_images"] == 250
    assert [f["accuracy"] for f in record["files"]] == [90.88, 90.88]  # each file's own, from its meta
