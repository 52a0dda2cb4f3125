"""The one place where errors become a line on stderr and exit status 2 (:func:`run_main`), and the sentence each
foreseeable error becomes (:func:`error_message`)."""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from kd import distributed
from kd.data import DataUnavailableError
from models.errors import NonFiniteError
from recipes.plumbing import console, lock, signals


INTERRUPTED = ("every file written so far is complete (writes are atomic); once an epoch has finished, the same "
               "command with --resume goes on from the last finished one")


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Runs a recipe's ``main``. Every foreseeable error — bad options or inputs, missing, damaged or foreign files,
    data problems, a diverged run, a full, read-only or forbidden disk, a checkpoint that does not fit, a busy
    ``--out`` — becomes one line ``error: ...`` on stderr and exit status 2, never a traceback; warnings print as one
    ``warning: ...`` line. An error nobody foresaw (a bug) keeps its traceback. Ctrl-C prints one
    ``interrupted: ...`` line and exits 130, SIGTERM one ``terminated: ...`` line and exits 143. The lock on
    ``--out`` is released on the way out. Rank 0's console, that last line included, is kept in
    ``OUT/console.log`` once the run has an output folder (:mod:`recipes.plumbing.console`).

    Under torchrun the ranks other than 0 print nothing on stdout, and error, warning and interruption lines come
    from the first process of each node (``LOCAL_RANK`` 0) only: every rank runs the same checks, so one line says
    it; each rank still exits with the status above. The process group :func:`start_run` joined is left at the end.
    """
    env = distributed.DistEnv.from_env()
    quiet = env.local_rank != 0
    command = None if argv is None else [f"{main.__module__.replace('.', '/')}.py", *argv]  # None: sys.argv
    with (warnings.catch_warnings(), _devnull_stdout(env.rank != 0), console.capture(env.rank == 0, command),
          signals.interrupts()):
        warnings.showwarning = _show_warning if not quiet else _ignore_warning
        try:
            return main(argv)
        except KeyboardInterrupt as err:
            terminated = isinstance(err, signals.Terminated)
            if not quiet:
                print(f"\n{'terminated' if terminated else 'interrupted'}: {INTERRUPTED}", file=sys.stderr,
                      flush=True)
            raise SystemExit(143 if terminated else 130) from None
        except Exception as err:  # noqa: BLE001 (sorted by error_message; the unforeseen are raised again)
            message = error_message(err)
            if message is None:
                raise
            if not quiet:
                print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        finally:
            lock.release()
            if distributed.DistEnv.from_env().distributed:
                distributed.cleanup()


@contextlib.contextmanager
def _devnull_stdout(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


_PICKLE_REFUSED = ("a file holds pickled objects other than tensors and plain values and is refused: reading it "
                   "could run code")


def error_message(err: BaseException) -> str | None:
    """The one line a user sees for ``err``, or None for an error nobody foresaw."""
    if isinstance(err, NonFiniteError):
        text = _one_line(err)
        return text if "--lr" in text else f"{text}; nothing non-finite was saved (a lower --lr usually helps)"
    if isinstance(err, OSError) and err.errno is not None:
        return _os_message(err)
    if isinstance(err, (DataUnavailableError, ValueError, OSError)):
        return _one_line(err)
    if isinstance(err, pickle.UnpicklingError):
        return _PICKLE_REFUSED
    if isinstance(err, EOFError):
        return "a file ended early: it is truncated; start afresh with --overwrite or pass an intact file"
    if isinstance(err, RuntimeError):
        text = str(err)
        if "size mismatch" in text or "Error(s) in loading state_dict" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "size mismatch" in ln), _one_line(err))
            return (f"a saved checkpoint does not fit the model ({detail.rstrip('.')}): the options changed since it "
                    "was written; resume with the earlier options, or start afresh with --overwrite or another --out")
        if any(k in text for k in ("PytorchStreamReader", "PytorchStreamWriter", "inline_container")):
            return (f"a checkpoint file is truncated or corrupt ({_one_line(err).split('. ')[0]}); start afresh "
                    "with --overwrite")
    return None


def _os_message(err: OSError) -> str:
    name = repr(err.filename) if err.filename else "a file"
    code = errno.errorcode.get(err.errno, str(err.errno))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} ({code}) writing {name}: the disk is full; free some space or choose another --out"
    if err.errno == errno.EROFS:
        return f"cannot write {name}: the file system is read-only ({code}); choose another --out"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({code}) for {name}; fix its permissions or choose another path"
    return f"{err.strerror or type(err).__name__} ({code}): {name}"


def _one_line(err: BaseException | Warning | str) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return _PICKLE_REFUSED if "weights_only" in text else text


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _ignore_warning(*args: Any, **kwargs: Any) -> None:
    """Warnings of the ranks that leave the printing to local rank 0 (the same warning, said once)."""
