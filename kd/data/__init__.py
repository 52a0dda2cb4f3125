"""Data: sources decoded once into cached uint8 tensors, and a batch iterator that augments on the device."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from kd.data.batches import PAD_MODES, BatchIterator, apply_crop_flip, channel_stats, draw_crop_flip, random_crop_flip
from kd.data.fingerprint import pixel_fingerprint
from kd.data.pack import PackError, load_pack_split, shipped_pack
from kd.data.sources import (
    DATASETS, BadImageError, CacheWarning, DataUnavailableError, ImageTensors, balanced_indices, default_cache_dir,
    imagefolder_classes, load_cifar, load_imagefolder, make_synthetic, split_names, subset,
)
from kd.data.stream import DATA_MODES, FileSplit, StreamBatchIterator, choose_data_mode, list_split, stream_stats
from kd.data.transforms import (
    TRANSFORMS, TransformBatchIterator, TransformPolicy, resolve_policy, use_timm_transforms,
)

__all__ = [
    "DATASETS", "DATA_MODES", "BadImageError", "BatchIterator", "CacheWarning", "DataSplits", "DataUnavailableError",
    "FileSplit", "ImageTensors", "PAD_MODES", "PackError", "StreamBatchIterator", "TRANSFORMS",
    "TransformBatchIterator", "TransformPolicy", "apply_crop_flip", "balanced_indices", "channel_stats",
    "choose_data_mode", "default_cache_dir", "draw_crop_flip", "imagefolder_classes", "load_dataset", "make_loaders",
    "random_crop_flip", "resolve_policy", "subset", "use_timm_transforms",
]


@dataclass
class DataSplits:
    """Training and test splits, the class names and the training split's per-channel mean and std.

    ``mode``: ``memory`` (the splits are :class:`ImageTensors`) or ``stream`` (:class:`FileSplit`, read by
    :class:`StreamBatchIterator`) or ``timm`` (per-image timm transforms of ``policy`` in DataLoader workers,
    :class:`TransformBatchIterator`; the splits are :class:`FileSplit` or :class:`ImageTensors` at their own size);
    ``mode_reason`` says why ``auto`` chose it (empty otherwise); ``splits`` names the folders read (imagefolder)."""

    train: ImageTensors | FileSplit
    test: ImageTensors | FileSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "memory"
    mode_reason: str = ""
    policy: TransformPolicy | None = None
    splits: tuple[str, str] = ("train", "test")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> list[str]:
        """``"path (reason)"`` of the image files of both splits left out as undecodable (``skip_bad_images``)."""
        return self.train.skipped + self.test.skipped

    def meta(self) -> dict[str, Any]:
        """What a saved model needs to see inputs as it was trained: class names, normalisation, image size and, on
        the timm path, the evaluation resize (interpolation, crop_pct)."""
        meta = {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "image_size": int(self.train.images.shape[-1])}
        if self.policy is not None:
            meta.update(interpolation=self.policy.interpolation, crop_pct=self.policy.crop_pct)
        return meta

    def fingerprint(self) -> dict[str, dict[str, str]]:
        """``{"train": {class: digest}, "test": {...}}`` of the files both splits were read from (empty for
        synthetic and torchvision data): what ``--resume`` compares (:mod:`kd.data.fingerprint`)."""
        return {"train": dict(self.train.fingerprint), "test": dict(self.test.fingerprint)}

    def pixel_fingerprint(self) -> dict[str, dict[str, str]]:
        """``{"train": {class: digest}, "test": {...}}`` of the decoded images of each split read from files into
        memory (:func:`kd.data.fingerprint.pixel_fingerprint`; empty for streamed splits and those not read from
        files), what lets ``--resume`` tell copied or restored files from changed ones."""
        return {name: pixel_fingerprint(split.images, split.labels, self.classes)
                for name, split in (("train", self.train), ("test", self.test))
                if split.fingerprint and isinstance(split, ImageTensors) and torch.is_tensor(split.images)}

    @property
    def input_size(self) -> tuple[int, int, int, int]:
        """(1, C, H, W) of one input, for :func:`models.profile`."""
        return (1, *self.train.images.shape[1:])


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int = 32,
                 limit_train: int | None = None, limit_test: int | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, synthetic_classes: int = 10,
                 skip_bad_images: bool = False, progress: bool = True, data_mode: str = "memory",
                 memory_budget: float | None = None, transforms: str = "tensor", train_split: str | None = None,
                 val_split: str | None = None) -> DataSplits:
    """Loads both splits of a data set as uint8 tensors.

    Args:
        name: ``cifar10-jpeg`` (CIFAR-10 as JPEG q75, shipped with the package: :mod:`kd.data.pack`),
            ``cifar10``, ``cifar100`` (torchvision download), ``imagefolder`` (``data_dir`` with ``train/`` and
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
        data_mode: ``memory`` (decode once into uint8 tensors, cached), ``stream`` (imagefolder only: keep the file
            list, decode per sample in DataLoader workers; mean and std from up to ``STATS_SAMPLE`` images) or
            ``auto`` (stream for an imagefolder whose decoded images, N·3·S·S bytes, exceed the memory budget).
        memory_budget: bytes for ``auto`` (default: half the available memory, shared by the training processes of
            this node, ``LOCAL_WORLD_SIZE`` under torchrun).
        transforms: ``tensor`` (the paths above: images resized to a square and augmented as whole batches) or
            ``timm`` (imagefolder and synthetic: images kept at their own size, transformed one by one with
            :class:`TransformPolicy`, mode ``timm``; the policy starts from the training images' mean and std).
        train_split, val_split: the imagefolder folders (default ``train``, and ``test`` else ``val``).

    Raises:
        ValueError: for an unknown name. DataUnavailableError: when the data cannot be read or downloaded, the
            splits' classes differ, a class has no images or there are fewer than 2 classes. BadImageError: an image
            that cannot be decoded (it is named).
    """
    if data_mode not in DATA_MODES:
        raise ValueError(f"unknown data mode {data_mode!r}; choose one of {', '.join(DATA_MODES)}")
    if transforms == "timm":
        return _timm_splits(name, data_dir, image_size, limit_train, limit_test, seed, synthetic_classes,
                            skip_bad_images, train_split, val_split)
    splits = ("train", "test")
    reason = ""
    if data_mode != "memory" and name == "imagefolder" and data_dir is not None:
        streamed, reason = _stream_splits(data_dir, data_mode, image_size, limit_train, limit_test, seed,
                                          skip_bad_images, memory_budget, (train_split, val_split))
        if streamed is not None:
            return streamed
    elif data_mode == "stream":
        raise ValueError(f"--data-mode stream reads image folders (--dataset imagefolder); --dataset {name} is held "
                         "in memory (--data-mode memory or auto)")
    if name == "cifar10-jpeg":
        if data_dir is not None:
            raise ValueError("--dataset cifar10-jpeg ships with the package and reads no --data-dir; for a folder of "
                             "images use --dataset imagefolder --data-dir DIR")
        pack, options = shipped_pack(name), {"cache_dir": cache_dir, "progress": progress}
        train = load_pack_split(pack, "train", image_size, limit_train, seed, **options)
        test = load_pack_split(pack, "test", image_size, limit_test, seed, classes=train.classes, **options)
    elif name in ("cifar10", "cifar100"):
        train = subset(load_cifar(name, data_dir, True, image_size), limit_train, seed)
        test = subset(load_cifar(name, data_dir, False, image_size), limit_test, seed)
    elif name == "imagefolder":
        if data_dir is None:
            raise DataUnavailableError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/*, "
                                       "DIR/test/<class>/*)")
        classes = imagefolder_classes(data_dir, train_split, val_split)  # both splits checked before decoding
        splits = split_names(data_dir, train_split, val_split)
        options = {"skip_bad_images": skip_bad_images, "progress": progress}
        train = load_imagefolder(data_dir, True, image_size, limit_train, seed, cache_dir, classes, **options,
                                 split=splits[0])
        test = load_imagefolder(data_dir, False, image_size, limit_test, seed, cache_dir, classes, **options,
                                split=splits[1])
    elif name == "synthetic":
        train = make_synthetic(limit_train or 512, synthetic_classes, image_size, seed=seed)
        test = make_synthetic(limit_test or 256, synthetic_classes, image_size, seed=seed + 10_000)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if len(train.classes) < 2:
        raise DataUnavailableError(f"the data has {len(train.classes)} class ({', '.join(train.classes)}); "
                                   "classification needs at least 2 classes")
    mean, std = channel_stats(train.images)
    return DataSplits(train, test, train.classes, mean, std, "memory", reason, splits=splits)


def _timm_splits(name: str, data_dir: str | os.PathLike | None, image_size: int, limit_train: int | None,
                 limit_test: int | None, seed: int, synthetic_classes: int, skip_bad_images: bool,
                 train_split: str | None, val_split: str | None) -> DataSplits:
    """Both splits for the timm transforms: image folders as file lists (each image decoded at its own size by the
    workers), synthetic images in memory; mean and std of (up to ``STATS_SAMPLE``) training images."""
    splits = ("train", "test")
    if name == "imagefolder":
        if data_dir is None:
            raise DataUnavailableError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/*, "
                                       "DIR/test/<class>/*)")
        if skip_bad_images:
            raise ValueError("--skip-bad-images needs the images decoded up front (--transforms tensor); with timm's "
                             "transforms an undecodable file stops the run with its name")
        classes = imagefolder_classes(data_dir, train_split, val_split)
        splits = split_names(data_dir, train_split, val_split)
        train = list_split(data_dir, True, image_size, limit_train, seed, classes, splits[0])
        test = list_split(data_dir, False, image_size, limit_test, seed, classes, splits[1])
        stats = stream_stats(train, seed).images
    elif name == "synthetic":
        train = make_synthetic(limit_train or 512, synthetic_classes, image_size, seed=seed)
        test = make_synthetic(limit_test or 256, synthetic_classes, image_size, seed=seed + 10_000)
        classes, stats = train.classes, train.images
    else:
        raise ValueError(f"timm's transforms read image folders (--dataset imagefolder); --dataset {name} comes as "
                         "32-px arrays: use --transforms tensor, or an image folder of its images")
    mean, std = channel_stats(stats)
    return DataSplits(train, test, classes, mean, std, "timm", "", resolve_policy(None, image_size, mean, std),
                      splits)


def _stream_splits(data_dir: str | os.PathLike, data_mode: str, image_size: int, limit_train: int | None,
                   limit_test: int | None, seed: int, skip_bad_images: bool, memory_budget: float | None,
                   names: tuple[str | None, str | None] = (None, None)) -> tuple[DataSplits | None, str]:
    """Both splits as file lists (stream mode), or None when ``auto`` finds that they fit in memory; and why.
    ``names``: the training and evaluation folders (None: the defaults)."""
    classes = imagefolder_classes(data_dir, *names)
    splits = split_names(data_dir, *names)
    train = list_split(data_dir, True, image_size, limit_train, seed, classes, splits[0])
    test = list_split(data_dir, False, image_size, limit_test, seed, classes, splits[1])
    reason = ""
    if data_mode == "auto":
        mode, reason = choose_data_mode(train.decoded_bytes + test.decoded_bytes, memory_budget,
                                        int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if mode == "memory":
            return None, reason
    if skip_bad_images:
        raise ValueError("--skip-bad-images needs the images decoded up front (--data-mode memory); in stream mode "
                         "an undecodable file stops the run with its name")
    mean, std = channel_stats(stream_stats(train, seed).images)
    return DataSplits(train, test, classes, mean, std, "stream", reason, splits=splits), reason


def make_loaders(data: DataSplits, batch_size: int, device: str | torch.device = "cpu", seed: int = 0,
                 eval_batch_size: int | None = None, workers: int = 4, pad: int = 4,
                 flip: str = "random", pad_mode: str = "zeros", cutout: int = 0
                 ) -> tuple[BatchIterator | StreamBatchIterator, BatchIterator | StreamBatchIterator]:
    """(training iterator: shuffled and augmented with a pad-``pad`` random crop and a ``flip``; test iterator: in
    order, unaugmented; ``pad_mode`` zeros or reflect; ``cutout``: the side of a square blanked in each training
    image, in memory only). Stream-mode splits (:class:`FileSplit`) get
    :class:`StreamBatchIterator` with ``workers`` DataLoader workers (random flips and zero padding only). Splits
    with a transform policy (mode ``timm``) get :class:`TransformBatchIterator`: the policy's RandomResizedCrop and
    flip replace ``pad`` and ``flip``, the policy's mean and std are ``data.mean`` and ``data.std``."""
    if cutout and (data.policy is not None or isinstance(data.train, FileSplit)):
        raise ValueError("--cutout needs the images in memory on the tensor path (--data-mode memory, --transforms "
                         "tensor)")
    if data.policy is not None:
        policy = replace(data.policy, mean=tuple(data.mean), std=tuple(data.std))
        options = {"policy": policy, "device": device, "workers": workers}
        return (TransformBatchIterator(data.train, batch_size, train=True, seed=seed, **options),
                TransformBatchIterator(data.test, eval_batch_size or 2 * batch_size, train=False, **options))
    if isinstance(data.train, FileSplit):
        if flip != "random":
            raise ValueError(f"the {flip} flip needs the images in memory (--data-mode memory); stream mode flips at "
                             "random")
        if pad_mode != "zeros":
            raise ValueError(f"{pad_mode} padding needs the images in memory (--data-mode memory); stream mode pads "
                             "with zeros")
        options = {"mean": data.mean, "std": data.std, "device": device, "workers": workers}
        return (StreamBatchIterator(data.train, batch_size, train=True, seed=seed, pad=pad, **options),
                StreamBatchIterator(data.test, eval_batch_size or 2 * batch_size, train=False, **options))
    train = BatchIterator(data.train, batch_size, train=True, mean=data.mean, std=data.std, device=device, seed=seed,
                          pad=pad, flip=flip, pad_mode=pad_mode, cutout=cutout)
    test = BatchIterator(data.test, eval_batch_size or 2 * batch_size, train=False, mean=data.mean, std=data.std,
                         device=device)
    return train, test
