"""Per-image transforms the ecosystem's way, for images other than 32-px sets: timm's data configuration and
``create_transform`` in DataLoader workers.

Training: RandomResizedCrop (``scale`` of the area, aspect 3/4–4/3) to S × S + horizontal flip (+ ``auto_augment``,
timm's ``--aa``, e.g. ``rand-m9-mstd0.5``). Evaluation: the shorter side resized to ``floor(S / crop_pct)``, then the
centre S × S crop, so the aspect ratio is kept and ``crop_pct`` of the shorter side is seen. Both end in uint8
(3, S, S) tensors (timm's prefetcher form); the iterator normalises whole batches on the device as the in-memory
path does, so at 32 px with ``crop_pct`` 1 a folder of 32 × 32 images gives the same evaluation pixels either way.

The policy's numbers come from the network when it has a timm ``pretrained_cfg`` (mean, std, interpolation,
crop_pct: :func:`timm.data.resolve_model_data_config`), else from :data:`DEFAULTS` and the training images' mean and
std. The input size stays the run's image size (its FLOPs budget depends on it).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kd.data.stream import StreamBatchIterator

TRANSFORMS = ("auto", "tensor", "timm")
LAB_IMAGE_SIZE = 32  # the size of the sets the in-memory path was measured fastest on (CIFAR)
# What a network without a timm pretrained_cfg gets: the whole shorter side (the training crops reach the whole
# image, and at 32 px the evaluation images equal the in-memory path's), bilinear as the in-memory resize.
DEFAULTS = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
DEFAULT_SCALE = (0.08, 1.0)  # timm train.py's --scale


@dataclass(frozen=True)
class TransformPolicy:
    """How images become network inputs on the timm path.

    Attributes:
        image_size: S, the side of the square inputs (3, S, S).
        mean, std: per-channel normalisation in [0, 1] units: ``(x / 255 − mean) / std``.
        interpolation: of every resize (``bilinear``, ``bicubic`` ...).
        crop_pct: evaluation sees the centre ``crop_pct`` of the shorter side, resized to S.
        scale: RandomResizedCrop's range of the crop's area, as fractions of the image.
        auto_augment: timm's policy string (``rand-m9-mstd0.5``, ``augmix-m5``, ``v0``), or None.
        source: where mean, std, interpolation and crop_pct came from.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = DEFAULTS["interpolation"]
    crop_pct: float = DEFAULTS["crop_pct"]
    scale: tuple[float, float] = DEFAULT_SCALE
    auto_augment: str | None = None
    source: str = "defaults (the training images' mean/std, bilinear, crop_pct 1)"

    def train_transform(self) -> Any:
        """PIL image → (3, S, S) uint8: RandomResizedCrop + flip (+ auto-augment), timm's ``create_transform``."""
        from timm.data import create_transform

        return create_transform(self.image_size, is_training=True, scale=self.scale, hflip=0.5, color_jitter=None,
                                auto_augment=self.auto_augment, interpolation=self.interpolation, mean=self.mean,
                                std=self.std, use_prefetcher=True)

    def eval_transform(self) -> Any:
        """PIL image → (3, S, S) uint8: shorter side to ``floor(S / crop_pct)``, centre crop S × S."""
        from timm.data import create_transform

        return create_transform(self.image_size, is_training=False, interpolation=self.interpolation,
                                mean=self.mean, std=self.std, crop_pct=self.crop_pct, crop_mode="center",
                                use_prefetcher=True)

    def describe(self) -> dict[str, Any]:
        """What ``report.json`` records: the numbers and both transforms as timm prints them."""
        return {**asdict(self), "train_transform": _one_line(self.train_transform()),
                "eval_transform": _one_line(self.eval_transform())}


def _one_line(transform: Any) -> str:
    return " ".join(str(transform).split())


def resolve_policy(model: nn.Module | None, image_size: int, mean: Sequence[float], std: Sequence[float], *,
                   crop_pct: float | None = None, scale: Sequence[float] | None = None,
                   auto_augment: str | None = None) -> TransformPolicy:
    """The policy for ``model`` at ``image_size``: a timm network's own mean, std, interpolation and crop_pct
    (:func:`timm.data.resolve_model_data_config` of its ``pretrained_cfg``), else :data:`DEFAULTS` with ``mean`` and
    ``std`` (the training images'). ``crop_pct``, ``scale`` and ``auto_augment`` override when given.

    Raises:
        ValueError: an auto-augment policy timm cannot build (its message names it).
    """
    own = getattr(model, "pretrained_cfg", None) if model is not None else None
    if own:
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(model)
        policy = TransformPolicy(image_size, tuple(float(v) for v in config["mean"]),
                                 tuple(float(v) for v in config["std"]), config["interpolation"],
                                 float(config["crop_pct"]), source=f"pretrained_cfg of {own.get('architecture', '?')}")
    else:
        policy = TransformPolicy(image_size, tuple(mean), tuple(std))
    policy = replace(policy, scale=tuple(scale) if scale is not None else policy.scale, auto_augment=auto_augment,
                     crop_pct=crop_pct if crop_pct is not None else policy.crop_pct)
    try:
        policy.train_transform()
    except Exception as err:  # noqa: BLE001 (timm fails on a bad policy string with assert, KeyError or ValueError)
        raise ValueError(f"--aa {auto_augment!r}: timm cannot build this auto-augment policy ({type(err).__name__}: "
                         f"{err}); e.g. rand-m9-mstd0.5, augmix-m5, v0 or original") from None
    return policy


def use_timm_transforms(choice: str, image_size: int, model: nn.Module | None = None,
                        dataset: str = "imagefolder") -> bool:
    """``--transforms``: ``timm`` or ``tensor`` as named; ``auto`` takes timm's for an image folder (photos of their
    own sizes) at a size other than 32 px or feeding a timm network (one with a ``pretrained_cfg``), and the
    in-memory tensor path otherwise (CIFAR's 32-px arrays, synthetic squares)."""
    if choice != "auto":
        return choice == "timm"
    if dataset != "imagefolder":
        return False
    return image_size != LAB_IMAGE_SIZE or bool(getattr(model, "pretrained_cfg", None))


def pil_image(source: Any, index: int) -> Any:
    """Image ``index`` of ``source`` as an RGB PIL image at its own size: a file of a
    :class:`kd.data.FileSplit` (16-bit grayscale scaled to 8 bits as the in-memory path does), or a (3, H, W) uint8
    image of :class:`kd.data.ImageTensors`."""
    from PIL import Image

    from kd.data.sources import _eight_bit

    if hasattr(source, "files"):
        with Image.open(source.files[index]) as img:
            return _eight_bit(img).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(source.images[index].permute(1, 2, 0).numpy()))


class TransformedImages(Dataset):
    """Sample i: ``transform(pil_image(source, i))``, a (3, S, S) uint8 tensor, computed in the worker process."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        from kd.data.sources import BadImageError

        try:
            image = pil_image(self.source, i)
        except Exception as err:  # noqa: BLE001 (PIL fails in many ways; the file is named)
            name = os.fspath(self.source.files[i]) if hasattr(self.source, "files") else f"image {i}"
            raise BadImageError(f"cannot decode image {name!r} ({type(err).__name__}); fix or remove the file") \
                from None
        return torch.as_tensor(self.transform(image))  # (3, S, S) uint8


class TransformBatchIterator(StreamBatchIterator):
    """Yields ``(x, y)`` batches like :class:`kd.data.BatchIterator` (x (B, 3, S, S) float32 normalised by
    ``policy.mean`` / ``policy.std`` on ``device``, y (B,) int64), each image transformed by the policy's training
    (``train``) or evaluation transform in ``workers`` DataLoader processes.

    The shuffle comes from the iterator's generator (resumed exactly, sharded as the other iterators); the random
    crops and flips come from the workers' own generators, so a resumed run draws other crops than an uninterrupted
    one would.

    Args:
        source: a :class:`kd.data.FileSplit` (files decoded at their own size) or :class:`kd.data.ImageTensors`.
        policy: the transforms and normalisation (:func:`resolve_policy`).
        Others as :class:`kd.data.StreamBatchIterator`.
    """

    def __init__(self, source: Any, batch_size: int, *, train: bool, policy: TransformPolicy,
                 device: str | torch.device = "cpu", seed: int = 0, workers: int = 4, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(source, batch_size, train=train, mean=policy.mean, std=policy.std, device=device, pad=0,
                         seed=seed, workers=workers, rank=rank, world_size=world_size)
        self.policy = policy

    def _dataset(self) -> Dataset:
        transform = self.policy.train_transform() if self.train else self.policy.eval_transform()
        return TransformedImages(self.split, transform)


def subset_source(source: Any, limit: int, seed: int = 0) -> Any:
    """A class-balanced subset of ``limit`` images of a :class:`kd.data.FileSplit` (still files, nothing decoded) or
    of :class:`kd.data.ImageTensors`; ``source`` itself when it holds no more."""
    from kd.data.sources import balanced_indices, subset
    from kd.data.stream import FileSplit

    if not isinstance(source, FileSplit):
        return subset(source, limit, seed)
    if limit >= len(source):
        return source
    keep = balanced_indices(source.labels, limit, seed)
    return FileSplit([source.files[i] for i in keep.tolist()], source.labels[keep], source.classes, source.image_size)

