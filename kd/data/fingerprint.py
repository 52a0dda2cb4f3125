"""What an image folder's files are, without reading them: path, size, modification and change time, inode.

The change time (``st_ctime``) moves whenever a file's content or metadata is written and cannot be set back from
user space, so a same-size replacement that keeps its modification time (``cp -p``, ``rsync -t``) is still seen —
the way git's index and ccache's direct mode notice changed files. The decoded-image cache is keyed on these
entries, and a run records one digest per class folder (:func:`split_fingerprint`) so that ``--resume`` can name the
class folder whose files changed. Copying or restoring the data (a fresh checkout, a workspace restored into a new
session) also changes the change times: a false alarm that costs a decode, never stale pixels. So that it does not
also cost a resume, a run that decoded its images records a digest of each class's decoded pixels as well
(:func:`pixel_fingerprint`); :func:`fingerprint_changes` lets a class folder whose file entries changed pass when
its file count and its pixels are those recorded.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch


def file_entry(path: Path) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)`` of ``path``; of the link itself for a symbolic link whose target is
    missing (it is named when decoding fails)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = os.lstat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def files_digest(files: Sequence[Path], root: Path | None = None) -> str:
    """A hex digest of the files' paths (relative to ``root`` when given) and :func:`file_entry` values."""
    h = hashlib.sha1()
    for f in files:
        name = str(f.relative_to(root)) if root is not None else str(f)
        h.update(repr((name, *file_entry(f))).encode())
    return h.hexdigest()


def split_fingerprint(split_dir: Path, files: Sequence[Path], labels: Sequence[int],
                      classes: Sequence[str]) -> dict[str, str]:
    """``{class: "<number of files>:<digest>"}`` over a split's whole file list (before any limit: a changed file
    outside the subset changes which files a class-balanced limit picks)."""
    by_class: list[list[Path]] = [[] for _ in classes]
    for f, label in zip(files, labels):
        by_class[label].append(f)
    return {c: f"{len(fs)}:{files_digest(fs, split_dir)[:16]}" for c, fs in zip(classes, by_class)}


def pixel_fingerprint(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, str]:
    """``{class: "<number of images>:<digest>"}``: a sha1 of each class's decoded images, in split order.

    Args:
        images: (N, C, H, W) uint8, as decoded. labels: (N,) int64 in ``[0, len(classes))``.
    """
    out = {}
    for k, c in enumerate(classes):
        mine = images[labels == k].contiguous()
        out[c] = f"{mine.shape[0]}:{hashlib.sha1(mine.numpy().tobytes()).hexdigest()[:16]}"
    return out


def fingerprint_changes(before: dict[str, str], now: dict[str, str], pixels_before: dict[str, str] | None = None,
                        pixels_now: dict[str, str] | None = None) -> list[str]:
    """What differs between two :func:`split_fingerprint` results, one phrase per class folder.

    A class folder whose file entries differ but whose file count is the same and whose decoded pixels
    (:func:`pixel_fingerprint`, when both runs recorded them) are equal holds the same images, copied or restored:
    it is no change.
    """
    pixels_before, pixels_now = pixels_before or {}, pixels_now or {}
    changes = [f"class folder {c!r} is gone" for c in before if c not in now]
    changes += [f"class folder {c!r} is new" for c in now if c not in before]
    for c in (c for c in before if c in now and before[c] != now[c]):
        n_before, n_now = before[c].split(":")[0], now[c].split(":")[0]
        if n_before == n_now and pixels_before.get(c) is not None and pixels_before.get(c) == pixels_now.get(c):
            continue
        changes.append(f"class folder {c!r} had {n_before} files then and {n_now} now" if n_before != n_now else
                       f"files in class folder {c!r} were replaced or rewritten ({n_now} files then and now)")
    return changes
