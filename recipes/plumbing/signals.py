"""Ctrl-C and SIGTERM end a recipe with one line on stderr, never a traceback.

Importing this module first in a recipe script (before torch, which takes seconds to load) makes Ctrl-C during
those seconds print one ``interrupted:`` line and exit 130: nothing has been written yet. It acts only when the
running program is a recipe script, so importing the recipes as modules (tests, notebooks) changes no handler.
:func:`interrupts` then covers the run itself: Ctrl-C raises KeyboardInterrupt again, SIGTERM (``kill``, a batch
scheduler) raises :class:`Terminated`, and :func:`recipes.plumbing.errors.run_main` turns either into its line.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

STARTING = "interrupted: stopped while starting, before anything was written"


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (a KeyboardInterrupt, so DataLoader workers end quietly)."""


def _stop_while_starting(signum: int, frame: object) -> None:
    print(f"\n{STARTING}", file=sys.stderr, flush=True)
    os._exit(130)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Within the block Ctrl-C raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`; the handlers from
    before come back afterwards. Only the main thread may set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.default_int_handler), signal.signal(signal.SIGTERM,
                                                                                     _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def _running_a_recipe() -> bool:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is not None and Path(path).resolve().parent == Path(__file__).resolve().parents[1]


if _running_a_recipe() and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _stop_while_starting)
