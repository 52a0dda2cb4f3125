"""Data sources decoded once into uint8 tensors and cached on disk.

Every source returns :class:`ImageTensors`: ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) int64, plus the class
names. Decoding happens once; the arrays are cached under ``cache_dir`` keyed by source, file list and image size, so
later runs start in seconds and the training loop never touches PIL.
"""
from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from kd.data.fingerprint import file_entry, split_fingerprint
from kd.progress import progress_bar
from models.checkpoint import atomic_save, safe_load

if TYPE_CHECKING:
    from PIL import Image

DATASETS = ("cifar10-jpeg", "cifar10", "cifar100", "imagefolder", "synthetic")  # cifar10-jpeg ships (kd.data.pack)
T = TypeVar("T")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataUnavailableError(RuntimeError):
    """The data set cannot be read or downloaded; the message says what to pass instead."""


class BadImageError(DataUnavailableError):
    """An image file cannot be decoded (corrupt, truncated, not an image); the message names the file."""


class CacheWarning(UserWarning):
    """The decoded-image cache cannot be read or written; the data is decoded and kept in memory instead."""


@dataclass
class ImageTensors:
    """images: (N, 3, H, W) uint8; labels: (N,) int64 in [0, len(classes)); skipped: ``"path (reason)"`` of the
    image files left out because they could not be decoded (``skip_bad_images``); fingerprint: ``{class: digest}``
    of the files the split was read from (:func:`kd.data.fingerprint.split_fingerprint`; empty for sources that
    are not files of the user's)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    fingerprint: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.numel())


def default_cache_dir() -> Path:
    """``$PTD_CACHE_DIR``, else ``~/.cache/prune-then-distill``."""
    return Path(os.environ.get("PTD_CACHE_DIR", Path.home() / ".cache" / "prune-then-distill"))


def balanced_indices(labels: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced subset of ``limit`` samples (sorted), drawn with ``seed``.

    Each of the C classes gets ``limit // C`` samples, the first ``limit % C`` classes one more (capped by what the
    class has).
    """
    if limit < 1:
        raise ValueError(f"a subset limit must be >= 1, got {limit}")
    gen = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    picked = []
    for rank, c in enumerate(classes.tolist()):
        members = torch.nonzero(labels == c).flatten()
        take = limit // len(classes) + (1 if rank < limit % len(classes) else 0)
        picked.append(members[torch.randperm(len(members), generator=gen)[:take]])
    return torch.sort(torch.cat(picked)).values


def subset(data: ImageTensors, limit: int | None, seed: int = 0) -> ImageTensors:
    """A class-balanced subset of ``limit`` samples, or ``data`` itself when ``limit`` is None or ≥ len(data)."""
    if limit is None or limit >= len(data):
        return data
    idx = balanced_indices(data.labels, limit, seed)
    return ImageTensors(data.images[idx], data.labels[idx], data.classes, fingerprint=data.fingerprint)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 → (N, 3, size, size) uint8 by antialiased bilinear resizing (no-op when already that size)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------- CIFAR


def load_cifar(name: str, data_dir: str | os.PathLike | None, train: bool, image_size: int = 32) -> ImageTensors:
    """CIFAR-10/100 through torchvision (downloaded into ``data_dir`` or the cache when missing)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    root = Path(data_dir) if data_dir else default_cache_dir() / "torchvision"
    try:
        ds = cls(root=str(root), train=train, download=True)
    except Exception as err:  # URLError, socket errors, RuntimeError: all mean "could not get the archive"
        raise DataUnavailableError(
            f"could not download {name} into {root} ({type(err).__name__}); --dataset cifar10-jpeg is CIFAR-10 as it "
            f"ships with this project (no download); offline, put the extracted torchvision archive there with "
            f"--data-dir DIR, or use your own copy: --dataset imagefolder --data-dir DIR (DIR/train/<class>/*.jpg "
            f"and DIR/test/<class>/*.jpg)"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageTensors(resize_images(images, image_size), labels, list(ds.classes))


# ---------------------------------------------------------------------------------------------------- ImageFolder


def _split_dir(root: Path, train: bool, name: str | None = None) -> Path:
    """``root/name``; without a name ``root/train`` for training and ``root/test``, else ``root/val``, for
    evaluation (timm's ``--train-split`` / ``--val-split``)."""
    names = (name,) if name is not None else ("train",) if train else ("test", "val")
    for candidate in names:
        if (root / candidate).is_dir():
            return root / candidate
    if name is not None:
        flag = "--train-split" if train else "--val-split"
        present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataUnavailableError(f"{flag} {name}: imagefolder data dir {str(root)!r} has no {name}/ folder (its "
                                   f"folders: {', '.join(present) or 'none'})")
    wanted = "train/" if train else "test/ or val/"
    raise DataUnavailableError(f"imagefolder data dir {str(root)!r} has no {wanted} folder of class folders")


def split_names(data_dir: str | os.PathLike, train_split: str | None = None,
                val_split: str | None = None) -> tuple[str, str]:
    """The folder names of the training and evaluation splits that :func:`load_imagefolder` reads (defaults
    ``train`` and ``test``, else ``val``); DataUnavailableError when one is missing."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"imagefolder data dir {str(root)!r} does not exist")
    return _split_dir(root, True, train_split).name, _split_dir(root, False, val_split).name


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders of a split. Hidden folders (``.ipynb_checkpoints``) and symbolic links to
    folders (``train/x -> .`` would hold every image) are not classes, as hidden files are not images."""
    return sorted(p.name for p in split_dir.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted, leaving out hidden files, hidden folders and the insides of
    symbolic links to folders (a link to a file counts, even one whose target is missing: decoding names it)."""
    found = []
    for parent, dirs, names in os.walk(folder):  # followlinks=False: a linked folder is listed, never entered
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / n for n in names if _is_image(Path(n))]
    return sorted(found)


def _check_not_empty(split_dir: Path, classes: list[str]) -> None:
    empty = [c for c in classes if not _images_in(split_dir / c)]
    if empty:
        raise DataUnavailableError(f"class folder(s) {empty[:5]} of {str(split_dir)!r} hold no images "
                                   f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)")


def imagefolder_classes(data_dir: str | os.PathLike, train_split: str | None = None,
                        val_split: str | None = None) -> list[str]:
    """The class names of an imagefolder data set, checked without decoding anything: ``train/`` and ``test/`` (or
    ``val/``) have the same class folders and every class folder holds at least one image.

    Raises:
        DataUnavailableError: a missing folder, no class folders, an empty class folder, or class folders that
            differ between the splits (the message lists them).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"imagefolder data dir {str(root)!r} does not exist")
    train_dir = _split_dir(root, True, train_split)
    classes = _class_folders(train_dir)
    if not classes:
        raise DataUnavailableError(f"{str(train_dir)!r} has no class folders")
    _check_not_empty(train_dir, classes)
    test_dir = _split_dir(root, False, val_split)
    test_classes = _class_folders(test_dir)
    if test_classes != classes:
        only_train = [c for c in classes if c not in test_classes]
        only_test = [c for c in test_classes if c not in classes]
        raise DataUnavailableError(
            f"train/ and {test_dir.name}/ of {str(root)!r} have different class folders (only in train/: "
            f"{_names(only_train[:5])}, only in {test_dir.name}/: {_names(only_test[:5])}); both splits need the "
            f"same classes{_normal_form_hint(only_train, only_test)}")
    _check_not_empty(test_dir, classes)
    return classes


def _names(names: list[str]) -> str:
    """A list of folder names as Python writes it, with escapes for anything outside ASCII: names that look the
    same on screen (é as one code point, or as e and a combining accent) are shown distinguishably."""
    return ascii(names) if any(not n.isascii() for n in names) else str(names)


def _normal_form_hint(a: list[str], b: list[str]) -> str:
    same = [x for x in a if any(unicodedata.normalize("NFC", x) == unicodedata.normalize("NFC", y) for y in b)]
    if not same:
        return ""
    return (f" (the names {_names(same[:3])} differ only in their Unicode normal form, NFC against NFD: rename the "
            "folders so that both splits spell them the same way)")


def list_image_files(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files of ``split_dir/<class>/`` sorted by class then name; classes default to the sorted subfolders.

    Raises:
        DataUnavailableError: no class folders, or a class without images.
    """
    if classes is None:
        classes = _class_folders(split_dir)
    if not classes:
        raise DataUnavailableError(f"{str(split_dir)!r} has no class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        found = _images_in(folder) if folder.is_dir() else []
        if not found:
            raise DataUnavailableError(f"class folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                       "add images or remove the folder")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _decode(path: Path | BinaryIO, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = _eight_bit(img).convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.array(img, dtype=np.uint8)  # (size, size, 3), writable (torch.from_numpy needs it)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _eight_bit(img: "Image.Image") -> "Image.Image":
    """``img`` with 16-bit grayscale (PIL modes I;16*, and I holding values in [0, 65535]) scaled to 8 bits, where
    PIL's own conversion to RGB would clip every value above 255 to white.

    Raises:
        ValueError: for pixels that have no 8-bit scale: floating point (mode F), or 32-bit values outside 16 bits.
    """
    from PIL import Image

    if img.mode not in (*_SIXTEEN_BIT, "I", "F"):
        return img
    if img.mode == "F":
        raise ValueError("floating-point pixels (PIL mode F) have no fixed range to scale to 8 bits; save the "
                         "image with 8 or 16 bits per channel")
    values = np.asarray(img).astype(np.int64)  # (H, W)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"32-bit pixels (PIL mode {img.mode}) outside the 16-bit range [0, 65535] cannot be scaled "
                         "to 8 bits; save the image with 8 or 16 bits per channel")
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")


def _try_decode(path: Path | BinaryIO, size: int) -> np.ndarray | str:
    """The decoded image (of a file, or of bytes in memory), or why it cannot be decoded (PIL fails in many ways:
    OSError for a truncated or unidentified file, SyntaxError, ValueError, DecompressionBombError ...)."""
    if isinstance(path, Path) and path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    try:
        return _decode(path, size)
    except Exception as err:  # noqa: BLE001 (any failure of one file is reported with its name)
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'unreadable'}"


def _decode_all(files: Sequence[T], size: int, desc: str, progress: bool,
                opener: Callable[[T], BinaryIO] | None = None, names: Sequence[str] | None = None
                ) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """Decodes ``files`` in threads straight into one (N, 3, size, size) uint8 tensor (peak memory: that tensor plus
    the images in flight, not a list of arrays and a stacked copy beside it). Items are paths, or anything
    ``opener`` turns into a readable byte stream in the worker (a pack's entries); ``names`` name them in messages
    (default: the paths). Returns the tensor with ``(index, "'name' (why)")`` for each item that could not be
    decoded (its slot is left as zeros)."""
    images = torch.zeros((len(files), 3, size, size), dtype=torch.uint8)
    skipped: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:  # PIL releases the GIL while decoding
        decoded = pool.map(lambda f: _try_decode(opener(f) if opener else f, size), files)
        for i, array in enumerate(progress_bar(decoded, total=len(files), desc=desc, unit="img", leave=False,
                                               enabled=progress)):
            if isinstance(array, str):
                skipped.append((i, f"{names[i] if names else str(files[i])!r} ({array})"))
            else:
                images[i] = torch.from_numpy(array).permute(2, 0, 1)
    return images, skipped


def _bad_image(entry: str) -> BadImageError:
    return BadImageError(f"cannot decode image {entry}; fix or remove the file, or pass --skip-bad-images to leave "
                         "such files out")


def load_imagefolder(
    data_dir: str | os.PathLike,
    train: bool,
    image_size: int = 32,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    *,
    skip_bad_images: bool = False,
    progress: bool = True,
    split: str | None = None,
) -> ImageTensors:
    """``data_dir/train/<class>/*`` (or ``test/`` / ``val/``) resized to ``image_size`` and converted to RGB.

    A ``limit`` picks a class-balanced subset of the file list before decoding, so a small run decodes only what it
    uses. ``classes`` fixes the class order (the test split takes the training split's classes). ``split`` names the
    folder (default: ``train``, or ``test`` else ``val``). The decoded arrays
    are cached in ``cache_dir``; a cache that cannot be read or written only costs time (a :class:`CacheWarning`).

    Raises:
        BadImageError: a file that cannot be decoded, unless ``skip_bad_images`` (then it is left out and listed in
            ``skipped``). DataUnavailableError: missing folders, classes without images.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"imagefolder data dir {str(root)!r} does not exist")
    split_dir = _split_dir(root, train, split)
    files, labels, classes = list_image_files(split_dir, classes)
    fingerprint = split_fingerprint(split_dir, files, labels, classes)
    label_t = torch.tensor(labels, dtype=torch.int64)
    if limit is not None and limit < len(files):
        keep = balanced_indices(label_t, limit, seed).tolist()
        files, label_t = [files[i] for i in keep], label_t[keep]
    name = f"imagefolder-{'train' if train else 'test'}-{_cache_key(files, image_size, classes)}.pt"
    cache = Path(cache_dir or default_cache_dir()) / name
    blob = _read_cache(cache)
    if blob is not None:
        skipped = list(blob.get("skipped", []))
        if skipped and not skip_bad_images:
            raise _bad_image(skipped[0])
        return ImageTensors(blob["images"], blob["labels"], list(blob["classes"]), skipped, fingerprint)
    where = f"{root.name}/{split_dir.name}"
    images, skipped = _decode_all(files, image_size, f"decoding {where}", progress)
    if skipped and not skip_bad_images:
        raise _bad_image(skipped[0][1])
    if skipped:
        good = torch.ones(len(files), dtype=torch.bool)
        good[[i for i, _ in skipped]] = False
        images, label_t = images[good], label_t[good]
        left = torch.bincount(label_t, minlength=len(classes))
        if bool((left == 0).any()):
            empty = [c for c, n in zip(classes, left.tolist()) if n == 0]
            raise DataUnavailableError(f"after leaving out {len(skipped)} unreadable images of {where}, class(es) "
                                       f"{empty[:5]} have no images left")
    skipped = [entry for _, entry in skipped]
    _write_cache({"images": images, "labels": label_t, "classes": classes, "skipped": skipped}, cache)
    return ImageTensors(images, label_t, classes, skipped, fingerprint)


def _cache_key(files: list[Path], image_size: int, classes: list[str]) -> str:
    """The decoded-image cache's key: image size, classes, and each file's path, size, modification and change
    time (:func:`kd.data.fingerprint.file_entry`: a same-size replacement that keeps its modification time still
    changes the key)."""
    entries = [(str(f), *file_entry(f)) for f in files]
    return hashlib.sha1(repr((image_size, classes, entries)).encode()).hexdigest()[:20]


def _read_cache(cache: Path) -> dict | None:
    """The cached arrays, or None when there are none or they cannot be read (then a warning; decoding again)."""
    try:
        if not cache.is_file():
            return None
        blob = safe_load(cache, "decoded-image cache")
        if not isinstance(blob, dict) or not {"images", "labels", "classes"} <= set(blob):
            raise ValueError(f"decoded-image cache {str(cache)!r} is not one this version writes")
        return blob
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring the decoded-image cache: {err}; decoding the images again", CacheWarning,
                      stacklevel=2)
        return None


def _write_cache(blob: dict, cache: Path) -> None:
    """Caches the decoded arrays; a folder that cannot take them (read-only, full, no permission) only warns."""
    try:
        atomic_save(blob, cache)
    except OSError as err:
        warnings.warn(f"cannot write the decoded-image cache in {str(cache.parent)!r} "
                      f"({err.strerror or type(err).__name__}); continuing with the images in memory (a writable "
                      f"--cache-dir keeps them for the next run)", CacheWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------------------ synthetic


def make_synthetic(num_samples: int, num_classes: int = 10, image_size: int = 32, seed: int = 0,
                   noise: float = 40.0) -> ImageTensors:
    """Deterministic, learnable images: each class is a fixed smooth colour pattern plus Gaussian pixel noise.

    The class prototypes depend only on ``num_classes`` and ``image_size`` (not on ``seed``), so a training and a
    test set drawn with different seeds share them; labels cycle through the classes (balanced).
    """
    proto_gen = torch.Generator().manual_seed(1234 + num_classes)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=proto_gen) * 255  # (C, 3, 4, 4) → smooth upsampled pattern
    protos = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=gen)]
    images = protos[labels] + noise * torch.randn(num_samples, 3, image_size, image_size, generator=gen)
    return ImageTensors(images.round().clamp(0, 255).to(torch.uint8), labels, [f"class{i}" for i in range(num_classes)])
