"""Test-time augmentation: the logits of a model averaged over mirrored and shifted views of each image.

``flip``: ``(f(x) + f(mirror(x))) / 2``. ``flip-translate`` (airbench94's level 2): half that, plus half the mean of
the same over the two views shifted by one pixel up-left and down-right (reflect padding)::

    m(v) = (f(v) + f(mirror(v))) / 2
    logits = m(x) / 2 + (m(shift(x, −1, −1)) + m(shift(x, +1, +1))) / 4

6 forward passes per image. A single view stays the figure reported for a student (it is the inference cost); a
teacher's TTA accuracy is reported beside its single-view one (the teacher cache and live distillation use single
views).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA_MODES = ("none", "flip", "flip-translate")


def _mirror_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(-1)).float())


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits (B, K) of ``model`` on ``x`` (B, C, H, W) with test-time augmentation ``mode`` (:data:`TTA_MODES`),
    in fp32."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    if mode == "none":
        return model(x).float()
    logits = _mirror_mean(model, x)
    if mode == "flip":
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]  # up-left and down-right by one pixel
    return 0.5 * logits + 0.25 * sum(_mirror_mean(model, v.contiguous(memory_format=_format(x))) for v in shifted)


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4 else \
        torch.contiguous_format
