"""Data sources decoded once into uint8 tensors and cached on disk.

Every source returns :class:`ImageTensors`: ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) int64, plus the class
names. Decoding happens once; the arrays are cached under ``cache_dir`` keyed by source, file list and image size, so
later runs start in seconds and the training loop never touches PIL.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.checkpoint import atomic_save

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataUnavailableError(RuntimeError):
    """The data set cannot be read or downloaded; the message says what to pass instead."""


@dataclass
class ImageTensors:
    """images: (N, 3, H, W) uint8; labels: (N,) int64 in [0, len(classes))."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

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
    return ImageTensors(data.images[idx], data.labels[idx], data.classes)


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
            f"could not download {name} into {root} ({type(err).__name__}); offline, put the extracted torchvision "
            f"archive there with --data-dir DIR, or use your own copy: --dataset imagefolder --data-dir DIR "
            f"(DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg)"
        ) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageTensors(resize_images(images, image_size), labels, list(ds.classes))


# ---------------------------------------------------------------------------------------------------- ImageFolder


def _split_dir(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = "train/" if train else "test/ or val/"
    raise DataUnavailableError(f"imagefolder data dir {str(root)!r} has no {wanted} folder of class folders")


def list_image_files(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files of ``split_dir/<class>/`` sorted by class then name; classes default to the sorted subfolders."""
    if classes is None:
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataUnavailableError(f"{str(split_dir)!r} has no class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataUnavailableError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(split_dir)!r}")
    return files, labels, classes


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)  # (size, size, 3)


def load_imagefolder(
    data_dir: str | os.PathLike,
    train: bool,
    image_size: int = 32,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    classes: list[str] | None = None,
) -> ImageTensors:
    """``data_dir/train/<class>/*`` (or ``test/`` / ``val/``) resized to ``image_size`` and converted to RGB.

    A ``limit`` picks a class-balanced subset of the file list before decoding, so a small run decodes only what it
    uses. ``classes`` fixes the class order (the test split takes the training split's classes).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"imagefolder data dir {str(root)!r} does not exist")
    files, labels, classes = list_image_files(_split_dir(root, train), classes)
    label_t = torch.tensor(labels, dtype=torch.int64)
    if limit is not None and limit < len(files):
        keep = balanced_indices(label_t, limit, seed).tolist()
        files, label_t = [files[i] for i in keep], label_t[keep]
    key = hashlib.sha1(repr((image_size, classes, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])).encode())
    cache = Path(cache_dir or default_cache_dir()) / f"imagefolder-{'train' if train else 'test'}-{key.hexdigest()[:20]}.pt"
    if cache.is_file():
        blob = torch.load(cache, weights_only=True)
        return ImageTensors(blob["images"], blob["labels"], list(blob["classes"]))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:  # PIL releases the GIL while decoding
        arrays = list(tqdm(pool.map(lambda f: _decode(f, image_size), files), total=len(files),
                           desc=f"decoding {root.name}/{'train' if train else 'test'}", unit="img", leave=False))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
    atomic_save({"images": images, "labels": label_t, "classes": classes}, cache)
    return ImageTensors(images, label_t, classes)


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
