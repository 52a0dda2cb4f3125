"""Parking a run between sittings (recipes.plumbing.parking, recipes/park_run.py): files above the part size are
split and joined back byte for byte, what a later run rewrites stays behind, and a damaged park writes nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import filelock
import pytest

from recipes import park_run
from recipes.plumbing import lock
from recipes.plumbing.errors import run_main
from recipes.plumbing.parking import MANIFEST, describe_progress, park, progress, unpark


def _run(root: Path) -> Path:
    """A stopped run folder: a 2,500-byte checkpoint, a small config, best.pt and a stale temp file."""
    run = root / "run"
    (run / "student_train").mkdir(parents=True)
    (run / "student_train" / "last.pt").write_bytes(os.urandom(2500))
    (run / "student_train" / "best.pt").write_bytes(b"best")
    (run / "student_train" / ".last.pt.abc123.tmp").write_bytes(b"half")
    (run / "config.json").write_text('{"epochs": 80}\n')
    return run


def test_a_parked_run_is_split_below_the_part_size_and_unparks_byte_for_byte(tmp_path):
    run = _run(tmp_path)
    (run / "command.sh").write_text("python train.py --epochs 40\n")  # superseded by the command given
    manifest = park(run, tmp_path / "parked", part_bytes=1000, command="python train.py --epochs 80")
    parked = tmp_path / "parked"
    stored = sorted(p.relative_to(parked).as_posix() for p in parked.rglob("*") if p.is_file())
    assert stored == ["command.sh", "config.json", MANIFEST, "student_train/last.pt.part00",
                      "student_train/last.pt.part01", "student_train/last.pt.part02"]
    assert [(parked / "student_train" / f"last.pt.part0{i}").stat().st_size for i in range(3)] == [1000, 1000, 500]
    assert manifest["files"]["student_train/last.pt"]["bytes"] == 2500
    assert (parked / "command.sh").read_text() == 'python train.py --epochs 80 "$@"\n'
    written = unpark(parked, tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in written) == [
        "config.json", "student_train/last.pt"]
    for rel in ("config.json", "student_train/last.pt"):
        assert (tmp_path / "back" / rel).read_bytes() == (run / rel).read_bytes()
    assert not (tmp_path / "back" / lock.LOCK_NAME).exists()  # the lock taken while writing is released


def test_a_damaged_or_missing_part_is_named_and_nothing_is_unparked(tmp_path):
    run = _run(tmp_path)
    park(run, tmp_path / "parked", part_bytes=1000)
    part = tmp_path / "parked" / "student_train" / "last.pt.part01"
    data = part.read_bytes()
    part.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # a byte that differs (os.urandom may have drawn a 0 there)
    with pytest.raises(ValueError, match="'student_train/last.pt' is damaged"):
        unpark(tmp_path / "parked", tmp_path / "back")
    assert not (tmp_path / "back" / "config.json").exists()  # checked before anything is written
    part.unlink()
    with pytest.raises(FileNotFoundError, match="last.pt.part01"):
        unpark(tmp_path / "parked", tmp_path / "back")


def test_parking_again_replaces_the_parts_of_a_file_that_shrank(tmp_path):
    run = _run(tmp_path)
    park(run, tmp_path / "parked", part_bytes=1000)
    (run / "student_train" / "last.pt").write_bytes(b"x" * 1500)
    manifest = park(run, tmp_path / "parked", part_bytes=1000)
    assert manifest["files"]["student_train/last.pt"]["parts"] == ["last.pt.part00", "last.pt.part01"]
    assert not (tmp_path / "parked" / "student_train" / "last.pt.part02").exists()
    unpark(tmp_path / "parked", tmp_path / "back")
    assert (tmp_path / "back" / "student_train" / "last.pt").read_bytes() == b"x" * 1500


def test_park_refuses_other_files_a_live_run_and_unpark_refuses_to_replace_other_content(tmp_path):
    run = _run(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no parked.json"):
        park(run, tmp_path / "busy")
    held = filelock.FileLock(run / lock.LOCK_NAME, timeout=0, thread_local=False)  # as a run writing there holds it
    held.acquire()
    try:
        with pytest.raises(lock.OutBusyError, match="in use by another run .*; stop it .*, then park it$"):
            park(run, tmp_path / "parked")
    finally:
        held.release()
    park(run, tmp_path / "parked")
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "config.json").write_text('{"epochs": 40}\n')
    with pytest.raises(ValueError, match="already holds 'config.json' with other content"):
        unpark(tmp_path / "parked", tmp_path / "back")
    unpark(tmp_path / "parked", tmp_path / "back", overwrite=True)
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == {"epochs": 80}


def _metrics(run: Path, stage: str, rows: list[str], header: str = "epoch,train_loss,val_accuracy") -> None:
    (run / stage).mkdir(exist_ok=True)
    (run / stage / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")


def test_progress_reads_each_stage_s_last_and_best_epoch(tmp_path):
    run = _run(tmp_path)
    _metrics(run, "teacher_train", ["1,2.0,40.5", "2,1.5,61.25"])
    _metrics(run, "student_train", ["1,0.9,51.24", "2,0.7,86.56", "3,0.6,81.84"])
    _metrics(run, "no_eval", ["1,0.9,", "2,0.8,"])  # a stage without an evaluation split
    _metrics(run, "not_started", [])
    stages = progress(run)
    assert stages == {"no_eval": {"epoch": 2, "val_accuracy": None, "best_val_accuracy": None, "best_epoch": None},
                      "student_train": {"epoch": 3, "val_accuracy": 81.84, "best_val_accuracy": 86.56,
                                        "best_epoch": 2},
                      "teacher_train": {"epoch": 2, "val_accuracy": 61.25, "best_val_accuracy": 61.25,
                                        "best_epoch": 2}}
    assert describe_progress({"student_train": stages["student_train"]}) == (
        "student_train after epoch 3 (81.84 %; best 86.56 % at 2)")
    assert describe_progress({}) == "no finished epoch"


def test_the_command_line_parks_and_says_what_it_did_in_one_line_errors(tmp_path, capsys):
    run = _run(tmp_path)
    _metrics(run, "student_train", ["1,0.9,51.24", "2,0.7,60.19"])
    run_main(park_run.main, ["park", str(run), str(tmp_path / "parked"), "--part-mb", "0.001"])
    said = capsys.readouterr().out
    assert "parked 3 files (0.0 MB; 1 in parts)" in said and said.rstrip().endswith(
        ": student_train after epoch 2 (60.19 %; best 60.19 % at 2)")
    run_main(park_run.main, ["unpark", str(tmp_path / "parked"), str(tmp_path / "back")])
    assert ", parked student_train after epoch 2 (60.19 %; best 60.19 % at 2); continue" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        run_main(park_run.main, ["unpark", str(tmp_path / "nowhere"), str(tmp_path / "back")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {str(tmp_path / 'nowhere')!r} holds no parked.json: not a parked run"]
