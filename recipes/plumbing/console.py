"""A recipe's console, kept in its ``--out`` folder as ``console.log``: what it printed on stdout and stderr, each
line as the terminal finally showed it, appended sitting after sitting (``--resume``), so the epoch lines, the report
and the ``error:`` / ``interrupted:`` line that ended a sitting are never lost with the terminal.

:func:`capture` (entered by :func:`recipes.plumbing.errors.run_main`, so only a program run, never a recipe's ``main``
called from Python) mirrors both streams into memory; :func:`attach` (called by :func:`recipes.plumbing.run.start_run`
once ``--out`` is locked and cleaned) writes what was held, a header line naming the command, and from then on each
line as it ends. Progress bars redraw a line with carriage returns; only the text after a line's last ``\\r`` is
logged, so a bar leaves its final state, not every redraw.
"""
from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "console.log"
HELD_LIMIT = 1_000_000  # characters kept before attach: a run that never attaches (bad options) holds little


class _Sink:
    """Where the mirrored lines go: held in memory until :meth:`open`, then appended to the log file."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.held: list[str] = []
        self.size = 0
        self.file: TextIO | None = None
        self.failed = False  # the log could not be written: nothing more is held or written

    def line(self, text: str) -> None:
        if self.failed:
            return
        if self.file is not None:
            try:
                self.file.write(text + "\n")
                self.file.flush()
            except OSError:  # a full disk: the run goes on (its own writes will say so), without its log
                self.failed = True
                self.close()
        elif self.size < HELD_LIMIT:
            self.held.append(text)
            self.size += len(text)

    def open(self, path: Path, header: str) -> None:
        self.file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by close())
        self.file.write(header + "\n")
        self.file.writelines(text + "\n" for text in self.held)
        self.file.flush()
        self.held, self.size = [], 0

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


class _Tee:
    """A text stream that writes through to ``stream`` and hands each finished line to ``sink``."""

    def __init__(self, stream: TextIO, sink: _Sink) -> None:
        self.stream, self.sink, self.partial = stream, sink, ""

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.sink.line(shown(line))
        return written

    def finish(self) -> None:
        """Logs an unfinished last line, unless a progress bar left it blank."""
        if shown(self.partial).strip():
            self.sink.line(shown(self.partial))
        self.partial = ""

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the terminal's own
        return getattr(self.stream, name)


def shown(line: str) -> str:
    """What a terminal shows for ``line`` written with carriage returns: the text after the last ``\\r`` that is
    followed by anything (a trailing ``\\r`` only moves the cursor)."""
    parts = line.split("\r")
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return parts[-1]


_ACTIVE: _Sink | None = None


@contextlib.contextmanager
def capture(on: bool = True, command: list[str] | None = None) -> Iterator[None]:
    """Within the block ``sys.stdout`` and ``sys.stderr`` also feed the console log (held until :func:`attach`, whose
    header names ``command``, by default ``sys.argv``); the streams from before come back afterwards and the log file
    is closed. ``on=False`` changes nothing."""
    global _ACTIVE
    if not on or _ACTIVE is not None:
        yield
        return
    sink = _Sink(sys.argv if command is None else command)
    before = sys.stdout, sys.stderr
    tees = _Tee(sys.stdout, sink), _Tee(sys.stderr, sink)
    sys.stdout, sys.stderr = tees
    _ACTIVE = sink
    try:
        yield
    finally:
        for tee in tees:
            tee.finish()
        sys.stdout, sys.stderr = before
        _ACTIVE = None
        sink.close()


def attach(out: Path) -> Path | None:
    """Starts writing the console of a :func:`capture` block into ``out/console.log`` (appended): a header line
    ``# <UTC time> UTC: python <command>``, the lines printed so far, then each line as it ends. Returns the log's
    path, or None outside a capture block (a recipe's ``main`` called from Python) or when it is already attached."""
    if _ACTIVE is None or _ACTIVE.file is not None:
        return None
    path = Path(out) / LOG_NAME
    command = shlex.join(["python", *_ACTIVE.command])
    _ACTIVE.open(path, f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC: {command}")
    return path
