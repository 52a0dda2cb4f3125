"""``OUT/console.log``: a program run keeps its console in its output folder, progress bars as their last state,
appended sitting after sitting; a recipe's ``main`` called from Python writes none."""
import sys

import pytest

from recipes import train_teacher
from recipes.plumbing import console
from recipes.plumbing.errors import run_main

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16", "--epochs", "1",
       "--batch-size", "32", "--no-progress", "--model-args", '{"widths": [8, 8, 8, 8], "hidden": 16}']


@pytest.mark.parametrize(("line", "expected"), [
    ("epoch 1: done", "epoch 1: done"),
    (" 10%|#   |\r 50%|##  |\r100%|####|", "100%|####|"),
    ("100%|####|\r", "100%|####|"),  # a trailing return only moves the cursor
    ("\r        \repoch 2", "epoch 2"),  # a bar cleared (leave=False), then a line over it
    ("", ""),
])
def test_shown_keeps_what_the_terminal_shows_last(line, expected):
    assert console.shown(line) == expected


def test_capture_holds_lines_until_attach_then_appends_each_and_restores_the_streams(tmp_path, capsys):
    out, err = sys.stdout, sys.stderr
    with console.capture(command=["recipes/x.py", "--out", "a b"]):
        print("checking the options")
        sys.stderr.write("warning: held too\n")
        assert console.attach(tmp_path) == tmp_path / console.LOG_NAME
        assert console.attach(tmp_path) is None  # attached once
        sys.stderr.write("\r 10%|#\r100%|##########\n")
        print("epoch 1", end="")  # unfinished when the block ends: logged all the same
    assert (sys.stdout, sys.stderr) == (out, err)
    lines = (tmp_path / console.LOG_NAME).read_text().splitlines()
    assert lines[0].startswith("# ") and lines[0].endswith(" UTC: python recipes/x.py --out 'a b'")
    assert lines[1:] == ["checking the options", "warning: held too", "100%|##########", "epoch 1"]
    shown = capsys.readouterr()  # the terminal saw everything, unchanged
    assert shown.out == "checking the options\nepoch 1" and shown.err.endswith("\r100%|##########\n")


def test_no_log_outside_a_capture_block_or_with_it_off(tmp_path):
    assert console.attach(tmp_path) is None
    with console.capture(on=False):
        print("a line")
        assert console.attach(tmp_path) is None
    assert not (tmp_path / console.LOG_NAME).exists()


def test_a_program_run_keeps_its_console_an_error_before_attaching_adds_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    run_main(train_teacher.main, [*RUN, "--out", str(out)])
    printed = capsys.readouterr().out
    log = (out / console.LOG_NAME).read_text()
    body = log.splitlines()[1:]
    assert log.startswith("# ") and " UTC: python recipes/train_teacher.py --dataset synthetic " in log.splitlines()[0]
    assert body == printed.splitlines()  # every line the terminal got, in order
    assert any(line.startswith("Accuracy = ") for line in body) and any("epoch   1:" in line for line in body)

    with pytest.raises(SystemExit):  # a sitting that ends in an error keeps its one line too
        run_main(train_teacher.main, [*RUN, "--out", str(out), "--resume", "--epochs", "2"])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and (out / console.LOG_NAME).read_text() == log  # refused before attaching

    run_main(train_teacher.main, [*RUN, "--out", str(out), "--overwrite"])
    assert (out / console.LOG_NAME).read_text().count("\n# ") == 0  # --overwrite starts the log afresh


def test_main_called_from_python_writes_no_console_log(tmp_path):
    train_teacher.main([*RUN, "--out", str(tmp_path / "run")])
    assert (tmp_path / "run" / "report.json").is_file() and not (tmp_path / "run" / console.LOG_NAME).exists()


def test_a_log_that_cannot_be_written_stops_without_stopping_the_run(tmp_path, capsys):
    class FullDisk:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def close(self):
            raise OSError(28, "No space left on device")

    with console.capture():
        console.attach(tmp_path)
        console._ACTIVE.file.close()
        console._ACTIVE.file = FullDisk()  # the disk fills up after the log was opened
        print("epoch 1")
        print("epoch 2")
    assert capsys.readouterr().out == "epoch 1\nepoch 2\n"  # the terminal still gets every line
