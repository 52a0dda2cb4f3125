"""Holding a run's ``--out`` folder between sittings: a run longer than a session is copied into a folder that is
committed (:func:`park`) and copied back before ``--resume`` (:func:`unpark`).

A repository may refuse large files (GitHub warns at 50 MB and refuses 100 MB; this project keeps each file under
20 MB), and a checkpoint with its optimizer state is often larger, so files above ``part_bytes`` are stored as
numbered parts ``NAME.part00``, ``NAME.part01``, ... whose concatenation is the file. ``parked.json`` lists every file
with its size and sha256 (and its parts); unparking joins and checks each file before it is renamed into place, so a
damaged or missing part is named and nothing half-written is left. What a later run rewrites or that means nothing
elsewhere is not parked: the lock files, ``best.pt`` (rewritten by the run whenever it improves) and temporary files
of interrupted writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from kd.metrics import read_metrics
from models.checkpoint import atomic_write, atomic_write_text, stale_temp_files
from recipes.plumbing import lock
from recipes.plumbing.inputs import file_sha256

MANIFEST = "parked.json"
COMMAND = "command.sh"
PART_BYTES = 19_000_000  # under the project's 20 MB limit on a committed file
SKIPPED = frozenset({*lock.LOCK_FILES, "best.pt", MANIFEST})


def park(run_dir: str | os.PathLike, dest: str | os.PathLike, part_bytes: int = PART_BYTES,
         command: str | None = None) -> dict[str, Any]:
    """Copies the run folder ``run_dir`` into ``dest``, splitting files above ``part_bytes`` into parts, and writes
    ``dest/parked.json``; with ``command``, also ``dest/command.sh`` (the command, then ``"$@"``, so that
    ``bash command.sh --resume`` continues the run).

    ``dest`` is a new or empty folder, or one parked before: the files its manifest lists (and their parts) are
    replaced, so a file that shrank leaves no stale part behind.

    Returns:
        the manifest: ``{"source", "parked_at", "command", "part_bytes", "progress": (:func:`progress`),
        "files": {relative path: {"bytes", "sha256", "parts"?}}}``.

    Raises:
        FileNotFoundError: no ``run_dir``. ValueError: ``dest`` holds other files, or is inside ``run_dir``.
        lock.OutBusyError: a run is writing into ``run_dir`` (stop it after an epoch's checkpoint first).
    """
    run_dir, dest = Path(run_dir), Path(dest)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder {str(run_dir)!r} to park")
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, got {part_bytes}")
    if dest.resolve().is_relative_to(run_dir.resolve()):
        raise ValueError(f"the parking folder {str(dest)!r} is inside the run folder {str(run_dir)!r}")
    earlier = _earlier_park(dest)
    lock.acquire(run_dir, "stop it (Ctrl-C once an epoch's checkpoint is written), then park it")
    try:  # the given command's command.sh replaces a copy of the run's own
        files = {rel: _park_file(run_dir / rel, dest / rel, part_bytes) for rel in _run_files(run_dir)
                 if not (command and rel == COMMAND)}
    finally:
        lock.release(run_dir)
    for rel in set(earlier) - set(files):
        for name in _stored_names(rel, earlier[rel]):
            (dest / name).unlink(missing_ok=True)
    manifest = {"source": str(run_dir), "parked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
                "part_bytes": part_bytes, "progress": progress(run_dir), "files": files}
    if command:
        atomic_write_text(f"{command} \"$@\"\n", dest / COMMAND)
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", dest / MANIFEST)
    return manifest


def unpark(dest: str | os.PathLike, run_dir: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Copies a parked run back into ``run_dir``, joining the parts of each file and checking its size and sha256
    against ``dest/parked.json`` before renaming it into place.

    Returns:
        the files written, under ``run_dir``.

    Raises:
        FileNotFoundError: no manifest in ``dest``, or a part is missing. ValueError: a file's joined bytes do not
            match the manifest (a damaged or truncated part; the file is named and not written), or ``run_dir``
            already holds a file of the run with other content and ``overwrite`` is False.
        lock.OutBusyError: a run is writing into ``run_dir``.
    """
    dest, run_dir = Path(dest), Path(run_dir)
    manifest = read_manifest(dest)
    files = manifest["files"]
    clashes = [rel for rel, entry in files.items()
               if (run_dir / rel).is_file() and file_sha256(run_dir / rel) != entry["sha256"]]
    if clashes and not overwrite:
        raise ValueError(f"{str(run_dir)!r} already holds {clashes[0]!r} with other content"
                         f"{f' (and {len(clashes) - 1} more)' if len(clashes) > 1 else ''}; unpark into an empty "
                         "folder, or pass overwrite")
    lock.acquire(run_dir, "stop it before unparking into its folder")
    try:
        for rel, entry in files.items():
            _check(dest, rel, entry)  # every file before any is written: a damaged park leaves run_dir as it was
        written = [_join(dest, rel, entry, run_dir / rel) for rel, entry in files.items()]
    finally:
        lock.release(run_dir)
    return written


def read_manifest(dest: str | os.PathLike) -> dict[str, Any]:
    """``dest/parked.json``, checked to list files with their sizes and digests.

    Raises:
        FileNotFoundError: no manifest. ValueError: not a manifest of :func:`park`.
    """
    path = Path(dest) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(dest)!r} holds no {MANIFEST}: not a parked run")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) and {"bytes", "sha256"} <= set(e)
                                              for e in files.values()):
        raise ValueError(f"{str(path)!r} lists no files with their bytes and sha256: not written by park")
    for rel in files:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"{str(path)!r} names {rel!r}, outside the run folder")
    return manifest


def progress(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """How far each training stage of the run got, from its ``metrics.csv`` (one row per finished epoch):
    ``{stage: {"epoch", "val_accuracy", "best_val_accuracy", "best_epoch"}}`` (accuracies in percent, None where the
    stage has no evaluation split); stages without a finished epoch are left out."""
    found: dict[str, dict[str, Any]] = {}
    for metrics in sorted(Path(run_dir).glob("*/metrics.csv")):
        rows, _ = read_metrics(metrics)
        if not rows:
            continue
        scored = [(r["val_accuracy"], r["epoch"]) for r in rows if r.get("val_accuracy") is not None]
        best = max(scored, key=lambda s: s[0]) if scored else (None, None)
        found[metrics.parent.name] = {"epoch": rows[-1]["epoch"], "val_accuracy": rows[-1].get("val_accuracy"),
                                      "best_val_accuracy": best[0], "best_epoch": best[1]}
    return found


def describe_progress(stages: dict[str, dict[str, Any]]) -> str:
    """One line for :func:`progress`'s record: ``student_train after epoch 36 (81.84 %; best 86.56 % at 22)``."""
    said = []
    for stage, p in stages.items():
        scores = "" if p["val_accuracy"] is None else (f" ({p['val_accuracy']:.2f} %; best {p['best_val_accuracy']:.2f}"
                                                       f" % at {p['best_epoch']})")
        said.append(f"{stage} after epoch {p['epoch']}{scores}")
    return ", ".join(said) or "no finished epoch"


def _run_files(run_dir: Path) -> list[str]:
    """The run's files to park, relative to ``run_dir`` (POSIX form), sorted; not temporary files of interrupted
    writes (:func:`models.checkpoint.stale_temp_files`)."""
    temporary = set(stale_temp_files(run_dir))
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name not in SKIPPED and p not in temporary)


def _earlier_park(dest: Path) -> dict[str, Any]:
    """The files an earlier park wrote into ``dest`` (empty for a new or empty folder).

    Raises:
        ValueError: ``dest`` holds files but no manifest.
    """
    if not dest.exists() or not any(dest.iterdir()):
        return {}
    if not (dest / MANIFEST).is_file():
        raise ValueError(f"{str(dest)!r} holds files but no {MANIFEST}; park into a new or empty folder")
    return read_manifest(dest)["files"]


def _park_file(src: Path, target: Path, part_bytes: int) -> dict[str, Any]:
    """Copies ``src`` to ``target``, or to ``target.partNN`` pieces of ``part_bytes``; returns its manifest entry."""
    size = src.stat().st_size
    for stale in target.parent.glob(f"{target.name}.part[0-9][0-9]*"):  # parts of a larger earlier version
        stale.unlink()
    if size <= part_bytes:
        atomic_write(target, lambda tmp: shutil.copyfile(src, tmp))
        return {"bytes": size, "sha256": file_sha256(src)}
    digest, parts = hashlib.sha256(), []
    with open(src, "rb") as f:
        while chunk := f.read(part_bytes):
            digest.update(chunk)
            name = f"{target.name}.part{len(parts):02d}"
            atomic_write(target.parent / name, lambda tmp, data=chunk: Path(tmp).write_bytes(data))
            parts.append(name)
    target.unlink(missing_ok=True)  # a whole copy from a park when it was smaller
    return {"bytes": size, "sha256": digest.hexdigest(), "parts": parts}


def _stored_names(rel: str, entry: dict[str, Any]) -> list[str]:
    """The names under the parking folder that hold file ``rel``: itself, or its parts."""
    parent = Path(rel).parent
    return [(parent / p).as_posix() for p in entry["parts"]] if entry.get("parts") else [rel]


def _pieces(dest: Path, rel: str, entry: dict[str, Any]) -> list[Path]:
    pieces = [dest / name for name in _stored_names(rel, entry)]
    missing = next((p for p in pieces if not p.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"{str(missing)!r} is missing: the parked {rel!r} cannot be put together")
    return pieces


def _check(dest: Path, rel: str, entry: dict[str, Any]) -> None:
    pieces = _pieces(dest, rel, entry)
    size = sum(p.stat().st_size for p in pieces)
    if size != entry["bytes"] or file_sha256(*pieces) != entry["sha256"]:
        raise ValueError(f"the parked {rel!r} is damaged: its {len(pieces)} piece(s) in {str(dest)!r} hold {size:,} "
                         f"bytes whose sha256 is not the recorded one ({entry['bytes']:,} bytes); nothing was unparked")


def _join(dest: Path, rel: str, entry: dict[str, Any], target: Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as out:
            for piece in _pieces(dest, rel, entry):
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)

    return atomic_write(target, write)
