"""One run per output folder: an exclusive lock on ``--out``, taken before the folder is read or written.

The lock is ``OUT/.lock`` held with ``fcntl.flock``: the kernel releases it when the process ends, however it ends,
so a lock left by a killed run is stale by construction (the next run takes it and overwrites the dead run's pid).
Where the file system has no flock (some NFS mounts), the pid in the file is the lock, stale once that process is
gone.
The file holds the holder's pid, host and start time, which a refused run names. Released explicitly (the file
removed, and ``OUT`` itself when this run created it and left it empty) by :func:`release`, which
:func:`releasing` (around each recipe's ``main``) and :func:`recipes.plumbing.errors.run_main` call on the way out, and
at interpreter exit.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

LOCK_NAME = ".lock"
F = TypeVar("F", bound=Callable[..., Any])


class OutBusyError(ValueError):
    """Another live process holds the lock on the output folder; the message names it."""


@dataclass
class OutLock:
    """A held lock on ``folder``: the open descriptor and the folders this run created to hold it."""

    folder: Path
    fd: int
    created: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME


_HELD: dict[Path, OutLock] = {}


def acquire(folder: str | os.PathLike) -> OutLock:
    """Locks ``folder`` (created with its parents when missing) for this process.

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
        fd = _locked_file(folder)
        _write_owner(fd)
    except BaseException:
        _remove_empty(created)
        raise
    lock = OutLock(folder, fd, created)
    _HELD[key] = lock
    return lock


def _locked_file(folder: Path) -> int:
    """The descriptor of ``folder/.lock``, exclusively locked."""
    while True:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _NO_FLOCK:
                return _by_pid(folder, fd)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise OutBusyError(_busy_message(folder)) from None
            raise
        if _same_file(fd, folder / LOCK_NAME):
            return fd
        os.close(fd)  # the holder removed the file between our open and our flock: lock the new one


def release(folder: str | os.PathLike | None = None) -> None:
    """Releases the lock on ``folder`` (every lock this process holds when None): the lock file goes, and so do the
    folders :func:`acquire` created if nothing else was written into them."""
    keys = [Path(folder).resolve()] if folder is not None else list(_HELD)
    for key in keys:
        lock = _HELD.pop(key, None)
        if lock is None:
            continue
        try:
            lock.path.unlink(missing_ok=True)  # unlinked while still locked: nobody can take the old file
        except OSError:
            pass
        os.close(lock.fd)
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
    """What the lock file of ``folder`` says about its holder (pid, host, started), or None."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _busy_message(folder: Path) -> str:
    owner = holder(folder) or {}
    pid, host = owner.get("pid", "?"), owner.get("host")
    started = owner.get("started")
    since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if started else ""
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (f"--out {str(folder)!r} is in use by another run (pid {pid}{where}{since}); wait for it to finish, or "
            "choose another --out")


def _make_folders(folder: Path) -> list[Path]:
    """Creates ``folder`` and its missing parents; returns those it created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # file systems without flock (some NFS)


def _by_pid(folder: Path, fd: int) -> int:
    """Where the file system cannot flock: the lock is the file's pid, stale when that process is gone (on this
    host; another host's is taken to be alive)."""
    owner = holder(folder) or {}
    pid, host = owner.get("pid"), owner.get("host")
    if isinstance(pid, int) and pid != os.getpid() and (host != socket.gethostname() or _alive(pid)):
        os.close(fd)
        raise OutBusyError(_busy_message(folder))
    return fd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _write_owner(fd: int) -> None:
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, body + b"\n", 0)


atexit.register(release)
