"""Nothing lost, nothing poisoned: every foreseeable bad input ends in one ``error: ...`` line on stderr and exit
status 2 (no traceback, never advice to unpickle), and nothing is written where nothing should be. End to end through
the recipes' ``main`` under ``run_main`` on tiny synthetic data, then the units behind each case."""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import kd.trainer
import pruning
import recipes.plumbing.training
from kd.data import BadImageError, CacheWarning, DataUnavailableError, load_dataset
from kd.data.fingerprint import split_fingerprint
from kd.data.sources import imagefolder_classes, list_image_files, load_imagefolder
from kd.losses import CrossEntropy
from models import create_model, load_model, save_model
from models.checkpoint import atomic_save, check_finite, safe_load, stale_temp_files
from models.errors import FileFormatError, NonFiniteError
from recipes import distill_only, prune_then_distill, train_teacher
from recipes.plumbing.config import (
    RunConfig, apply_recipe, check_values, config_differences, parse_config, resolve_device,
)
from recipes.plumbing.report import ModelReport, write_report
from recipes.plumbing.checks import build_model
from recipes.plumbing.errors import error_message, run_main

RECIPES = {"train_teacher": train_teacher, "distill_only": distill_only, "prune_then_distill": prune_then_distill}
TINY = '{"widths": [8, 8, 8, 8], "hidden": 16}'
SYNTHETIC = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16",
             "--epochs", "1", "--batch-size", "32", "--no-progress"]
STUDENT = ["--model-args", '{"widths": [4, 4, 4, 4], "hidden": 8}']

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------------ helpers


def fail(recipe, argv: list[str], capsys) -> str:
    """Runs ``recipe.main(argv)`` under ``run_main``: exit status 2, one ``error:`` line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(recipe.main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that a refused run changed nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def teacher_run(out: Path, *extra: str) -> Path:
    train_teacher.main([*SYNTHETIC, "--model-args", TINY, "--out", str(out), *extra])
    return out / "teacher.pt"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny teacher trained for one epoch on the synthetic data."""
    return teacher_run(tmp_path_factory.mktemp("teacher") / "run")


@pytest.fixture(scope="module")
def bad_teachers(tmp_path_factory, teacher) -> dict[str, Path]:
    """Teacher files that must be refused: text, truncated, empty, malicious pickle, NaN weights, a folder."""
    root = tmp_path_factory.mktemp("bad_teachers")
    (root / "text.pt").write_text("not a model\n")
    good = teacher.read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "empty.pt").write_bytes(b"")
    torch.save({"format": 1, "arch": "wide_cnn", "payload": Exploit()}, root / "malicious.pt")
    payload = torch.load(teacher, weights_only=True)
    payload["state_dict"]["classifier.weight"][0, 0] = float("nan")
    torch.save(payload, root / "nan.pt")
    (root / "folder.pt").mkdir()
    return {p.stem: p for p in root.iterdir()}


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def image_folder(root: Path, cifar10_dir: Path, train: dict[str, int], test: dict[str, int]) -> Path:
    """A small imagefolder of real CIFAR-10 JPEGs: ``{class: count}`` per split (count 0: an empty class folder)."""
    for split, counts in (("train", train), ("test", test)):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for src in sorted((cifar10_dir / "train" / cls).glob("*.jpg"))[:n]:
                shutil.copy(src, root / split / cls / src.name)
    return root


def imagefolder_args(root: Path, cache: Path) -> list[str]:
    # the decoded-in-memory path (timm's transforms, which an image folder off 32 px takes by default, decode later)
    return ["--dataset", "imagefolder", "--data-dir", str(root), "--cache-dir", str(cache), "--image-size", "16",
            "--epochs", "1", "--batch-size", "8", "--no-progress", "--model-args", TINY, "--transforms", "tensor"]


# ------------------------------------------------------------------------------ bad options: nothing is written

OPTION_CASES = [
    ("prune_then_distill", ["--teacher", "{teacher}", "--alpha", "2"], "--alpha must be in [0, 1], got 2.0"),
    ("distill_only", ["--teacher", "{teacher}", "--temperature", "0"], "--temperature must be > 0"),
    ("prune_then_distill", ["--teacher", "{teacher}", "--ratio", "1.5"], "--ratio must be in [0, 1)"),
    ("train_teacher", ["--model-args", TINY, "--lr", "nan"], "--lr must be a finite number"),
    ("train_teacher", ["--model-args", TINY, "--epochs", "0"], "--epochs must be a whole number >= 1"),
    ("train_teacher", ["--model-args", '{"widths": [8, 8], "colour": 1}'], "wide_cnn does not take 'colour'"),
    ("train_teacher", ["--model-args", '{"widths": [8, 8'], "--model-args must be a JSON object"),
    ("train_teacher", ["--model-args", '{"widths": [0]}'], "cannot be built from these arguments"),
    ("distill_only", ["--teacher", "{teacher}", "--model-args", '{"depth": 3}'], "does not take 'depth'"),
    ("prune_then_distill", ["--teacher-model-args", '{"width": 8}'], "--teacher-model-args: wide_cnn does not take"),
    ("prune_then_distill", ["--teacher", "{teacher}", "--hint-layer", "features.conv9"],
     "--hint-layer 'features.conv9' is not a layer"),
    ("prune_then_distill", ["--teacher", "{teacher}", "--hint-layer", "classifier"], "has no conv layer"),
    ("distill_only", ["--teacher", "{teacher}", "--hint-student-layer", "features.conv1"], "needs both"),
    ("distill_only", ["--teacher", "{teacher}", *STUDENT, "--hint-student-layer", "conv1", "--hint-teacher-layer",
                      "features.conv1"], "--hint-student-layer 'conv1' is not a layer"),
    ("train_teacher", ["--model-args", TINY, "--device", "tpu"], "--device 'tpu' is not a device"),
    ("train_teacher", ["--model-args", TINY, "--epochs", "x"], "argument --epochs: invalid int value"),
    ("train_teacher", ["--model-args", TINY, "--resume", "--overwrite"], "pass only one"),
    ("train_teacher", ["--model-args", TINY, "--resume"], "holds no earlier run to continue"),
    ("distill_only", ["--teacher", "{text}"], "text.pt' is corrupt or holds pickled objects other than tensors"),
    ("distill_only", ["--teacher", "{truncated}"], "truncated.pt' is truncated, corrupt or not written by torch.save"),
    ("distill_only", ["--teacher", "{empty}"], "truncated, corrupt or not written by torch.save (EOFError)"),
    ("prune_then_distill", ["--teacher", "{malicious}"], "holds pickled code (posix.system), refused: reading it "
                                                         "could run that code"),
    ("prune_then_distill", ["--teacher", "{nan}"], "has NaN weights ('classifier.weight')"),
    ("distill_only", ["--teacher", "{folder}"], "is a folder, not a file"),
    ("distill_only", ["--teacher", "{missing}"], "does not exist"),
]


@pytest.mark.parametrize("recipe, argv, expected", OPTION_CASES, ids=[c[2][:40] for c in OPTION_CASES])
def test_bad_options_and_inputs_are_one_line_and_write_nothing(recipe, argv, expected, teacher, bad_teachers,
                                                               tmp_path, capsys):
    paths = {"teacher": teacher, "missing": tmp_path / "none.pt", **bad_teachers}
    out = tmp_path / "out"
    argv = [str(paths[a[1:-1]]) if a[1:-1] in paths else a for a in argv]  # "{teacher}" → its path
    line = fail(RECIPES[recipe], [*SYNTHETIC, *argv, "--out", str(out)], capsys)
    assert expected in line
    assert not out.exists()


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me\n")
    assert "is a file" in fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
    assert out.read_text() == "keep me\n"


# ----------------------------------------------------------------------------- earlier runs: refuse, resume, replace


@pytest.fixture
def earlier_run(tmp_path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "run"
    teacher_run(out)
    return out, files(out)


@pytest.mark.slow
def test_a_second_run_into_the_same_out_is_refused(earlier_run, capsys):
    out, before = earlier_run
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
    assert "already holds an earlier run" in line and "--resume" in line and "--overwrite" in line
    assert files(out) == before


@pytest.mark.slow
def test_failed_validation_leaves_an_earlier_run_untouched(earlier_run, capsys):
    out, before = earlier_run
    fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--overwrite", "--lr", "-1"], capsys)
    fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--resume", "--epochs", "0"], capsys)
    assert files(out) == before


@pytest.mark.slow
def test_resume_refuses_changed_options_naming_them(earlier_run, capsys):
    out, before = earlier_run
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--resume", "--epochs", "3",
                                "--lr", "0.1", "--no-progress", "--device", "cpu"], capsys)
    assert "options differ" in line and "--epochs 1 → 3" in line and "--lr 0.05 → 0.1" in line
    assert "--device" not in line  # device, progress, cache folder: harmless, not compared
    assert files(out) == before


@pytest.mark.slow
def test_resume_with_another_ratio_is_refused_before_any_size_mismatch(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    argv = [*SYNTHETIC, "--teacher", str(teacher), "--out", str(out), "--ratio", "0.5"]
    prune_then_distill.main(argv)
    before = files(out)
    line = fail(prune_then_distill, [*argv[:-1], "0.25", "--resume"], capsys)
    assert "--ratio 0.5 → 0.25" in line and "size mismatch" not in line
    assert files(out) == before


@pytest.mark.slow
def test_resume_without_a_checkpoint_is_refused(earlier_run, capsys):
    out, _ = earlier_run
    shutil.rmtree(out / "teacher_train")
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--resume"], capsys)
    assert "no checkpoint (*/last.pt)" in line


@pytest.mark.slow
def test_resume_refuses_a_damaged_checkpoint(earlier_run, capsys):
    out, _ = earlier_run
    last = out / "teacher_train" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--resume"], capsys)
    assert "checkpoint" in line and "truncated, corrupt" in line and "last.pt" in line


@pytest.mark.slow
def test_resume_cleans_stale_temp_files_and_keeps_the_results(earlier_run, capsys):
    out, before = earlier_run
    stale = [out / ".teacher.pt.x1y2.tmp", out / "teacher_train" / ".last.pt.abc.tmp", out / "report.json.tmp",
             out / ".config.json.q.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours")  # not a name our writes use: left alone
    train_teacher.main([*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--resume"])
    assert not any(p.exists() for p in stale) and (out / "notes.tmp").exists()
    assert files(out)["teacher_train/last.pt"] == before["teacher_train/last.pt"]  # nothing was left to train


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_and_its_checkpoints(earlier_run, teacher, capsys):
    out, before = earlier_run
    (out / "student_train").mkdir()
    shutil.copy(out / "teacher_train" / "last.pt", out / "student_train" / "last.pt")  # a stage this run lacks
    prune_then_distill.main([*SYNTHETIC, "--teacher", str(teacher), "--ratio", "0.5", "--out", str(out),
                             "--overwrite"])
    config = json.loads((out / "config.json").read_text())
    assert config["ratio"] == 0.5 and config["overwrite"] is True
    assert not (out / "teacher_train" / "last.pt").exists()  # the earlier run's checkpoints cannot be resumed
    assert (out / "student.pt").is_file() and "student_pruned" in json.loads((out / "report.json").read_text())[
        "models"]


@pytest.mark.slow
def test_overwrite_never_removes_the_teacher_it_reads(earlier_run, capsys):
    out, _ = earlier_run
    prune_then_distill.main([*SYNTHETIC, "--teacher", str(out / "teacher.pt"), "--ratio", "0.5", "--out", str(out),
                             "--overwrite"])
    assert (out / "teacher.pt").is_file() and (out / "student.pt").is_file()


# ------------------------------------------------------------------------------------------ diverged training


def test_a_diverged_run_saves_no_model_and_no_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(CrossEntropy, "_parts", lambda self, s, t, y, state: {"ce": s.sum() * float("nan")})
    out = tmp_path / "run"
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
    assert "loss became nan at epoch 1, step 1" in line and "nothing non-finite was saved" in line and "--lr" in line
    assert not (out / "teacher.pt").exists() and not (out / "report.json").exists()


def test_the_trainers_non_finite_error_is_one_line(tmp_path, monkeypatch, capsys):
    def diverge(*args, **kwargs):
        raise NonFiniteError("the loss is nan at epoch 1, step 2")

    monkeypatch.setattr(recipes.plumbing.training, "fit_model", diverge)
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(tmp_path / "run")], capsys)
    assert line == ("error: the loss is nan at epoch 1, step 2; nothing non-finite was saved (a lower --lr usually "
                    "helps)")


def test_a_diverged_run_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    finite = CrossEntropy._parts

    def diverge_in_epoch_2(self, s, t, y, state):
        parts = finite(self, s, t, y, state)
        return {k: v * float("nan") for k, v in parts.items()} if state.epoch == 2 else parts

    monkeypatch.setattr(CrossEntropy, "_parts", diverge_in_epoch_2)
    out = tmp_path / "run"
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--epochs", "3"], capsys)
    assert "loss became nan at epoch 2, step 3" in line  # two steps per epoch
    last = torch.load(out / "teacher_train" / "last.pt", weights_only=True)
    assert last["epoch"] == 1  # epoch 1's checkpoint is kept; the diverged epoch wrote none
    check_finite(last["student"], "last.pt")
    check_finite(torch.load(out / "teacher_train" / "best.pt", weights_only=True)["student"], "best.pt")


def test_a_run_whose_accuracy_collapses_to_chance_stops_two_epochs_later(tmp_path, monkeypatch, capsys):
    # finite losses, but the network fell back to guessing (what DIST at the fast recipe's rate did): stop, keep
    # the checkpoint of the epoch before
    real = kd.trainer.Trainer._train_epoch
    accuracy = {1: 60.0, 2: 10.4, 3: 9.9}  # the synthetic set has 10 classes: chance is 10 %

    def collapsing(self, train):
        record = real(self, train)
        record.train_accuracy = accuracy.get(record.epoch, record.train_accuracy)
        return record

    monkeypatch.setattr(kd.trainer.Trainer, "_train_epoch", collapsing)
    out = tmp_path / "run"
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out), "--epochs", "4"], capsys)
    assert "fell from 60.00 % (epoch 1) to chance (10.40 and 9.90 % in epochs 2 and 3" in line
    assert "the run collapsed" in line and "--lr" in line
    assert torch.load(out / "teacher_train" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (out / "teacher.pt").exists()


# -------------------------------------------------------------------------------------- full or read-only disk


def test_a_full_disk_is_one_line_that_says_so(tmp_path, monkeypatch, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    import models.checkpoint as checkpoint

    def full(name, mode, **kwargs):  # every atomic write lands on /dev/full: the kernel answers ENOSPC
        return open("/dev/full", mode, **kwargs)

    monkeypatch.setattr(checkpoint, "open", full, raising=False)
    out = tmp_path / "run"
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
    assert "ENOSPC" in line and "the disk is full" in line and "config.json" in line
    assert not out.exists() or not list(out.rglob("*.*"))  # neither config.json nor a temporary file


def test_a_read_only_out_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(tmp_path / "run")], capsys)
    assert "read-only (EROFS)" in line and "choose another --out" in line


# ---------------------------------------------------------------------------------------------- data problems


DATA_CASES = [
    ({"cat": 3, "dog": 3}, {"cat": 2, "bird": 2}, "different class folders (only in train/: ['dog'], only in test/: "
                                                  "['bird'])"),
    ({"cat": 3, "dog": 0}, {"cat": 2, "dog": 2}, "class folder(s) ['dog']"),
    ({"cat": 3, "dog": 3}, {"cat": 2, "dog": 0}, "hold no images"),
    ({"cat": 3}, {"cat": 2}, "the data has 1 class (cat); classification needs at least 2 classes"),
]


@pytest.mark.parametrize("train, test, expected", DATA_CASES, ids=["classes differ", "empty train class",
                                                                   "empty test class", "one class"])
def test_data_problems_are_one_line(train, test, expected, cifar10_dir, tmp_path, capsys):
    root = image_folder(tmp_path / "data", cifar10_dir, train, test)
    out = tmp_path / "out"
    line = fail(train_teacher, [*imagefolder_args(root, tmp_path / "cache"), "--out", str(out)], capsys)
    assert expected in line and not out.exists()


@pytest.mark.parametrize("damage, reason", [("corrupt", "UnidentifiedImageError: cannot identify image file"),
                                            ("truncated", "OSError: image file is truncated")])
def test_a_bad_image_names_its_file_and_can_be_skipped(damage, reason, cifar10_dir, tmp_path, capsys):
    root = image_folder(tmp_path / "data", cifar10_dir, {"cat": 4, "dog": 4}, {"cat": 2, "dog": 2})
    bad = sorted((root / "train" / "dog").glob("*.jpg"))[1]
    bad.write_bytes(b"not a jpeg at all" if damage == "corrupt" else bad.read_bytes()[:-300])
    args = imagefolder_args(root, tmp_path / "cache")
    line = fail(train_teacher, [*args, "--out", str(tmp_path / "out")], capsys)
    assert str(bad) in line and reason in line and "--skip-bad-images" in line
    assert not (tmp_path / "out").exists()

    capsys.readouterr()
    report = run_main(train_teacher.main, [*args, "--out", str(tmp_path / "skip"), "--skip-bad-images"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: left out 1 image file(s)") and str(bad) in err[0]
    assert report.accuracy >= 0 and json.loads((tmp_path / "skip" / "config.json").read_text())["skip_bad_images"]


@pytest.mark.slow
def test_no_progress_keeps_stderr_clean_and_the_cache_is_only_an_optimisation(cifar10_dir, tmp_path, monkeypatch,
                                                                              capsys):
    root = image_folder(tmp_path / "data", cifar10_dir, {"cat": 3, "dog": 3}, {"cat": 2, "dog": 2})
    cache = tmp_path / "cache_is_a_file"
    cache.write_text("")  # the cache folder cannot be made: decoding goes on in memory
    capsys.readouterr()
    run_main(train_teacher.main, [*imagefolder_args(root, cache), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot write the decoded-image cache"), err  # once

    import kd.data.sources as sources

    def disk_full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sources, "atomic_save", disk_full)
    run_main(train_teacher.main, [*imagefolder_args(root, tmp_path / "cache"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and (tmp_path / "b" / "teacher.pt").is_file()

    monkeypatch.undo()
    run_main(train_teacher.main, [*imagefolder_args(root, tmp_path / "cache"), "--out", str(tmp_path / "c")])
    assert capsys.readouterr().err == ""  # --no-progress: no decoding bar, no epoch bar


# ------------------------------------------------------------------------------------------ pruning nothing


@pytest.mark.slow
@pytest.mark.parametrize("target", [["--ratio", "0"], ["--target-flops", "10000000000"]])
def test_pruning_nothing_says_so_in_one_line(target, teacher, tmp_path, capsys):
    capsys.readouterr()
    result = run_main(prune_then_distill.main, [*SYNTHETIC, "--teacher", str(teacher), *target, "--out",
                                                str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: nothing was pruned: ")
    assert result.pruning.after.flops == result.pruning.before.flops


# ============================================================================================== units


def test_check_finite():
    check_finite({"w": torch.ones(2), "n": torch.tensor([1, 2]), "step": 3}, "m")
    for bad, word in ((float("nan"), "NaN"), (float("inf"), "infinite")):
        with pytest.raises(NonFiniteError, match=f"m has {word} weights \\('b'\\)"):
            check_finite({"a": torch.ones(2), "b": torch.tensor([0.0, bad])}, "m")


def test_save_model_refuses_and_load_model_rejects_non_finite_weights(tmp_path):
    model = create_model("wide_cnn", 10, widths=[4, 4], hidden=0)
    with torch.no_grad():
        model.classifier.bias[3] = float("inf")
    with pytest.raises(NonFiniteError, match="infinite weights"):
        save_model(model, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    with torch.no_grad():
        model.classifier.bias[3] = 0.0
    save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["state_dict"]["features.conv1.bn.running_var"][0] = float("nan")
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(NonFiniteError, match="running_var"):
        load_model(tmp_path / "m.pt")
    with pytest.raises(NonFiniteError):
        pruning.load(tmp_path / "m.pt")


def test_safe_load_names_the_file_and_never_suggests_unpickling(bad_teachers, tmp_path):
    for name in ("text", "truncated", "empty", "malicious"):
        with pytest.raises(FileFormatError) as info:
            safe_load(bad_teachers[name], "teacher")
        assert str(bad_teachers[name]) in str(info.value) and "weights_only" not in str(info.value)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"x": Exploit()}))
    with pytest.raises(FileFormatError, match="could run"):
        load_model(tmp_path / "raw.pkl")
    torch.save({"format": 1, "arch": "wide_cnn", "num_classes": 10, "arch_kwargs": {"widths": [4]}, "widths": {},
                "state_dict": {"classifier.weight": torch.ones(3, 3)}}, tmp_path / "misfit.pt")
    with pytest.raises(FileFormatError, match="it lacks 'features.conv1.conv.weight'"):
        load_model(tmp_path / "misfit.pt")


def test_atomic_save_on_a_full_disk_raises_enospc_naming_the_target(tmp_path, monkeypatch):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    import models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "open", lambda name, mode, **kw: open("/dev/full", mode), raising=False)
    with pytest.raises(OSError) as info:
        atomic_save({"w": torch.zeros(10_000)}, tmp_path / "x.pt")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files(tmp_path):
    ours = [tmp_path / ".last.pt.k3j.tmp", tmp_path / "a" / ".best.pt.zz.tmp", tmp_path / "report.json.tmp"]
    for p in [*ours, tmp_path / "mine.tmp", tmp_path / "model.pt"]:
        p.parent.mkdir(exist_ok=True)
        p.write_text("")
    assert sorted(stale_temp_files(tmp_path)) == sorted(ours)
    assert stale_temp_files(tmp_path, older_than_s=3600) == []
    old = time.time() - 7200
    os.utime(ours[0], (old, old))
    assert stale_temp_files(tmp_path, older_than_s=3600) == [ours[0]]


def test_report_json_is_strict_json(tmp_path):
    report = ModelReport("student", 10, 2, 0.008, float("nan"))
    write_report(tmp_path / "report.json", [report], {"lr": float("inf")},
                 {"history": [{"val_loss": float("nan"), "val_accuracy": 50.0}]})

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    saved = json.loads((tmp_path / "report.json").read_text(), parse_constant=no_constants)
    assert saved["accuracy"] is None and saved["config"]["lr"] is None
    assert saved["history"] == [{"val_loss": None, "val_accuracy": 50.0}]
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_check_values_and_device():
    check_values(RunConfig(epochs=1, lr=0.1, limit_train=None))
    for bad, match in ((dict(epochs=0), "--epochs must be a whole number >= 1"), (dict(lr=math.nan), "finite"),
                       (dict(batch_size=-3), "--batch-size"), (dict(image_size=2), "--image-size must be >= 8"),
                       (dict(limit_test=0), "--limit-test")):
        with pytest.raises(ValueError, match=match):
            check_values(RunConfig(**bad))
    for name in ("tpu", "cuda:x", "meta"):
        with pytest.raises(ValueError, match="--device"):
            resolve_device(name)
    assert resolve_device("cpu").type == "cpu"


def test_config_differences_name_options_and_skip_harmless_ones():
    earlier = json.loads(json.dumps(apply_recipe(RunConfig(recipe="classic")).__dict__))
    now = apply_recipe(RunConfig(recipe="classic", epochs=5, resume=True, progress=False, overwrite=True, device="cpu",
                                 cache_dir="/x", optimizer="adamw"))
    assert config_differences(earlier, now) == ["--epochs 30 → 5", "--optimizer sgd → adamw"]
    del earlier["precision"]  # an option the earlier run did not know had its default
    assert config_differences(earlier, apply_recipe(RunConfig(recipe="classic"))) == []
    assert config_differences(earlier, apply_recipe(RunConfig(limit_train=10))) == ["--limit-train (not set) → 10"]
    assert "--momentum 0.9 → 0.85" in config_differences(earlier, apply_recipe(RunConfig(recipe="fast")))
    assert "--recipe classic → fast" in config_differences(earlier, apply_recipe(RunConfig()))  # auto: fast here


def test_build_model_lists_accepted_arguments():
    with pytest.raises(ValueError, match="resnet20 does not take 'widths'; it takes no arguments"):
        build_model("resnet20", '{"widths": [8]}')
    with pytest.raises(ValueError, match="it takes widths, kernel_sizes"):
        build_model("wide_cnn", '{"width": [8]}')
    with pytest.raises(ValueError, match="cannot be built"):
        build_model("shufflenet_v2", '{"width_mult": 0.7}')
    with pytest.raises(ValueError, match="--teacher-arch: unknown model 'wide'; known models: fast_cnn, resnet20"):
        build_model("wide", "{}", flag="--teacher-model-args")
    assert build_model("wide_cnn", TINY).arch_spec["kwargs"]["hidden"] == 16


def test_imagefolder_class_checks_happen_before_decoding(cifar10_dir, tmp_path, monkeypatch):
    import kd.data.sources as sources

    monkeypatch.setattr(sources, "_decode", lambda *a: pytest.fail("nothing may be decoded"))
    root = image_folder(tmp_path / "d", cifar10_dir, {"cat": 1, "dog": 1}, {"cat": 1})
    with pytest.raises(DataUnavailableError, match=r"only in train/: \['dog'\], only in test/: \[\]"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "c")
    (root / "test" / "dog").mkdir()
    (root / "test" / "dog" / "readme.txt").write_text("no image here")
    with pytest.raises(DataUnavailableError, match="hold no images"):
        imagefolder_classes(root)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    shutil.copy(next((root / "test" / "cat").glob("*.jpg")), root / "test" / "dog" / "x.jpg")
    assert imagefolder_classes(root) == ["cat", "dog"]
    with pytest.raises(DataUnavailableError, match="at least 2 classes"):
        load_dataset("synthetic", synthetic_classes=1, limit_train=8, limit_test=4)


def test_skipped_images_are_cached_and_still_refused_without_skipping(cifar10_dir, tmp_path):
    root = image_folder(tmp_path / "d", cifar10_dir, {"cat": 3, "dog": 3}, {"cat": 1, "dog": 1})
    bad = root / "train" / "cat" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    data = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", skip_bad_images=True, progress=False)
    assert len(data) == 6 and len(data.skipped) == 1 and "bad.jpg" in data.skipped[0]
    again = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", skip_bad_images=True, progress=False)
    assert torch.equal(again.images, data.images) and again.skipped == data.skipped  # from the cache
    with pytest.raises(BadImageError, match="bad.jpg"):  # the cache does not hide the bad file
        load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)


def test_a_damaged_cache_is_decoded_again_with_a_warning(cifar10_dir, tmp_path):
    root = image_folder(tmp_path / "d", cifar10_dir, {"cat": 2, "dog": 2}, {"cat": 1, "dog": 1})
    first = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    (cached,) = (tmp_path / "c").glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:50])
    with pytest.warns(CacheWarning, match="ignoring the decoded-image cache"):
        again = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(again.images, first.images)


def test_prune_warns_only_when_nothing_is_pruned(recwarn):
    model = create_model("wide_cnn", 10, widths=[8, 8], hidden=0)
    x = torch.zeros(1, 3, 16, 16)
    pruning.prune(model, x, ratio=0.5)
    assert not [w for w in recwarn if "nothing was pruned" in str(w.message)]
    with pytest.warns(UserWarning, match="nothing was pruned: ratio=0.0 removes no channel"):
        pruning.prune(model, x, ratio=0.0)
    with pytest.warns(UserWarning, match="already within target_params"):
        pruning.prune(model, x, target_params=10**9)


def test_error_messages():
    enospc = OSError(errno.ENOSPC, "No space left on device", "/r/teacher.pt")
    assert error_message(enospc) == ("no space left on device (ENOSPC) writing '/r/teacher.pt': the disk is full; "
                                     "free some space or choose another --out")
    assert error_message(PermissionError(errno.EACCES, "denied", "/r")) == ("permission denied (EACCES) for '/r'; fix "
                                                                            "its permissions or choose another path")
    mismatch = RuntimeError("Error(s) in loading state_dict for WideCNN:\n\tsize mismatch for fc.weight: copying a "
                            "param with shape torch.Size([4, 8]) from checkpoint, the shape in current model is "
                            "torch.Size([4, 4]).")
    assert "does not fit the model (size mismatch for fc.weight" in error_message(mismatch)
    assert "\n" not in error_message(mismatch)
    refused = error_message(pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with "
                                                   "`weights_only` set to `False` will likely succeed"))
    assert "weights_only" not in refused and "could run code" in refused
    assert error_message(RuntimeError("CUDA kernel failed")) is None  # unforeseen: keeps its traceback
    assert error_message(ZeroDivisionError()) is None


def test_run_main_keeps_the_traceback_of_a_bug():
    def buggy(argv):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        run_main(buggy, [])


def test_parse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(RunConfig, ["--optimizer", "adam"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --optimizer: invalid choice: 'adam'")


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_resume_goes_on(tmp_path, capsys, monkeypatch):
    """Ctrl-C in epoch 2 prints one ``interrupted:`` line (exit 130, no traceback) and leaves epoch 1's checkpoint,
    from which ``--resume`` finishes with the same weights as a run that was never interrupted."""
    from kd.trainer import Trainer

    argv = [*SYNTHETIC, "--model-args", TINY, "--epochs", "2"]
    whole = tmp_path / "whole"
    run_main(train_teacher.main, [*argv, "--out", str(whole)])
    real, calls = Trainer._train_epoch, []

    def interrupted_in_epoch_2(self, train):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, train)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted_in_epoch_2)
    cut = tmp_path / "cut"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(train_teacher.main, [*argv, "--out", str(cut)])
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted: ") and "--resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(Trainer, "_train_epoch", real)
    run_main(train_teacher.main, [*argv, "--out", str(cut), "--resume"])
    sittings = (cut / "console.log").read_text().split("\n# ")  # both sittings' consoles, in order, in one file
    assert len(sittings) == 2 and sittings[0].rstrip().endswith(err.strip()) and "--resume" in sittings[1]
    assert "Accuracy = " in sittings[1] and "Accuracy = " not in sittings[0]
    recorded = json.loads((cut / "report.json").read_text())["sittings"]  # both sittings, the same hardware here
    assert [bool(s["started"]) for s in recorded] == [True, True] and recorded[0]["hardware"] == recorded[1]["hardware"]
    assert "different hardware" not in sittings[1]
    a, b = torch.load(whole / "teacher.pt", weights_only=True), torch.load(cut / "teacher.pt", weights_only=True)
    state_a, state_b = a.get("state_dict", a), b.get("state_dict", b)
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        if torch.is_tensor(state_a[k]):
            assert torch.allclose(state_a[k].float(), state_b[k].float(), atol=1e-6), k


# =================================================================== one run per --out: the lock on the folder

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom recipes.plumbing import lock\nlock.acquire(sys.argv[1])\nprint('held', flush=True)\n"
        "time.sleep(120)\n")


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def test_a_busy_out_is_refused_naming_the_process_and_a_dead_ones_lock_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _python("-c", HOLD, str(out))
    try:
        assert holder.stdout.readline().strip() == "held"
        line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
        assert f"is in use by another run (pid {holder.pid}" in line and "choose another --out" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock", ".lock.owner"]  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, naming a dead process
        holder.communicate()
    from recipes.plumbing import lock

    assert (out / ".lock").is_file() and lock.holder(out)["pid"] == holder.pid
    train_teacher.main([*SYNTHETIC, "--model-args", TINY, "--out", str(out)])  # the stale lock does not stop it
    assert (out / "teacher.pt").is_file() and not (out / ".lock").exists()  # released when main returns


def test_two_runs_started_together_leave_exactly_one_runs_files(tmp_path):
    out = tmp_path / "run"
    runs = [_python(str(REPO / "recipes" / "train_teacher.py"), *SYNTHETIC, "--model-args", TINY, "--epochs", "2",
                    "--seed", str(seed), "--lr", str(lr), "--out", str(out), "--device", "cpu")
            for seed, lr in ((1, 0.01), (2, 0.02))]
    results = [(r, *r.communicate(timeout=300)) for r in runs]
    assert sorted(r.returncode for r, _, _ in results) == [0, 2], [err[-1000:] for _, _, err in results]
    loser = next(err for r, _, err in results if r.returncode == 2).strip().splitlines()
    assert len(loser) == 1 and ("is in use by another run (pid" in loser[0] or "already holds an earlier run"
                                in loser[0]), loser
    config = json.loads((out / "config.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == config and config["seed"] in (1, 2)
    rows = (out / "teacher_train" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs of the one run
    assert load_model(out / "teacher.pt").meta["accuracy"] == report["accuracy"]  # the model of that report
    assert not (out / ".lock").exists()


# ================================================== every check before the first write: combinations, targets


LATE_CASES = [
    ("prune_then_distill", ["--ratio", "0.5", "--target-flops", "1000"],
     "--target-flops and --ratio are alternative targets; pass only one"),
    ("progressive_prune", ["--target-flops", "1000", "--target-params", "100"], "pass only one"),
    ("prune_then_distill", ["--target-flops", "1"], "--target-flops 1 is below the smallest reachable value"),
    ("prune_then_distill", ["--target-params", "3"], "--target-params 3 is below the smallest reachable value"),
    ("progressive_prune", ["--target-flops", "1"], "--target-flops 1 is below the smallest reachable value"),
    ("compare_methods", ["--budget", "0.00001"], "--budget 1e-05 (2 flops) is below the smallest reachable value"),
    ("distill_only", ["--teacher-cache", "-1"], "--teacher-cache must be a whole number >= 0"),
    ("distill_only", ["--teacher-cache", "2", "--hint-student-layer", "features.conv1", "--hint-teacher-layer",
                      "features.conv1"], "a FitNet hint needs its features"),
    ("prune_then_distill", ["--teacher-cache", "2", "--hint-layer", "features.conv2"], "needs its features"),
    ("distill_only", ["--teacher-cache", "2", "--data-mode", "stream"], "does not work with --data-mode stream"),
    ("distill_only", ["--latency-batch-sizes", "0"], "--latency-batch-sizes must be a whole number >= 1, got 0"),
    ("prune_then_distill", ["--export", "onnx"], "--export onnx needs the onnxruntime package(s), which are not "
                                                 "installed"),
]


@pytest.mark.parametrize("recipe, argv, expected", LATE_CASES, ids=[" ".join(c[1])[:40] for c in LATE_CASES])
def test_checks_that_used_to_run_late_come_before_any_write(recipe, argv, expected, teacher, tmp_path, monkeypatch,
                                                            capsys):
    import recipes.plumbing.option_checks as checks
    from recipes import compare_methods, progressive_prune

    monkeypatch.setattr(checks, "missing_deploy_packages", lambda: ["onnxruntime"])
    module = {**RECIPES, "progressive_prune": progressive_prune, "compare_methods": compare_methods}[recipe]
    out = tmp_path / "out"
    line = fail(module, [*SYNTHETIC, "--teacher", str(teacher), *argv, "--out", str(out)], capsys)
    assert expected in line
    assert not out.exists()


def test_an_unreachable_target_is_refused_before_a_teacher_is_trained(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(recipes.plumbing.training, "fit_model", lambda *a, **k: pytest.fail("nothing may be trained"))
    out = tmp_path / "out"
    line = fail(prune_then_distill, [*SYNTHETIC, "--teacher-model-args", TINY, "--target-flops", "1", "--out",
                                     str(out)], capsys)
    assert "--target-flops 1 is below the smallest reachable value" in line and not out.exists()


# ================================================== model files checked against the architecture they declare


def _edit(payload: dict, change: str) -> None:
    sd, widths = payload["state_dict"], payload["widths"]
    if change == "5x5 kernel":
        sd["features.conv1.conv.weight"] = torch.zeros(8, 3, 5, 5)
    elif change == "11 outputs":
        sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(11, 16), torch.zeros(11)
    elif change == "11 outputs, widths too":
        sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(11, 16), torch.zeros(11)
        widths["classifier"]["out_features"] = 11
    elif change == "bias (1,)":
        sd["classifier.bias"] = torch.zeros(1)
    elif change == "padding entry":
        widths["features.conv1.conv"]["padding"] = 100
    elif change == "unknown key":
        sd["features.conv9.conv.weight"] = torch.zeros(8, 8, 3, 3)
    elif change == "missing key":
        del sd["features.conv2.bn.running_var"]
    elif change == "unknown layer":
        widths["features.conv9.conv"] = {"out_channels": 4}
    elif change == "text width":
        widths["features.conv1.conv"]["out_channels"] = "8"
    elif change == "num_classes":
        payload["num_classes"] = "ten"
    elif change == "meta mean":
        payload["meta"]["mean"] = [0.5, 0.5]
    elif change == "widths disagree":  # conv1 narrowed consistently, conv2 still reads 8 channels
        widths["features.conv1.conv"]["out_channels"], widths["features.conv1.bn"]["num_features"] = 6, 6
        sd["features.conv1.conv.weight"] = torch.zeros(6, 3, 3, 3)
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"features.conv1.bn.{k}"] = torch.zeros(6)


MODEL_FILE_CASES = [
    ("5x5 kernel", "'features.conv1.conv.weight' has shape (8, 3, 5, 5) but its layer, as the file declares it, "
                   "needs (8, 3, 3, 3)"),
    ("11 outputs", "'classifier.weight' has shape (11, 16) but its layer, as the file declares it, needs (10, 16)"),
    ("11 outputs, widths too", "gives outputs of shape (1, 11) for one image, but declares num_classes 10"),
    ("bias (1,)", "'classifier.bias' has shape (1,) but its layer, as the file declares it, needs (10,)"),
    ("padding entry", "its stored widths give layer 'features.conv1.conv' an entry 'padding', which is not one of its widths"),
    ("unknown key", "'features.conv9.conv.weight' is not a parameter or buffer of architecture 'wide_cnn'"),
    ("missing key", "it lacks 'features.conv2.bn.running_var'"),
    ("unknown layer", "its stored widths name layer 'features.conv9.conv', which architecture 'wide_cnn' does not"),
    ("text width", "stored width features.conv1.conv.out_channels = '8' is not a positive whole number"),
    ("num_classes", "its num_classes 'ten' is not a whole number >= 1"),
    ("widths disagree", "its layers do not fit together"),
    ("meta mean", "its meta 'mean' [0.5, 0.5] is not a list of 3 finite numbers"),
]


@pytest.mark.parametrize("change, expected", MODEL_FILE_CASES, ids=[c[0] for c in MODEL_FILE_CASES])
def test_a_model_file_that_does_not_fit_its_architecture_is_refused_naming_the_mismatch(change, expected, teacher,
                                                                                         tmp_path, capsys):
    payload = torch.load(teacher, weights_only=True)
    _edit(payload, change)
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    with pytest.raises(FileFormatError, match="edited.pt") as info:
        load_model(edited)
    assert expected in str(info.value)
    out = tmp_path / "out"
    line = fail(prune_then_distill, [*SYNTHETIC, "--teacher", str(edited), "--ratio", "0.5", "--out", str(out)],
                capsys)
    assert expected in line and not out.exists()


def test_export_names_the_mismatch_of_a_model_file_in_one_line(teacher, tmp_path, capsys):
    from recipes import export

    payload = torch.load(teacher, weights_only=True)
    _edit(payload, "padding entry")
    torch.save(payload, tmp_path / "edited.pt")
    line = fail(export, ["--student", str(tmp_path / "edited.pt")], capsys)
    assert "an entry 'padding', which is not one of its widths" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.pt"]


# ============================================= inputs: fingerprints for --resume, the cache key, decoding, listing


def _pixels(seed: int, size: int = 16):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def made_folder(root: Path, train: dict[str, int], test: dict[str, int], ext: str = "png") -> Path:
    """An imagefolder of small random images written here: ``{class: count}`` per split."""
    from PIL import Image

    seed = 0
    for split, counts in (("train", train), ("test", test)):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                Image.fromarray(_pixels(seed)).save(root / split / cls / f"{i}.{ext}")
    return root


def test_resume_refuses_changed_training_images_naming_the_class_folder(tmp_path, capsys):
    root = made_folder(tmp_path / "data", {"cat": 4, "dog": 4}, {"cat": 2, "dog": 2})
    argv = [*imagefolder_args(root, tmp_path / "cache"), "--out", str(tmp_path / "run")]
    train_teacher.main(argv)
    before = files(tmp_path / "run")
    (root / "train" / "dog" / "0.png").unlink()
    line = fail(train_teacher, [*argv, "--resume"], capsys)
    assert "--resume: the training images changed since the earlier run" in line
    assert "class folder 'dog' had 4 files then and 3 now" in line and "--overwrite" in line
    shutil.copy(root / "train" / "dog" / "1.png", root / "train" / "dog" / "0.png")  # back to 4, other pixels
    line = fail(train_teacher, [*argv, "--resume"], capsys)
    assert "files in class folder 'dog' were replaced or rewritten (4 files then and now)" in line
    assert files(tmp_path / "run") == before


def test_resume_goes_on_over_training_images_restored_with_the_same_pixels(tmp_path, capsys):
    # a workspace restored into a new session: every file rewritten (new inode, change and modification times), the
    # same bytes; the file entries all differ, the decoded pixels do not
    root = made_folder(tmp_path / "data", {"cat": 4, "dog": 4}, {"cat": 2, "dog": 2})
    argv = [*imagefolder_args(root, tmp_path / "cache"), "--out", str(tmp_path / "run")]
    train_teacher.main(argv)
    recorded = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert set(recorded["pixels"]) == {"train", "test"} and recorded["pixels"]["train"]["dog"].startswith("4:")
    for f in sorted((root / "train").rglob("*.png")):
        blob = f.read_bytes()
        f.unlink()
        f.write_bytes(blob)
    again = json.loads(json.dumps(recorded))
    listed = list_image_files(root / "train", None)
    assert split_fingerprint(root / "train", *listed) != recorded["data"]["train"]  # the file entries did change
    train_teacher.main([*argv, "--resume"])
    assert json.loads((tmp_path / "run" / "inputs.json").read_text())["pixels"] == again["pixels"]
    # the same count with other pixels is still refused, though the pixels were recorded
    shutil.copy(root / "train" / "dog" / "1.png", root / "train" / "dog" / "0.png")
    line = fail(train_teacher, [*argv, "--resume"], capsys)
    assert "files in class folder 'dog' were replaced or rewritten (4 files then and now)" in line


def test_resume_refuses_a_replaced_teacher_file(teacher, tmp_path, capsys):
    mine = tmp_path / "teacher.pt"
    shutil.copy(teacher, mine)
    argv = [*SYNTHETIC, "--teacher", str(mine), "--ratio", "0.5", "--out", str(tmp_path / "run")]
    prune_then_distill.main(argv)
    before = files(tmp_path / "run")
    other = load_model(mine)
    with torch.no_grad():
        other.classifier.bias.add_(1.0)
    save_model(other, mine, meta=other.meta)  # same path, same architecture, other weights
    line = fail(prune_then_distill, [*argv, "--resume"], capsys)
    assert f"--resume: the teacher file {str(mine)!r} changed since the earlier run" in line and "sha256" in line
    assert files(tmp_path / "run") == before


def test_the_image_cache_sees_a_same_size_replacement_that_keeps_its_mtime(tmp_path):
    root = made_folder(tmp_path / "data", {"cat": 2, "dog": 2}, {"cat": 1, "dog": 1}, ext="ppm")
    first = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    target = root / "train" / "cat" / "0.ppm"
    stat = target.stat()
    from PIL import Image

    Image.fromarray(_pixels(99)).save(target)  # `cp -p`: same size (a 16×16 PPM), the old mtime put back
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(again.images[0], torch.from_numpy(_pixels(99)).permute(2, 0, 1))
    assert not torch.equal(again.images[0], first.images[0])


def test_16_bit_images_are_scaled_and_float_images_refused_by_name(tmp_path):
    import numpy as np
    from PIL import Image

    root = made_folder(tmp_path / "data", {"cat": 1, "dog": 1}, {"cat": 1, "dog": 1})
    gray16 = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))
    assert gray16.mode == "I;16"
    gray16.save(root / "train" / "cat" / "gray16.png")
    data = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    index = [i for i, label in enumerate(data.labels.tolist()) if label == 0][1]  # cat/gray16.png (after 0.png)
    assert int(data.images[index].min()) == int(data.images[index].max()) == 128  # 32768 / 65535 · 255, not 255
    Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)).save(root / "train" / "dog" / "float.tif")
    with pytest.raises(BadImageError, match=r"float.tif' \(ValueError: floating-point pixels \(PIL mode F\)"):
        load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)


def test_a_dangling_symlink_is_named_and_skippable(tmp_path, capsys):
    root = made_folder(tmp_path / "data", {"cat": 3, "dog": 3}, {"cat": 1, "dog": 1})
    link = root / "train" / "cat" / "gone.png"
    link.symlink_to(root / "train" / "cat" / "missing.png")
    args = imagefolder_args(root, tmp_path / "cache")
    line = fail(train_teacher, [*args, "--out", str(tmp_path / "out")], capsys)
    assert str(link) in line and "a symbolic link to" in line and "which does not exist" in line
    assert "--skip-bad-images" in line and not (tmp_path / "out").exists()
    capsys.readouterr()
    run_main(train_teacher.main, [*args, "--out", str(tmp_path / "skip"), "--skip-bad-images"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: left out 1 image file(s)") and "gone.png" in err[0]


def test_hidden_folders_and_folder_symlinks_are_not_read(tmp_path):
    root = made_folder(tmp_path / "data", {"cat": 2, "dog": 2}, {"cat": 1, "dog": 1})
    hidden = made_folder(tmp_path / "more", {"x": 3}, {})
    (root / "train" / "cat" / ".thumbnails").symlink_to(hidden / "train" / "x")  # hidden: skipped
    shutil.copytree(hidden / "train" / "x", root / "train" / "dog" / ".cache")  # a hidden real folder: skipped
    (root / "train" / "x").symlink_to(".")  # a link to the split itself: not an 11th class holding every image
    (root / "train" / "cat" / "also").symlink_to(root / "train" / "dog")  # a linked folder inside: not entered
    assert imagefolder_classes(root) == ["cat", "dog"]
    data = load_imagefolder(root, True, 16, cache_dir=tmp_path / "c", progress=False)
    assert len(data) == 4 and data.classes == ["cat", "dog"]


def test_class_names_in_other_unicode_forms_are_shown_distinguishably(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    root = made_folder(tmp_path / "data", {nfc: 1, "dog": 1}, {nfd: 1, "dog": 1})
    with pytest.raises(DataUnavailableError) as info:
        imagefolder_classes(root)
    text = str(info.value)
    assert "only in train/: ['caf\\xe9']" in text and "only in test/: ['cafe\\u0301']" in text
    assert "differ only in their Unicode normal form, NFC against NFD" in text


def test_a_limit_that_drops_classes_warns(tmp_path, capsys):
    capsys.readouterr()
    run_main(train_teacher.main, [*SYNTHETIC, "--model-args", TINY, "--limit-train", "5", "--out",
                                  str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --limit-train 5 leaves 5 of the 10 classes without training images; pass at least 10 "
                   "to keep every class"]


# ============================================================================================== messages


class _FullAfter:
    """A file on a disk that fills up after ``room`` bytes: later writes fail with ENOSPC."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_disk_that_fills_up_during_a_checkpoint_says_no_space_left(tmp_path, monkeypatch, capsys):
    import models.checkpoint as checkpoint

    def filling(name, mode, **kwargs):  # text files fit; a checkpoint fills the disk after 4 kB
        f = open(name, mode, **kwargs)
        return _FullAfter(f, 4096) if "b" in mode else f

    monkeypatch.setattr(checkpoint, "open", filling, raising=False)
    out = tmp_path / "run"
    line = fail(train_teacher, [*SYNTHETIC, "--model-args", TINY, "--out", str(out)], capsys)
    assert line.startswith("error: no space left on device (ENOSPC) writing ") and "last.pt" in line, line
    assert "corrupt" not in line and not list(out.rglob("*.tmp"))


def test_sigterm_is_one_line(tmp_path, capsys, monkeypatch):
    import signal

    from kd.trainer import Trainer

    real, calls = Trainer._train_epoch, []

    def terminated_in_epoch_2(self, train):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID`, a batch scheduler's stop
        return real(self, train)

    monkeypatch.setattr(Trainer, "_train_epoch", terminated_in_epoch_2)
    before = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(train_teacher.main, [*SYNTHETIC, "--model-args", TINY, "--epochs", "3", "--out",
                                      str(tmp_path / "run")])
    assert info.value.code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("terminated: ") and "--resume" in err[0]
    assert (tmp_path / "run" / "teacher_train" / "last.pt").is_file()  # epoch 1, to resume from
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    import signal

    run = _python(str(REPO / "recipes" / "train_teacher.py"), *SYNTHETIC, "--out", str(tmp_path / "run"))
    maps = Path(f"/proc/{run.pid}/maps")
    while run.poll() is None and "libtorch" not in maps.read_text():  # torch's libraries are being loaded
        time.sleep(0.005)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith("interrupted: "), err


def test_under_torchrun_an_error_is_one_line_and_each_rank_exits_2(tmp_path):
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "recipes" /
           "train_teacher.py"), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"), "--device", "cpu",
           "--no-progress", "--out", str(tmp_path / "run")]
    _, err = _python(*cmd).communicate(timeout=240)
    assert [ln for ln in err.splitlines() if "error:" in ln] == [
        f"error: imagefolder data dir {str(tmp_path / 'none')!r} does not exist"], err[-3000:]
    assert "exitcode  : 2" in err and "exitcode  : 1" not in err  # the ranks' status (torchrun's own is always 1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--batch-sizes", "0"], "--batch-sizes must be a whole number >= 1, got 0"),
    (["--threads", "0"], "--threads must be a whole number >= 1, got 0"),
    (["--tolerance", "-1"], "--tolerance must be > 0, got -1.0"),
    (["--repeats", "0"], "--repeats must be a whole number >= 1, got 0"),
    (["--image-size", "2"], "--image-size must be >= 8 (pixels), got 2"),
    ([], "ONNX export needs the onnxruntime package(s), which are not installed"),
])
def test_export_checks_its_options_before_reading_or_writing(argv, expected, teacher, tmp_path, monkeypatch, capsys):
    import recipes.plumbing.option_checks as checks
    from recipes import export

    monkeypatch.setattr(checks, "missing_deploy_packages", lambda: ["onnxruntime"] if not argv else [])
    line = fail(export, ["--student", str(teacher), "--out", str(tmp_path / "m.onnx"), *argv], capsys)
    assert expected in line and list(tmp_path.iterdir()) == []


def test_without_flock_the_pid_in_the_owner_file_decides(tmp_path, monkeypatch):
    import socket

    fcntl = pytest.importorskip("fcntl")  # the file locks filelock uses on POSIX

    from recipes.plumbing import lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "run"
    out.mkdir()
    sleeper = _python("-c", "import time; time.sleep(60)")
    dead = _python("-c", "pass")
    dead.communicate()
    try:
        (out / ".lock.owner").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": 0}))
        with pytest.raises(lock.OutBusyError, match=f"pid {sleeper.pid}"):
            lock.acquire(out)
        (out / ".lock.owner").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
        lock.acquire(out)  # a dead process's lock is stale
        assert lock.holder(out)["pid"] == os.getpid()
        lock.release(out)
        assert not (out / ".lock").exists() and not (out / ".lock.owner").exists() and out.is_dir()  # a folder it
        # did not make stays
    finally:
        sleeper.kill()
        sleeper.communicate()
