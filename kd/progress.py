"""Progress bars that only draw on a terminal: redirected to a file, a bar would write every refresh into it, so
there the bar is off and the one line per epoch (:class:`kd.callbacks.EpochPrinter`) is the whole log."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``, where tqdm draws) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable, *, enabled: bool = True, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, drawn only when ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), **options)
