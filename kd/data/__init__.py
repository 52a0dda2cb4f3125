"""Data: sources decoded once into cached uint8 tensors, and a batch iterator that augments on the device."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from kd.data.batches import BatchIterator, apply_crop_flip, channel_stats, draw_crop_flip, random_crop_flip
from kd.data.sources import (
    DATASETS, BadImageError, CacheWarning, DataUnavailableError, ImageTensors, balanced_indices, default_cache_dir,
    imagefolder_classes, load_cifar, load_imagefolder, make_synthetic, subset,
)

__all__ = [
    "DATASETS", "BadImageError", "BatchIterator", "CacheWarning", "DataSplits", "DataUnavailableError",
    "ImageTensors", "apply_crop_flip", "balanced_indices", "channel_stats", "default_cache_dir", "draw_crop_flip",
    "imagefolder_classes", "load_dataset", "make_loaders", "random_crop_flip", "subset",
]


@dataclass
class DataSplits:
    """Training and test splits, the class names and the training split's per-channel mean and std."""

    train: ImageTensors
    test: ImageTensors
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> list[str]:
        """``"path (reason)"`` of the image files of both splits left out as undecodable (``skip_bad_images``)."""
        return self.train.skipped + self.test.skipped

    def meta(self) -> dict[str, Any]:
        """What a saved model needs to see inputs as it was trained: class names, normalisation, image size."""
        return {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "image_size": int(self.train.images.shape[-1])}

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        """(1, C, H, W) of one input, for :func:`models.profile`."""
        return (1, *self.train.images.shape[1:])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int = 32,
                 limit_train: int | None = None, limit_test: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, synthetic_classes: int = 10,
                 skip_bad_images: bool = False, progress: bool = True) -> DataSplits:
    """Loads both splits of a data set as uint8 tensors.

    Args:
        name: ``cifar10``, ``cifar100`` (torchvision download), ``imagefolder`` (``data_dir`` with ``train/`` and
            ``test/`` or ``val/`` of class folders) or ``synthetic`` (deterministic, for tests).
        data_dir: where the data set is (required for ``imagefolder``).
        image_size: images are resized to ``image_size × image_size``.
        limit_train, limit_test: class-balanced subsets of that many images.
        seed: picks the subsets.
        cache_dir: where decoded arrays are cached (default :func:`default_cache_dir`).
        synthetic_classes: number of classes of the synthetic set.
        skip_bad_images: leave out image files that cannot be decoded (listed in ``DataSplits.skipped``) instead of
            raising :class:`BadImageError`.
        progress: show the decoding progress bar.

    Raises:
        ValueError: for an unknown name. DataUnavailableError: when the data cannot be read or downloaded, the
            splits' classes differ, a class has no images or there are fewer than 2 classes. BadImageError: an image
            that cannot be decoded (it is named).
    """
    if name in ("cifar10", "cifar100"):
        train = subset(load_cifar(name, data_dir, True, image_size), limit_train, seed)
        test = subset(load_cifar(name, data_dir, False, image_size), limit_test, seed)
    elif name == "imagefolder":
        if data_dir is None:
            raise DataUnavailableError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/*, DIR/test/<class>/*)")
        classes = imagefolder_classes(data_dir)  # both splits checked before anything is decoded
        options = {"skip_bad_images": skip_bad_images, "progress": progress}
        train = load_imagefolder(data_dir, True, image_size, limit_train, seed, cache_dir, classes, **options)
        test = load_imagefolder(data_dir, False, image_size, limit_test, seed, cache_dir, classes, **options)
    elif name == "synthetic":
        train = make_synthetic(limit_train or 512, synthetic_classes, image_size, seed=seed)
        test = make_synthetic(limit_test or 256, synthetic_classes, image_size, seed=seed + 10_000)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if len(train.classes) < 2:
        raise DataUnavailableError(f"the data has {len(train.classes)} class ({', '.join(train.classes)}); "
                                   "classification needs at least 2 classes")
    mean, std = channel_stats(train.images)
    return DataSplits(train, test, train.classes, mean, std)


def make_loaders(data: DataSplits, batch_size: int, device: str | torch.device = "cpu", seed: int = 0,
                 eval_batch_size: int | None = None) -> tuple[BatchIterator, BatchIterator]:
    """(training iterator: shuffled and augmented; test iterator: in order, unaugmented)."""
    train = BatchIterator(data.train, batch_size, train=True, mean=data.mean, std=data.std, device=device, seed=seed)
    test = BatchIterator(data.test, eval_batch_size or 2 * batch_size, train=False, mean=data.mean, std=data.std,
                         device=device)
    return train, test
