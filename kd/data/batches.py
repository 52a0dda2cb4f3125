"""Batch iterator over in-memory uint8 tensors, augmenting whole batches on the target device.

Per epoch: shuffle indices, slice whole batches, then (training only) pad-4 random crop per image and horizontal flip,
then normalise. No PIL, no DataLoader workers: on 2 CPU cores the model is the cost, not the data.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kd.data.sources import ImageTensors


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) uint8 images, in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N·H·W)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def draw_crop_flip(batch: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random pad-``pad`` crop offsets and flips for ``batch`` images: (B, 3) int64 rows ``(oy, ox, flip)``.

    Offsets are uniform in [0, 2·pad], flip is 1 with probability 1/2. Drawn on the CPU ``generator`` in a fixed
    order (all oy, all ox, all flips), so a saved generator state replays them exactly.
    """
    oy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = (torch.rand(batch, generator=generator) < 0.5).long()
    return torch.stack([oy, ox, flip], dim=1)


def apply_crop_flip(x: torch.Tensor, pad: int, params: torch.Tensor) -> torch.Tensor:
    """Zero-pads ``x`` (B, C, H, W) by ``pad``, crops each image at its ``(oy, ox)`` and mirrors it where ``flip``.

    Args:
        x: (B, C, H, W) images of any dtype.
        pad: zero padding on each side.
        params: (B, 3) rows ``(oy, ox, flip)`` from :func:`draw_crop_flip` (or a teacher cache).

    Returns:
        (B, C, H, W), each image shifted by its own offset and maybe mirrored.
    """
    b, _, h, w = x.shape
    dev = x.device
    params = params.to(dev)
    oy, ox, flip = params[:, 0], params[:, 1], params[:, 2].bool()
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns right to left
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced indices come first
    return out.permute(0, 3, 1, 2)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Pad-``pad`` random crop and horizontal flip of each image of ``x`` (B, C, H, W), drawn from ``generator``."""
    return apply_crop_flip(x, pad, draw_crop_flip(x.shape[0], pad, generator))


class BatchIterator:
    """Yields ``(x, y)`` batches: x (B, 3, H, W) float32 normalised, y (B,) int64, both on ``device``.

    Args:
        data: the split, as uint8 tensors; moved to ``device`` once.
        batch_size: images per batch.
        train: shuffle, augment and drop the last partial batch; False serves the split in order, unaugmented.
        mean, std: per-channel normalisation in [0, 1] units (use the training split's :func:`channel_stats`).
        device: where batches live and augmentation runs.
        pad: crop padding (0 disables the crop); flip comes with it.
        seed: seeds the iterator's own generator (shuffle order and augmentation), saved by ``state_dict``.
    """

    def __init__(self, data: ImageTensors, batch_size: int, *, train: bool, mean: Sequence[float],
                 std: Sequence[float], device: str | torch.device = "cpu", pad: int = 4, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data) == 0:
            raise ValueError("cannot iterate over an empty data split")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)  # (N, 3, H, W) uint8
        self.labels = data.labels.to(self.device)  # (N,)
        self.classes = data.classes
        self.batch_size, self.train, self.pad = batch_size, train, pad
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_samples(self) -> int:
        return int(self.labels.numel())

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return max(1, n // b) if self.train else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_samples
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
            x, y = self.images[idx], self.labels[idx]
            if self.train and self.pad > 0:
                x = random_crop_flip(x, self.pad, self.generator)
            yield self.normalize(x), y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → float32 ``(x / 255 − mean) / std``."""
        return (x.float().div_(255) - self.mean) / self.std

    def state_dict(self) -> dict[str, Any]:
        """The generator state: restoring it replays the same shuffles and augmentations."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
