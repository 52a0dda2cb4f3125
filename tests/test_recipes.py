"""The teacher and distill-only recipes end to end on a few hundred real CIFAR-10 images."""
import json
import re

import pytest
import torch

from models import load_model
from recipes import distill_only, train_teacher

pytestmark = pytest.mark.slow  # end to end: see setup.cfg

BLOCK = re.compile(r"flops = (\d+)\nModel parameter size = (\d+\.\d{3}) kB\nAccuracy = (\d+\.\d{2}) %")
# all 400 training / 200 test images shipped with the suite; fp32, so that what is learnt does not depend on the CPU
SMALL = ["--limit-train", "400", "--limit-test", "200", "--batch-size", "32", "--no-progress", "--precision", "fp32"]


@pytest.fixture(scope="module")
def teacher_run(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    argv = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--epochs", "8", "--out", str(out),
            "--cache-dir", str(out / "cache"), "--model-args", '{"widths": [16, 32, 32, 32], "hidden": 64, '
            '"dropout": 0.0}', *SMALL]
    return out, train_teacher.main(argv)


def test_teacher_recipe_learns_real_images(teacher_run, capsys):
    out, report = teacher_run
    assert report.accuracy > 20.0  # chance is 10 % on the 200 balanced test images
    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"] == report.accuracy and saved["flops"] == report.flops
    assert saved["param_size_kb"] == pytest.approx(saved["params"] * 4 / 1024)
    assert saved["config"]["limit_train"] == 400
    payload = torch.load(out / "teacher.pt", weights_only=True)
    assert payload["meta"]["classes"][0] == "airplane" and len(payload["meta"]["mean"]) == 3
    assert (out / "teacher_train" / "last.pt").is_file() and (out / "config.json").is_file()


def test_teacher_resume_continues_after_the_last_epoch(teacher_run, cifar10_dir, capsys):
    out, report = teacher_run
    argv = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--epochs", "8", "--out", str(out),
            "--cache-dir", str(out / "cache"), "--model-args", '{"widths": [16, 32, 32, 32], "hidden": 64, '
            '"dropout": 0.0}', "--resume", *SMALL]
    capsys.readouterr()
    again = train_teacher.main(argv)  # all 8 epochs are done: nothing is trained, the same model is reported
    out_text = capsys.readouterr().out
    assert "resuming from" in out_text and "epoch   1:" not in out_text and again.accuracy == report.accuracy


def test_distill_only_reports_teacher_and_student(teacher_run, cifar10_dir, tmp_path, capsys):
    teacher_dir, teacher_report = teacher_run
    argv = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--teacher", str(teacher_dir / "teacher.pt"),
            "--epochs", "6", "--model-args", '{"widths": [8, 16, 16, 16], "hidden": 32}', "--out", str(tmp_path),
            "--cache-dir", str(teacher_dir / "cache"), *SMALL]
    teacher, student = distill_only.main(argv)
    blocks = BLOCK.findall(capsys.readouterr().out)
    assert len(blocks) == 2 and int(blocks[1][0]) == student.flops < teacher.flops
    assert teacher.accuracy == pytest.approx(teacher_report.accuracy)  # scored on the same test split
    assert student.accuracy > 18.0  # chance is 10 % (± 2.1 points on 200 images): the student learnt
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["models"]) == {"teacher", "student"} and saved["config"]["kd_loss"] == "kd"
    model = load_model(tmp_path / "student.pt")
    assert sum(p.numel() for p in model.parameters()) == student.params


def test_distill_only_starts_from_an_initial_checkpoint(teacher_run, cifar10_dir, tmp_path, capsys):
    teacher_dir, teacher_report = teacher_run
    argv = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--teacher", str(teacher_dir / "teacher.pt"),
            "--initial-checkpoint", str(teacher_dir / "teacher.pt"), "--epochs", "1", "--lr", "1e-9",
            "--out", str(tmp_path), "--cache-dir", str(teacher_dir / "cache"), *SMALL]
    teacher, student = distill_only.main(argv)  # --arch wide_cnn, its default widths: the file's are applied
    assert "init: the weights of" in capsys.readouterr().out
    assert student.flops == teacher.flops and student.params == teacher.params
    # the teacher's weights, barely moved (BatchNorm statistics only): its accuracy, where fresh weights give chance
    assert teacher.accuracy > 20.0 and abs(student.accuracy - teacher.accuracy) <= 3.0


def test_recipe_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_teacher.run_main(train_teacher.main, ["--dataset", "imagefolder", "--data-dir", str(tmp_path / "x"),
                                                     "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: imagefolder data dir") and "\n" not in err
    assert not (tmp_path / "config.json").exists()  # nothing written before the data loaded
    with pytest.raises(SystemExit):
        distill_only.run_main(distill_only.main, ["--dataset", "synthetic", "--teacher", str(tmp_path / "none.pt"),
                                                  "--out", str(tmp_path)])
    assert "does not exist" in capsys.readouterr().err


def test_a_teacher_for_other_classes_or_image_size_is_refused(teacher_run, cifar10_dir, tmp_path, capsys):
    teacher_dir, _ = teacher_run
    common = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--teacher", str(teacher_dir / "teacher.pt"),
              "--out", str(tmp_path), "--cache-dir", str(teacher_dir / "cache"), *SMALL]
    with pytest.raises(SystemExit):
        distill_only.run_main(distill_only.main, [*common, "--image-size", "24"])
    assert "--image-size 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill_only.run_main(distill_only.main, ["--dataset", "synthetic", "--teacher", str(teacher_dir / "teacher.pt"),
                                                  "--out", str(tmp_path), "--no-progress"])
    assert "class order must match" in capsys.readouterr().err
