"""Progress bars draw on a terminal only: with output redirected, a run logs one line per epoch and nothing else."""
from __future__ import annotations

import io

import pytest

import kd.progress
from kd import EpochPrinter, Trainer
from kd.data import make_loaders
from kd.progress import on_terminal, progress_bar
from models import create_model


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_terminal_reads_the_stream():
    assert on_terminal(FakeTerminal()) and not on_terminal(io.StringIO())


def test_a_bar_draws_on_a_terminal_and_not_into_a_file(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(kd.progress.sys, "stderr", terminal)
    assert list(progress_bar(range(3), file=terminal, mininterval=0)) == [0, 1, 2]
    assert "3/3" in terminal.getvalue()
    redirected = io.StringIO()
    monkeypatch.setattr(kd.progress.sys, "stderr", redirected)
    assert list(progress_bar(range(3), file=redirected)) == [0, 1, 2]
    assert redirected.getvalue() == ""
    assert list(progress_bar(range(3), enabled=False, file=terminal)) == [0, 1, 2]


@pytest.mark.usefixtures("one_thread")
def test_training_without_a_terminal_logs_one_line_per_epoch(tiny, capsys):
    train, test = make_loaders(tiny, 32, seed=0)
    model = create_model("wide_cnn", 10, widths=(4, 8), hidden=8)
    Trainer(model, epochs=3, precision="fp32", progress=True, callbacks=[EpochPrinter("test")]).fit(train, test)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["epoch   1", "epoch   2", "epoch   3"]
    assert all("test acc" in line for line in lines)
    assert err == ""  # no bar refreshes in redirected output
