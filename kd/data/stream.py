"""Streaming data path for image folders larger than memory: files decoded per sample in DataLoader workers.

Only the file list stays in memory. Workers decode and resize each image to uint8 (the very function the in-memory
path caches with, so both paths see the same pixels); crop, flip and normalisation still run batched on the device
(:func:`kd.data.apply_crop_flip`). Shuffle and augmentation are drawn from the iterator's own generator in the order
:class:`kd.data.BatchIterator` draws them, so for the same images, seed and normalisation the two paths serve the
same batches, shard the same way under torchrun and resume the same way.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kd.data.batches import SeededBatches, apply_crop_flip, draw_crop_flip
from kd.data.fingerprint import split_fingerprint
from kd.data.sources import (
    BadImageError, ImageTensors, _decode, _split_dir, _try_decode, balanced_indices, list_image_files,
)
from kd.distributed import per_rank_batch, shard

DATA_MODES = ("auto", "memory", "stream")
STATS_SAMPLE = 5000  # images (class-balanced) whose pixels give a streamed split's mean and std


class LazyImages:
    """The (N, 3, S, S) uint8 images of a file list, decoded only when indexed (``images[idx]`` → a tensor)."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files, self.size = list(files), size

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), 3, self.size, self.size))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Any) -> torch.Tensor:
        picked = [self.files[i] for i in torch.arange(len(self.files))[index].reshape(-1).tolist()]
        return decode_files(picked, self.size)

    def to(self, device: str | torch.device) -> torch.Tensor:
        """All images decoded, on ``device`` (what an in-memory iterator over a small streamed split asks for)."""
        return self[:].to(device)


@dataclass
class FileSplit:
    """A split kept as files: ``files`` (N paths), ``labels`` (N,) int64, ``classes``, ``image_size``.

    Looks like :class:`kd.data.ImageTensors` where recipes need it (``len``, ``labels``, ``images.shape``,
    ``images[idx]`` decodes just those images, so :func:`kd.data.subset` works)."""

    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    image_size: int
    skipped: list[str] = field(default_factory=list)
    fingerprint: dict[str, str] = field(default_factory=dict)  # as ImageTensors.fingerprint

    def __len__(self) -> int:
        return len(self.files)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self.files, self.image_size)

    @property
    def decoded_bytes(self) -> int:
        """What the split would take decoded in memory: N·3·S·S."""
        return len(self.files) * 3 * self.image_size ** 2


def decode_files(files: Sequence[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 of ``files``, decoded in threads; a file that cannot be decoded is named."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        arrays = list(pool.map(lambda f: _try_decode(f, size), files))
    for f, a in zip(files, arrays):
        if isinstance(a, str):
            raise BadImageError(f"cannot decode image {str(f)!r} ({a}); fix or remove the file")
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def list_split(data_dir: str | os.PathLike, train: bool, image_size: int, limit: int | None, seed: int,
               classes: list[str] | None, split: str | None = None) -> FileSplit:
    """The files of ``data_dir/train`` (or ``test``/``val``, or the folder ``split`` names), class-balanced to
    ``limit`` exactly as :func:`kd.data.load_imagefolder` picks them, nothing decoded."""
    split_dir = _split_dir(Path(data_dir), train, split)
    files, labels, classes = list_image_files(split_dir, classes)
    fingerprint = split_fingerprint(split_dir, files, labels, classes)
    label_t = torch.tensor(labels, dtype=torch.int64)
    if limit is not None and limit < len(files):
        keep = balanced_indices(label_t, limit, seed).tolist()
        files, label_t = [files[i] for i in keep], label_t[keep]
    return FileSplit(files, label_t, classes, image_size, fingerprint=fingerprint)


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_data_mode(decoded_bytes: int, budget_bytes: float | None = None,
                     processes_per_node: int = 1) -> tuple[str, str]:
    """``("memory" | "stream", why)``: memory when the decoded images fit the budget — ``budget_bytes``, default
    half the available memory — shared by the ``processes_per_node`` training processes, each of which holds them."""
    budget = budget_bytes if budget_bytes is not None else available_memory() / 2
    share = budget / max(processes_per_node, 1)
    mode = "memory" if decoded_bytes <= share else "stream"
    per = f" per process ({processes_per_node} on this node)" if processes_per_node > 1 else ""
    return mode, (f"the decoded images take {decoded_bytes / 2**30:.2f} GiB, the memory budget is "
                  f"{share / 2**30:.2f} GiB{per}")


class _Files(Dataset):
    """Sample i: the decoded (3, S, S) uint8 image of file i (decoded in the worker process)."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            image = _decode(self.files[i], self.size)
        except Exception as err:  # noqa: BLE001 (PIL fails in many ways; the file is named)
            raise BadImageError(f"cannot decode image {str(self.files[i])!r} ({type(err).__name__}); fix or remove "
                                "the file") from None
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # (3, S, S); PIL's array is read-only


class _Batches:
    """The batch sampler: this epoch's index lists, set by the iterator before each epoch (workers persist)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamBatchIterator(SeededBatches):
    """Yields ``(x, y)`` batches like :class:`kd.data.BatchIterator` (x (B, 3, H, W) float32 normalised on
    ``device``, y (B,) int64), reading ``split``'s files through a DataLoader with ``workers`` processes.

    Args mirror :class:`kd.data.BatchIterator`; ``workers``: DataLoader worker processes (0: decode in this process).
    """

    def __init__(self, split: FileSplit, batch_size: int, *, train: bool, mean: Sequence[float],
                 std: Sequence[float], device: str | torch.device = "cpu", pad: int = 4, seed: int = 0,
                 workers: int = 4, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(split) == 0:
            raise ValueError("cannot iterate over an empty data split")
        self.split, self.device = split, torch.device(device)
        self.labels, self.classes = split.labels, split.classes
        self.batch_size, self.train, self.pad, self.workers = batch_size, train, pad, workers
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self._sampler, self._loader = _Batches(), None
        self.rank, self.world_size = 0, 1
        if world_size > 1:
            self._set_shard(rank, world_size)

    @property
    def images(self) -> LazyImages:
        return self.split.images

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def _set_shard(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if self.train:
            per_rank_batch(self.batch_size, world_size)
        self.rank, self.world_size = rank, world_size

    def shard(self, rank: int, world_size: int) -> "StreamBatchIterator":
        """This iterator for ``rank`` of ``world_size`` processes, sharing the generator (see
        :meth:`kd.data.BatchIterator.shard`); the batch sampler hands each rank's workers only its own files."""
        view = copy.copy(self)
        view._sampler, view._loader = _Batches(), None
        view._set_shard(rank, world_size)
        return view

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        if self.train:
            return max(1, n // b)
        return -(-len(range(self.rank, n, self.world_size)) // b)

    def _epoch_batches(self) -> list[torch.Tensor]:
        """This rank's index batches of one epoch (training: the global shuffle drawn here, first)."""
        if not self.train:
            order = torch.arange(self.rank, self.num_samples, self.world_size)
        else:
            order = torch.randperm(self.num_samples, generator=self.generator)
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]

    def _dataset(self) -> Dataset:
        """Sample i: the (3, S, S) uint8 image of file i (crop and flip come later, on the device)."""
        return _Files(self.split.files, self.split.image_size)

    def _augment(self, x: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
        """The training crop and flip of this rank's share ``x`` of the global batch ``gidx``."""
        if not (self.train and self.pad > 0):
            return x
        # drawn for the whole global batch, in the order BatchIterator draws: the same generator state
        params = draw_crop_flip(gidx.shape[0], self.pad, self.generator)
        if self.world_size > 1:
            params = shard(params, self.rank, self.world_size)
        return apply_crop_flip(x, self.pad, params)

    def _loader_for(self, batches: list[list[int]]) -> DataLoader:
        self._sampler.batches = batches
        if self._loader is None:
            self._loader = DataLoader(self._dataset(), batch_sampler=self._sampler,
                                      num_workers=self.workers, persistent_workers=self.workers > 0,
                                      pin_memory=self.device.type == "cuda",
                                      prefetch_factor=4 if self.workers > 0 else None,
                                      # its workers' seeds from a generator of its own: the global random stream
                                      # (dropout) stays as in memory mode
                                      generator=torch.Generator().manual_seed(0))
        return self._loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        global_batches = self._epoch_batches()
        mine = [shard(b, self.rank, self.world_size) if self.train and self.world_size > 1 else b
                for b in global_batches]
        for gidx, idx, x in zip(global_batches, mine, self._loader_for([b.tolist() for b in mine])):
            x = self._augment(x.to(self.device, non_blocking=True), gidx)  # (b, 3, H, W) uint8
            yield self.normalize(x), self.labels[idx].to(self.device)

    def __getstate__(self) -> dict[str, Any]:  # the DataLoader (and its workers) is not copied or pickled
        state = dict(self.__dict__)
        state["_loader"] = None
        return state


def stream_stats(split: FileSplit, seed: int = 0, sample: int = STATS_SAMPLE) -> ImageTensors:
    """A class-balanced sample of up to ``sample`` decoded training images, for the mean and std of a streamed
    split (all of them when the split is no larger: then the statistics equal memory mode's)."""
    idx = balanced_indices(split.labels, sample, seed) if sample < len(split) else torch.arange(len(split))
    return ImageTensors(split.images[idx], split.labels[idx], split.classes)
