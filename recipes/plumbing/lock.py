"""One run per output folder: an exclusive lock on ``--out``, taken before the folder is read or written.

The lock is ``OUT/.lock`` held through :mod:`filelock` (``flock`` on POSIX, ``msvcrt`` locking on Windows): the
operating system releases it when the process ends, however it ends, so a lock left by a killed run is stale by
construction. Where the file system cannot lock files (some NFS mounts), the pid recorded beside it is the lock,
stale once that process is gone on this host. ``OUT/.lock.owner`` records the holder's pid, host and start time, which
a refused run names (a separate file: on Windows the locked file cannot be written through another handle). Released
explicitly (both files removed, and ``OUT`` itself when this run created it and left it empty) by :func:`release`,
which :func:`releasing` (around each recipe's ``main``) and :func:`recipes.plumbing.errors.run_main` call on the way
out, and at interpreter exit.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import filelock

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"
LOCK_FILES = frozenset({LOCK_NAME, OWNER_NAME})  # what the lock leaves in OUT while held: not an earlier run
F = TypeVar("F", bound=Callable[..., Any])


class OutBusyError(ValueError):
    """Another live process holds the lock on the output folder; the message names it."""


@dataclass
class OutLock:
    """A held lock on ``folder``: the file lock (None where the file system cannot lock and the owner file's pid is
    the lock) and the folders this run created to hold it."""

    folder: Path
    file_lock: filelock.BaseFileLock | None
    created: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def owner_path(self) -> Path:
        return self.folder / OWNER_NAME


_HELD: dict[Path, OutLock] = {}


def acquire(folder: str | os.PathLike, advice: str = "wait for it to finish, or choose another --out") -> OutLock:
    """Locks ``folder`` (created with its parents when missing) for this process; ``advice`` ends the message that
    refuses a busy folder.

    A folder this process already holds is released and taken again (a recipe's ``main`` called twice in one
    process, as the tests do).

    Raises:
        OutBusyError: another live process holds it (the message gives its pid, host and start time).
        OSError: the folder cannot be created or the lock file written (read-only, no permission, full).
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _HELD:
        release(key)
    created = _make_folders(folder)
    try:
        file_lock = _lock_file(folder, advice)
        _write_owner(folder)
    except BaseException:
        _remove_empty(created)
        raise
    lock = OutLock(folder, file_lock, created)
    _HELD[key] = lock
    return lock


def _lock_file(folder: Path, advice: str) -> filelock.BaseFileLock | None:
    """``folder/.lock`` held without waiting; None where the file system has no file locks and no live process
    is recorded as the holder (:func:`_by_pid`)."""
    file_lock = filelock.FileLock(folder / LOCK_NAME, timeout=0, thread_local=False)
    try:
        file_lock.acquire()
    except filelock.Timeout:
        raise OutBusyError(_busy_message(folder, advice)) from None
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            raise
        _by_pid(folder, advice)
        return None
    return file_lock


def release(folder: str | os.PathLike | None = None) -> None:
    """Releases the lock on ``folder`` (every lock this process holds when None): the lock and owner files go, and so
    do the folders :func:`acquire` created if nothing else was written into them."""
    keys = [Path(folder).resolve()] if folder is not None else list(_HELD)
    for key in keys:
        lock = _HELD.pop(key, None)
        if lock is None:
            continue
        for path in (lock.owner_path, lock.path):  # removed while still locked: nobody takes a stale owner file
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        if lock.file_lock is not None:
            try:
                lock.file_lock.release(force=True)
            except OSError:
                pass
        _remove_empty(lock.created)


def _remove_empty(created: list[Path]) -> None:
    """Removes the folders :func:`acquire` created (innermost first) as long as they are empty."""
    for made in reversed(created):
        try:
            made.rmdir()
        except OSError:
            break


def releasing(main: F) -> F:
    """Decorates a recipe's ``main``: every lock it took is released when it returns or raises."""
    @wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        finally:
            release()
    return run  # type: ignore[return-value]


def holder(folder: str | os.PathLike) -> dict | None:
    """What the owner file of ``folder`` says about the lock's holder (pid, host, started), or None."""
    try:
        owner = json.loads((Path(folder) / OWNER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _busy_message(folder: Path, advice: str) -> str:
    owner = holder(folder) or {}
    pid, host = owner.get("pid", "?"), owner.get("host")
    started = owner.get("started")
    since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"--out {str(folder)!r} is in use by another run (pid {pid}{where}{since}); {advice}"


def _make_folders(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; returns those it created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock (some NFS)


def _by_pid(folder: Path, advice: str) -> None:
    """Where the file system cannot lock files: the owner file's pid is the lock, stale when that process is gone
    (on this host; another host's is taken to be alive)."""
    owner = holder(folder) or {}
    pid, host = owner.get("pid"), owner.get("host")
    if isinstance(pid, int) and pid != os.getpid() and (host != socket.gethostname() or _alive(pid)):
        raise OutBusyError(_busy_message(folder, advice))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (``os.kill(pid, 0)`` probes without signalling on POSIX)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows; assume alive (only the no-lock fallback)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _write_owner(folder: Path) -> None:
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    (folder / OWNER_NAME).write_text(body + "\n", encoding="utf-8")


atexit.register(release)
