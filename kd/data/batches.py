"""Batch iterator over in-memory uint8 tensors, augmenting whole batches on the target device.

Per epoch: shuffle indices, slice whole batches, then (training only) a pad-``pad`` random crop per image and a
horizontal flip, then normalise, then (with ``cutout``) set one square per image to zero, the mean colour. The flip is
``random`` (each image, each epoch, with probability 1/2) or ``alternating`` (airbench: each image gets one random flip
bit for the whole run, and every odd epoch mirrors all of them, so every image is seen mirrored and not mirrored in
turn). No PIL, no DataLoader workers: on 2 CPU cores the
model is the cost, not the data.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kd.data.sources import ImageTensors
from kd.distributed import per_rank_batch, shard


def channel_stats(images: torch.Tensor, chunk_elements: int = 1 << 22) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of (N, C, H, W) uint8 images, in [0, 1] units.

    ``mean_c = Σx / M`` and ``std_c = sqrt((Σx² − M·mean_c²) / (M − 1))`` over the ``M = N·H·W`` pixels of channel c,
    accumulated in float64 over chunks of about ``chunk_elements`` values, so the extra memory is one chunk
    (32 MiB at the default) instead of a float copy of the whole set (4× its uint8 size).
    """
    n, c, h, w = images.shape
    step = max(1, chunk_elements // max(1, c * h * w))
    total, squares = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, step):
        x = images[start:start + step].to(torch.float64).div_(255)
        total += x.sum((0, 2, 3))
        squares += x.square_().sum((0, 2, 3))
    m = n * h * w
    mean = total / max(m, 1)
    var = (squares - m * mean.square()) / max(m - 1, 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())


def draw_crop_flip(batch: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random pad-``pad`` crop offsets and flips for ``batch`` images: (B, 3) int64 rows ``(oy, ox, flip)``.

    Offsets are uniform in [0, 2·pad], flip is 1 with probability 1/2. Drawn on the CPU ``generator`` in a fixed
    order (all oy, all ox, all flips), so a saved generator state replays them exactly.
    """
    oy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = (torch.rand(batch, generator=generator) < 0.5).long()
    return torch.stack([oy, ox, flip], dim=1)


PAD_MODES = ("zeros", "reflect")


def apply_crop_flip(x: torch.Tensor, pad: int, params: torch.Tensor, mode: str = "zeros") -> torch.Tensor:
    """Pads ``x`` (B, C, H, W) by ``pad``, crops each image at its ``(oy, ox)`` and mirrors it where ``flip``.

    Args:
        x: (B, C, H, W) images of any dtype.
        pad: padding on each side.
        params: (B, 3) rows ``(oy, ox, flip)`` from :func:`draw_crop_flip` (or a teacher cache).
        mode: ``zeros`` (black borders) or ``reflect`` (the border mirrors the image without repeating its edge,
            as ``F.pad(mode="reflect")``: source row ``r`` < 0 reads ``-r``, ``r`` ≥ H reads ``2(H-1) - r``;
            needs ``pad`` < H and W).

    Returns:
        (B, C, H, W), each image shifted by its own offset and maybe mirrored.
    """
    b, _, h, w = x.shape
    dev = x.device
    params = params.to(dev)
    oy, ox, flip = params[:, 0], params[:, 1], params[:, 2].bool()
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H) rows of the padded image
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, W)
    if mode == "reflect":
        if pad >= min(h, w):
            raise ValueError(f"reflect padding needs pad < the image size, got pad {pad} for {h}x{w} images")
        padded, rows, cols = x, _reflect(rows - pad, h), _reflect(cols - pad, w)  # indices into x itself
    elif mode == "zeros":
        padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    else:
        raise ValueError(f"pad mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns right to left
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced indices come first
    return out.permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Source indices in [0, size) of positions ``index`` in [-size + 1, 2·size - 2], mirrored at both edges."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad-``pad`` random crop and horizontal flip of each image of ``x`` (B, C, H, W), drawn from ``generator``."""
    return apply_crop_flip(x, pad, draw_crop_flip(x.shape[0], pad, generator))


def draw_cutout(batch: int, size: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners of one ``size`` × ``size`` square per image: (B, 2) int64 rows ``(y, x)``, uniform in
    [0, H − size] × [0, W − size], so the square lies wholly inside the image (airbench96's cutout)."""
    y = torch.randint(0, height - size + 1, (batch,), generator=generator)
    x = torch.randint(0, width - size + 1, (batch,), generator=generator)
    return torch.stack([y, x], dim=1)


def apply_cutout(x: torch.Tensor, size: int, corners: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) with pixels ``corner ≤ (row, col) < corner + size`` of each image set to 0 in every channel
    (on normalised images: the mean colour). ``corners``: (B, 2) rows ``(y, x)`` from :func:`draw_cutout`."""
    _, _, h, w = x.shape
    corners = corners.to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - corners[:, :1]  # (B, H): row offset into the square
    cols = torch.arange(w, device=x.device)[None, :] - corners[:, 1:]  # (B, W)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (B, H, W)
    return x.masked_fill(inside[:, None], 0)


FLIPS = ("random", "alternating")


class SeededBatches:
    """What every training-batch source shares: normalisation by ``self.mean`` / ``self.std`` (1, C, 1, 1) and one
    CPU ``self.generator`` behind shuffles and augmentation, whose state is the iterator's resumable state."""

    mean: torch.Tensor
    std: torch.Tensor
    generator: torch.Generator
    epoch: int = 0  # epochs served so far (the alternating flip reads it)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → float32 ``(x / 255 − mean) / std``."""
        return (x.float().div_(255) - self.mean) / self.std

    def state_dict(self) -> dict[str, Any]:
        """The generator state and epoch count: restoring them replays the same shuffles and augmentations."""
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = int(state.get("epoch", 0))


class BatchIterator(SeededBatches):
    """Yields ``(x, y)`` batches: x (B, 3, H, W) float32 normalised, y (B,) int64, both on ``device``.

    Args:
        data: the split, as uint8 tensors; moved to ``device`` once.
        batch_size: images per batch.
        train: shuffle, augment and drop the last partial batch; False serves the split in order, unaugmented.
        mean, std: per-channel normalisation in [0, 1] units (use the training split's :func:`channel_stats`).
        device: where batches live and augmentation runs.
        pad: crop padding (0 disables the crop); flip comes with it.
        pad_mode: ``zeros`` or ``reflect`` (see :func:`apply_crop_flip`).
        flip: ``random`` or ``alternating`` (see the module docstring).
        cutout: side of the square :func:`apply_cutout` blanks in each training image (0 = none); drawn after the
            crop and flip from the same generator.
        seed: seeds the iterator's own generator (shuffle order and augmentation), saved by ``state_dict``.
        rank, world_size: data-parallel sharding (see :meth:`shard`); the default 0 of 1 serves whole batches.
    """

    def __init__(self, data: ImageTensors, batch_size: int, *, train: bool, mean: Sequence[float],
                 std: Sequence[float], device: str | torch.device = "cpu", pad: int = 4, seed: int = 0,
                 rank: int = 0, world_size: int = 1, flip: str = "random", pad_mode: str = "zeros",
                 cutout: int = 0) -> None:
        if flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {flip!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError("cannot iterate over an empty data split")
        if not 0 <= cutout <= min(data.images.shape[-2:]):
            raise ValueError(f"cutout must be in [0, {min(data.images.shape[-2:])}] (the image side), got {cutout}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # (N, 3, H, W) uint8
        self.labels = data.labels.to(self.device)  # (N,)
        self.classes = data.classes
        self.batch_size, self.train, self.pad, self.flip, self.pad_mode = batch_size, train, pad, flip, pad_mode
        self.cutout = cutout
        self.epoch = 0
        # alternating flip: each image's own flip bit, drawn from the seed alone (so it survives a resume unchanged)
        self._flip_bits = torch.rand(len(data), generator=torch.Generator().manual_seed(seed)) < 0.5
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = 0, 1
        if world_size > 1:
            self._set_shard(rank, world_size)

    def _set_shard(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if self.train:
            per_rank_batch(self.batch_size, world_size)  # raises when the global batch does not divide
        self.rank, self.world_size = rank, world_size

    def shard(self, rank: int, world_size: int) -> "BatchIterator":
        """This iterator as seen by ``rank`` of ``world_size`` data-parallel processes, sharing its images and its
        generator (so ``state_dict`` of either is the other's).

        Training: ``batch_size`` is the global batch. Every rank draws the same global shuffle and the same
        augmentation of each global batch from the same generator (which therefore stays identical on every rank
        and equal to a single process's), then keeps its contiguous ``batch_size / world_size`` slice: the ranks'
        slices together are exactly the single-process batch. Evaluation: rank ``r`` serves images ``r, r + world,
        ...`` in order (every image once over all ranks; sum the counts across ranks).
        """
        view = copy.copy(self)
        view._set_shard(rank, world_size)
        return view

    @property
    def num_samples(self) -> int:
        return int(self.labels.numel())

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        if self.train:
            return max(1, n // b)
        return -(-len(range(self.rank, n, self.world_size)) // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.train:
            order = torch.arange(self.rank, self.num_samples, self.world_size)  # this rank's share, in order
            for i in range(len(self)):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
                yield self.normalize(self.images[idx]), self.labels[idx]
            return
        order = torch.randperm(self.num_samples, generator=self.generator)
        epoch, self.epoch = self.epoch, self.epoch + 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]  # (B,) the global batch
            # drawn for the whole global batch on every rank: the generator advances as in one process
            params = draw_crop_flip(idx.shape[0], self.pad, self.generator) if self.pad > 0 else None
            if params is not None and self.flip == "alternating":
                params[:, 2] = (self._flip_bits[idx] ^ bool(epoch % 2)).long()
            h, w = self.images.shape[-2:]
            corners = draw_cutout(idx.shape[0], self.cutout, h, w, self.generator) if self.cutout else None
            if self.world_size > 1:
                idx = shard(idx, self.rank, self.world_size)  # (B / world,)
                params = shard(params, self.rank, self.world_size) if params is not None else None
                corners = shard(corners, self.rank, self.world_size) if corners is not None else None
            idx = idx.to(self.device)
            x = self.images[idx]
            if params is not None:
                x = apply_crop_flip(x, self.pad, params, self.pad_mode)
            x = self.normalize(x)
            yield (apply_cutout(x, self.cutout, corners) if corners is not None else x), self.labels[idx]

