"""``--teacher A --teacher B`` and ``--teacher-tta`` through the recipes: the options' words, the ensemble that
teaches and is reported, and the refusals (one line, exit status 2, nothing written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kd import TeacherEnsemble, evaluate
from kd.data import load_dataset, make_loaders
from models import create_model, load_model, save_model
from recipes import distill_only, progressive_prune, prune_then_distill
from recipes.plumbing.config import KDConfig, config_differences, parse_config, read_config
from recipes.plumbing import inputs
from recipes.plumbing.errors import run_main
from recipes.plumbing.teachers import load_teachers

SYNTHETIC = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16",
             "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-latency", "--precision", "fp32"]
STUDENT = ["--model-args", '{"widths": [4, 4, 4, 4], "hidden": 8}']

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_file(folder: Path, seed: int, classes: int = 10) -> str:
    torch.manual_seed(seed)
    path = folder / f"teacher{seed}.pt"
    save_model(create_model("wide_cnn", classes, widths=(8, 8, 8, 8), hidden=16), path)
    return str(path)


def _fail(recipe, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(recipe.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_teacher_takes_several_files_repeated_or_in_one_go():
    assert parse_config(KDConfig, ["--teacher", "a.pt", "--teacher", "b.pt"]).teacher == ("a.pt", "b.pt")
    assert parse_config(KDConfig, ["--teacher", "a.pt", "b.pt", "--teacher", "c.pt"]).teacher == ("a.pt", "b.pt",
                                                                                                 "c.pt")
    assert parse_config(KDConfig, ["--latency-batch-sizes", "2", "--latency-batch-sizes", "8"]
                        ).latency_batch_sizes == (2, 8)


def test_the_command_line_replaces_a_config_files_teachers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"teacher": ["a.pt", "b.pt"], "teacher_tta": True}))
    cfg = parse_config(KDConfig, ["--config", str(tmp_path / "config.json"), "--teacher", "c.pt"])
    assert cfg.teacher == ("c.pt",) and cfg.teacher_tta
    # a config.json from before --teacher took several files holds one string: read as that one file
    (tmp_path / "old.json").write_text(json.dumps({"teacher": "a.pt"}))
    assert read_config(KDConfig, tmp_path / "old.json").values["teacher"] == ("a.pt",)
    diffs = config_differences({"teacher": "a.pt"}, parse_config(KDConfig, ["--teacher", "a.pt"]))
    assert not [d for d in diffs if d.startswith("--teacher ")]  # --resume of such a run: same teacher, no change
    assert "--teacher a.pt → b.pt" in config_differences({"teacher": "a.pt"}, parse_config(KDConfig, ["--teacher",
                                                                                                  "b.pt"]))


def test_two_mirrored_teachers_teach_and_are_reported_as_their_ensemble(tmp_path, capsys):
    a, b = _teacher_file(tmp_path, 1), _teacher_file(tmp_path, 2)
    out = tmp_path / "run"
    result = prune_then_distill.main([*SYNTHETIC, "--teacher", a, "--teacher", b, "--teacher-tta", "--ratio", "0.5",
                                      "--teacher-cache", "1", "--flip", "random", "--out", str(out),
                                      "--cache-dir", str(tmp_path / "cache")])
    models = json.loads((out / "report.json").read_text())["models"]
    assert list(models) == ["teacher_1", "teacher_2", "teacher", "student_pruned", "student"]
    assert "== teacher_1 ==" in capsys.readouterr().out
    # the "teacher" block is the ensemble as it teaches: both members on each image and its mirror
    data = load_dataset("synthetic", image_size=16, limit_train=64, limit_test=32, seed=0)
    _, test = make_loaders(data, 32)
    ensemble = TeacherEnsemble([load_model(a), load_model(b)], mirror=True)
    assert models["teacher"]["accuracy"] == pytest.approx(evaluate(ensemble, test).accuracy)
    assert models["teacher"]["flops"] == 2 * (models["teacher_1"]["flops"] + models["teacher_2"]["flops"])
    # the first teacher is the one pruned: the student keeps half of its channels
    assert models["student"]["flops"] < models["teacher_1"]["flops"] and result.pruning.before.flops == \
        models["teacher_1"]["flops"]
    assert [t["path"] for t in json.loads((out / "inputs.json").read_text())["teacher"]] == [a, b]


@pytest.mark.parametrize("recipe, extra, expected", [
    (progressive_prune, ["--teacher", "{b}"], "progressive_prune.py compresses the teacher it distils from"),
    (progressive_prune, ["--teacher-tta"], "takes one --teacher without --teacher-tta"),
    (distill_only, ["--teacher-tta", *STUDENT, "--hint-student-layer", "features.conv1", "--hint-teacher-layer",
                    "features.conv1"], "a FitNet hint reads the features of one teacher"),
    (prune_then_distill, ["--teacher", "{b}", "--hint-layer", "features.conv1"], "a FitNet hint reads"),
    (distill_only, ["--teacher", "{c100}", *STUDENT], "has 100 classes but --teacher"),
])
def test_what_an_ensemble_cannot_do_is_refused_in_one_line_writing_nothing(recipe, extra, expected, tmp_path,
                                                                             capsys):
    files = {"{b}": _teacher_file(tmp_path, 2), "{c100}": _teacher_file(tmp_path, 3, classes=100)}
    out = tmp_path / "out"
    argv = [*SYNTHETIC, "--teacher", _teacher_file(tmp_path, 1), *[files.get(w, w) for w in extra], "--out", str(out)]
    assert expected in _fail(recipe, argv, capsys)
    assert not out.exists()


def test_resume_names_the_replaced_one_of_several_teachers(tmp_path, tiny):
    a, b = _teacher_file(tmp_path, 1), _teacher_file(tmp_path, 2)
    cfg = parse_config(KDConfig, ["--teacher", a, b, "--out", str(tmp_path)])
    inputs.save(cfg, tiny, tmp_path)
    # nothing changed: no error, and today's record (which save then writes again) is the one on disk
    assert inputs.check_unchanged(cfg, tiny, tmp_path) == json.loads((tmp_path / "inputs.json").read_text())
    Path(b).rename(tmp_path / "old.pt")
    Path(_teacher_file(tmp_path, 5)).rename(b)  # the second file replaced by other weights
    with pytest.raises(ValueError, match=f"the teacher file '{b}' changed"):
        inputs.check_unchanged(cfg, tiny, tmp_path)
    # an inputs.json from before several teachers holds one object: it is the first teacher's record
    body = json.loads((tmp_path / "inputs.json").read_text())
    body["teacher"] = {"path": a, "sha256": "0" * 64}
    (tmp_path / "inputs.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match=f"the teacher file '{a}' changed"):
        inputs.check_unchanged(cfg, tiny, tmp_path)


def test_a_teacher_trained_here_teaches_mirrored_with_teacher_tta(tmp_path):
    out = tmp_path / "run"
    distill_only.main([*SYNTHETIC, *STUDENT, "--teacher-tta", "--teacher-model-args", '{"widths": [8, 8, 8, 8], '
                       '"hidden": 16}', "--teacher-epochs", "1", "--out", str(out)])
    models = json.loads((out / "report.json").read_text())["models"]
    assert list(models) == ["teacher_1", "teacher", "student"]
    assert models["teacher"]["flops"] == 2 * models["teacher_1"]["flops"]  # each image and its mirror
    trained = load_model(out / "teacher.pt")
    data = load_dataset("synthetic", image_size=16, limit_train=64, limit_test=32, seed=0)
    _, test = make_loaders(data, 32)
    assert models["teacher"]["accuracy"] == pytest.approx(evaluate(TeacherEnsemble([trained], mirror=True),
                                                                   test).accuracy)


def test_teachers_normalised_alike_up_to_rounding_form_an_ensemble_and_others_are_refused(tmp_path):
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]
    paths = []
    for seed, shift in ((1, 0.0), (2, 3e-8), (3, 2e-3)):  # 3e-8: float32 rounding of a saved mean; 2e-3: other data
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"t{seed}.pt"))
        save_model(create_model("wide_cnn", 10, widths=(8, 8, 8, 8), hidden=16), paths[-1],
                   meta={"mean": [m + shift for m in mean], "std": std})
    assert isinstance(load_teachers(paths[:2]), TeacherEnsemble)
    with pytest.raises(ValueError, match=f"--teacher '{paths[2]}' has another normalisation mean"):
        load_teachers([paths[0], paths[2]])
