"""The image pack: an image folder of small JPEGs in one ``.npz`` file, a third of its size, losslessly.

Every JPEG starts with headers (quantisation and Huffman tables, through its start-of-scan segment) that an encoder
writes identically for images of one size and quality: 623 of the ~920 bytes of each CIFAR-10 JPEG of this project.
A pack keeps each distinct header once and each file's remaining bytes:

- ``index``: UTF-8 JSON ``{"paths": [relative POSIX paths, sorted], "sha256": hex digest of every file's bytes in
  path order, "header_sizes": [bytes of each distinct header]}``;
- ``headers``: the distinct headers, concatenated (uint8); ``which``: (N,) int32, the header of each file;
- ``sizes``: (N,) int64, the bytes after the header of each file; ``blob``: those bytes, concatenated (uint8).

:func:`read_pack` checks everything (arrays, sizes, every path inside the pack's root, the sha256 over all files)
before anything is used, so a damaged pack is refused whole; :func:`load_pack_split` decodes a split's images straight
from the pack into the uint8 cache without writing any file, and :func:`unpack` writes the files into a fresh folder
renamed into place.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from kd.data.sources import (
    DataUnavailableError, ImageTensors, _bad_image, _decode_all, _read_cache, _write_cache, balanced_indices,
    default_cache_dir,
)

SOS = b"\xff\xda"  # JPEG start of scan: the compressed data follows its segment
ARRAYS = ("index", "headers", "which", "sizes", "blob")


class PackError(ValueError):
    """A pack that cannot be read or does not check out (truncated, edited, unsafe paths); the message says which."""


def split_header(data: bytes) -> int:
    """Length of ``data``'s header: through the end of the start-of-scan segment, or 0 when there is none."""
    i = data.find(SOS)
    if i < 0 or i + 4 > len(data):
        return 0
    return i + 2 + int.from_bytes(data[i + 2:i + 4], "big")


@dataclass(frozen=True)
class Pack:
    """A pack read and verified by :func:`read_pack`: the files' relative paths and what rebuilds their bytes."""

    paths: list[str]
    sha256: str
    headers: list[bytes]
    which: np.ndarray  # (N,) int32
    ends: np.ndarray  # (N,) int64: where each file's body ends in blob
    sizes: np.ndarray  # (N,) int64
    blob: bytes

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, i: int) -> bytes:
        """The bytes of file ``i``: its header, then its body."""
        end, size = int(self.ends[i]), int(self.sizes[i])
        return self.headers[int(self.which[i])] + self.blob[end - size:end]

    def files(self) -> Iterator[tuple[str, bytes]]:
        """``(relative path, bytes)`` of every file, in path order."""
        for i, rel in enumerate(self.paths):
            yield rel, self.file(i)


def write_pack(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Packs every file under the folder ``src`` into ``dst`` (written to a temporary file, then renamed).

    Returns:
        ``{"files": N, "headers": distinct headers, "bytes": size of dst, "sha256": digest of the files}``.

    Raises:
        PackError: ``src`` is not a folder or holds no files, ``dst`` does not end in ``.npz``, its folder is missing,
            or ``dst`` is inside ``src``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PackError(f"{str(src)!r} is not a folder of images to pack")
    if dst.suffix != ".npz":
        raise PackError(f"the pack {str(dst)!r} must end in .npz")
    if not dst.parent.is_dir():
        raise PackError(f"the folder of {str(dst)!r} does not exist; create it first")
    if src.resolve() in dst.resolve().parents:
        raise PackError(f"the pack {str(dst)!r} cannot be written inside the folder it packs")
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.relative_to(src).as_posix())
    if not files:
        raise PackError(f"{str(src)!r} holds no files to pack")
    headers: dict[bytes, int] = {}
    which, bodies, digest = [], [], hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(data)
        cut = split_header(data)
        which.append(headers.setdefault(data[:cut], len(headers)))
        bodies.append(data[cut:])
    header_list = sorted(headers, key=headers.get)
    index = {"paths": [p.relative_to(src).as_posix() for p in files], "sha256": digest.hexdigest(),
             "header_sizes": [len(h) for h in header_list]}
    arrays = {"index": np.frombuffer(json.dumps(index).encode(), np.uint8),
              "headers": np.frombuffer(b"".join(header_list), np.uint8), "which": np.asarray(which, np.int32),
              "sizes": np.asarray([len(b) for b in bodies], np.int64),
              "blob": np.frombuffer(b"".join(bodies), np.uint8)}
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; a pack is as readable as any file written here
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"files": len(files), "headers": len(header_list), "bytes": dst.stat().st_size, "sha256": index["sha256"]}


def read_pack(path: str | os.PathLike) -> Pack:
    """Reads the pack ``path`` and checks it whole before returning it: the five arrays, their sizes against each
    other, every path (relative, inside the pack's root, no ``..``, unique) and the sha256 over all files.

    Raises:
        PackError: naming the file and what is wrong with it.
    """
    path = Path(path)
    where = f"pack {str(path)!r}"
    if not path.is_file():
        raise PackError(f"{where} {'is a folder' if path.is_dir() else 'does not exist'}; pass a .npz pack file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ARRAYS if k not in z.files]
            if missing:
                raise PackError(f"{where} is not an image pack (no {', '.join(missing)})")
            arrays = {k: z[k] for k in ARRAYS}
    except PackError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise PackError(f"{where} cannot be read ({type(err).__name__}: truncated or not an .npz file)") from None
    try:
        index = json.loads(arrays["index"].tobytes())
        paths, sha256, header_sizes = list(index["paths"]), str(index["sha256"]), list(index["header_sizes"])
    except (ValueError, KeyError, TypeError):
        raise PackError(f"{where} has an unreadable index") from None
    return _checked(where, paths, sha256, header_sizes, arrays)


def _checked(where: str, paths: list, sha256: str, header_sizes: list, arrays: dict) -> Pack:
    """The :class:`Pack` of the arrays once sizes, paths and the sha256 agree."""
    which, sizes = arrays["which"].astype(np.int64), arrays["sizes"].astype(np.int64)
    header_bytes, blob = arrays["headers"].tobytes(), arrays["blob"].tobytes()
    n = len(paths)
    if len(which) != n or len(sizes) != n or n == 0:
        raise PackError(f"{where} is inconsistent: {n} paths, {len(which)} header indices, {len(sizes)} sizes")
    if any(not isinstance(s, int) or s < 0 for s in header_sizes) or sum(header_sizes) != len(header_bytes):
        raise PackError(f"{where} is inconsistent: its headers do not add up to their recorded sizes")
    if (which < 0).any() or (which >= len(header_sizes)).any() or (sizes < 0).any() or sizes.sum() != len(blob):
        raise PackError(f"{where} is inconsistent: file sizes or header indices out of range (truncated?)")
    for rel in paths:
        _check_path(where, rel)
    if len(set(paths)) != n:
        raise PackError(f"{where} names a file twice")
    starts = np.concatenate([[0], np.cumsum(header_sizes)]).astype(np.int64)
    headers = [header_bytes[a:b] for a, b in zip(starts[:-1], starts[1:])]
    pack = Pack(paths, sha256, headers, which.astype(np.int32), np.cumsum(sizes), sizes, blob)
    digest = hashlib.sha256()
    for i in range(n):
        digest.update(pack.file(i))
    if digest.hexdigest() != sha256:
        raise PackError(f"{where} is damaged: its files' sha256 is {digest.hexdigest()[:12]}…, not the recorded "
                        f"{sha256[:12]}…")
    return pack


def _check_path(where: str, rel: object) -> None:
    """A pack path must be a relative POSIX path that stays inside the folder it is unpacked into."""
    ok = isinstance(rel, str) and rel and "\\" not in rel and ":" not in rel and "\0" not in rel
    parts = PurePosixPath(rel).parts if ok else ()
    if not ok or PurePosixPath(rel).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise PackError(f"{where} holds the path {rel!r}, which would be written outside its folder; refusing it")


def unpack(pack: Pack | str | os.PathLike, dst: str | os.PathLike, *, replace: bool = False) -> dict:
    """Writes the files of ``pack`` (verified first when given as a path) into the folder ``dst``: into a fresh
    temporary folder beside it, renamed into place once every file is written, so ``dst`` never holds a partial
    or damaged set.

    Args:
        replace: replace a ``dst`` that holds files (it is removed only after the new folder is complete).

    Raises:
        PackError: a damaged pack, ``dst`` a file, a non-empty ``dst`` without ``replace``, or a missing parent.
    """
    pack = pack if isinstance(pack, Pack) else read_pack(pack)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise PackError(f"{str(dst)!r} is a file; unpack into a folder")
    if dst.is_dir() and any(dst.iterdir()) and not replace:
        raise PackError(f"{str(dst)!r} is not empty; unpack into a new folder, or pass --replace to replace it")
    if not dst.parent.is_dir():
        raise PackError(f"the folder {str(dst.parent)!r} does not exist; create it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for rel, data in pack.files():
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"files": len(pack), "sha256": pack.sha256}


# ------------------------------------------------------------------------------------- images straight from a pack

FILES = Path(__file__).resolve().parent / "files"
# The data sets that ship with the package as packs: name -> (file, sha256 of the files it holds). cifar10-jpeg is
# CIFAR-10 as JPEG quality 75 with 4:2:0 chroma (50,000 + 10,000 images, ImageFolder layout), the copy every
# committed teacher and every BENCHMARKS.md figure was measured on.
SHIPPED = {"cifar10-jpeg": (FILES / "cifar10-jpeg.npz",
                            "dd89200ef3ace8900ff1354198dbb556809d3f6279e6ec7f75f21a417e15c9e2")}


def shipped_pack(name: str) -> Pack:
    """The pack of the shipped data set ``name``, read, verified and checked to hold the files it shipped with.

    Raises:
        DataUnavailableError: the file is missing (an installation without it). PackError: damaged or replaced.
    """
    path, expected = SHIPPED[name]
    if not path.is_file():
        raise DataUnavailableError(f"the shipped data set {name} ({str(path)!r}) is missing from this installation; "
                                   "reinstall the package, or use --dataset imagefolder --data-dir DIR")
    pack = read_pack(path)
    if pack.sha256 != expected:
        raise PackError(f"the shipped pack {str(path)!r} holds other files (sha256 {pack.sha256[:12]}…, not "
                        f"{expected[:12]}…); restore it (git checkout)")
    return pack



def pack_split_files(pack: Pack, split: str) -> tuple[list[int], list[int], list[str]]:
    """``(file indices, labels, classes)`` of ``<split>/<class>/<file>`` entries, sorted by class then path (the
    order :func:`kd.data.sources.list_image_files` gives the same folder).

    Raises:
        DataUnavailableError: the pack has no such split.
    """
    members: dict[str, list[int]] = {}
    for i, rel in enumerate(pack.paths):
        parts = rel.split("/")
        if len(parts) >= 3 and parts[0] == split:
            members.setdefault(parts[1], []).append(i)
    if not members:
        raise DataUnavailableError(f"the pack has no {split}/ split (<split>/<class>/<image>)")
    classes = sorted(members)
    indices, labels = [], []
    for label, name in enumerate(classes):
        chosen = sorted(members[name], key=lambda i: pack.paths[i])
        indices += chosen
        labels += [label] * len(chosen)
    return indices, labels, classes


def load_pack_split(source: Pack | str | os.PathLike, split: str, image_size: int = 32, limit: int | None = None,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None, classes: list[str] | None = None,
                    *, progress: bool = True) -> ImageTensors:
    """A split of the pack ``source`` (a path, or a :class:`Pack` already read) decoded into
    (N, 3, image_size, image_size) uint8 tensors, without unpacking.

    A path is verified (:func:`read_pack`) on every call; the decoded arrays are cached under
    ``cache_dir`` keyed by the pack's sha256, the split, the image size and the subset, so a later run reads them in
    a second. ``limit`` picks a class-balanced subset before decoding; ``classes`` must match the pack's.

    Raises:
        PackError: a damaged pack. DataUnavailableError: a missing split or other classes. BadImageError: an entry
            that does not decode.
    """
    pack = source if isinstance(source, Pack) else read_pack(source)
    name = "pack" if isinstance(source, Pack) else Path(source).name
    indices, labels, found = pack_split_files(pack, split)
    if classes is not None and found != classes:
        raise DataUnavailableError(f"the {split}/ split of {name!r} has classes {found}, not {classes}")
    label_t = torch.tensor(labels, dtype=torch.int64)
    if limit is not None and limit < len(indices):
        keep = balanced_indices(label_t, limit, seed).tolist()
        indices, label_t = [indices[i] for i in keep], label_t[keep]
    key = hashlib.sha1(repr((pack.sha256, split, image_size, indices)).encode()).hexdigest()[:20]
    cache = Path(cache_dir or default_cache_dir()) / f"pack-{split}-{key}.pt"
    fingerprint = {"pack": pack.sha256}
    blob = _read_cache(cache)
    if blob is not None:
        return ImageTensors(blob["images"], blob["labels"], list(blob["classes"]), fingerprint=fingerprint)
    images, skipped = _decode_all(indices, image_size, f"decoding {name}:{split}", progress,
                                  opener=lambda i: io.BytesIO(pack.file(i)),
                                  names=[f"{pack.paths[i]} of {name}" for i in indices])
    if skipped:
        raise _bad_image(skipped[0][1])
    _write_cache({"images": images, "labels": label_t, "classes": found, "skipped": []}, cache)
    return ImageTensors(images, label_t, found, fingerprint=fingerprint)
