"""What a run was computed from, recorded beside its options: ``OUT/inputs.json`` holds the data's fingerprint (one
digest per class folder and split of the file entries and, for decoded images, of their pixels:
:mod:`kd.data.fingerprint`) and the sha256 of the ``--teacher`` file. ``--resume``
compares them with the inputs as they are now and refuses to continue from changed ones, naming what changed: a
student pruned from one teacher is never finished by distilling from another, nor trained on other images.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from kd.data import DataSplits
from kd.data.fingerprint import fingerprint_changes
from recipes.plumbing.report import write_json

INPUTS_NAME = "inputs.json"
SPLITS = {"train": "training", "test": "test"}


def file_sha256(*paths: str | Path) -> str:
    """The hex sha256 of a file's bytes, or of several files' bytes one after another (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(cfg: Any, data: DataSplits) -> dict[str, Any]:
    """``{"data": {"train": {class: digest}, "test": {...}}, "pixels": {...}, "teacher": [{"path", "sha256"}, ...]
    | None}`` (``pixels``: :meth:`kd.data.DataSplits.pixel_fingerprint`, where there are any; one ``teacher`` entry per
    ``--teacher`` file)."""
    paths = getattr(cfg, "teacher", None) or ()
    pixels = data.pixel_fingerprint()
    return {"data": data.fingerprint(), **({"pixels": pixels} if pixels else {}),
            "teacher": [{"path": p, "sha256": file_sha256(p)} for p in paths] or None,
            **_weights_fingerprint(cfg)}


WEIGHT_OPTIONS = {"teacher_weights": "--teacher-weights", "initial_checkpoint": "--initial-checkpoint"}


def _weights_fingerprint(cfg: Any) -> dict[str, Any]:
    """``{"teacher_weights" | "initial_checkpoint": {"path", "sha256"}}`` of an outside network's weight file."""
    return {name: {"path": path, "sha256": file_sha256(path)} for name in WEIGHT_OPTIONS
            if (path := getattr(cfg, name, None)) is not None}


def _check_weights_unchanged(earlier: dict[str, Any], now: dict[str, Any], cfg: Any) -> None:
    """``--resume``: the weight file of ``--teacher-weights`` / ``--initial-checkpoint`` is the earlier run's."""
    for name, flag in WEIGHT_OPTIONS.items():
        before, after = earlier.get(name), now.get(name)
        if before and after and before.get("sha256") != after["sha256"]:
            raise ValueError(f"--resume: the {flag} file {after['path']!r} changed since the earlier run in "
                             f"{cfg.out!r}; put that file back, or start afresh with --overwrite or another --out")


def save(cfg: Any, data: DataSplits, out: Path, record: dict[str, Any] | None = None) -> None:
    """Writes ``OUT/inputs.json`` (atomically): ``record`` (what :func:`check_unchanged` just computed, so that a
    resumed run hashes its images and teacher files once), else :func:`fingerprint`."""
    write_json(out / INPUTS_NAME, record if record is not None else fingerprint(cfg, data))


def check_unchanged(cfg: Any, data: DataSplits, out: Path) -> dict[str, Any] | None:
    """``--resume``: the data and the teacher file are those the earlier run in ``out`` recorded. A run from before
    inputs were recorded cannot be checked: a warning says so.

    Returns:
        today's :func:`fingerprint` (for :func:`save`), or None where there was no record to check against.

    Raises:
        ValueError: naming the changed input (split and class folder, or the teacher file) and what to do.
    """
    try:
        earlier = json.loads((out / INPUTS_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        warnings.warn(f"{str(out)!r} holds no {INPUTS_NAME} (an earlier version wrote it): whether its data and "
                      "teacher changed since cannot be checked", stacklevel=2)
        return None
    except (OSError, ValueError):
        raise ValueError(f"--resume: {str(out / INPUTS_NAME)!r} is unreadable, so the inputs of the earlier run "
                         "are unknown; start afresh with --overwrite") from None
    now = fingerprint(cfg, data)
    advice = "; restore them, or start afresh with --overwrite or another --out"
    for split, word in SPLITS.items():
        changes = fingerprint_changes(earlier.get("data", {}).get(split, {}), now["data"][split],
                                      earlier.get("pixels", {}).get(split), now.get("pixels", {}).get(split))
        if changes:
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise ValueError(f"--resume: the {word} images changed since the earlier run in {cfg.out!r}: "
                             f"{changes[0]}{more}{advice}")
    _check_weights_unchanged(earlier, now, cfg)
    before = earlier.get("teacher")
    before = [before] if isinstance(before, dict) else before or []  # one dict: recorded before several teachers
    for then, after in zip(before, now["teacher"] or []):
        _check_teacher_unchanged(cfg, then, after)
    return now


def _check_teacher_unchanged(cfg: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
    if before.get("sha256") != after["sha256"]:
        raise ValueError(f"--resume: the teacher file {after['path']!r} changed since the earlier run in "
                         f"{cfg.out!r} (sha256 {str(before.get('sha256'))[:12]}... then, {after['sha256'][:12]}... "
                         "now), which pruned or distilled from the earlier one; put that file back, or start afresh "
                         "with --overwrite or another --out")
