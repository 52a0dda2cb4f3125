"""The lab's wide CNN teacher, with every hand-compression move exposed as an argument.

Layout (defaults give the lab's teacher: 64-128-256-256 channels, 3×3 kernels)::

    x (B, 3, H, W)
    conv1..convN: Conv2d(k, padding k//2) → BatchNorm2d → ReLU [→ MaxPool2d(2) after conv2 and conv4]
    AdaptiveAvgPool2d(head_pool) → flatten           # (B, C_N · head_pool²)
    fc: Linear → ReLU → Dropout(dropout)              # omitted when hidden = 0
    classifier: Linear → (B, num_classes)

The lab's moves are configurations: fewer channels (``widths``), removed conv layers (fewer ``widths``), 1×1 channel
compression (``kernel_sizes`` of 1), fewer FC nodes (``hidden``), another dropout rate (``dropout``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from models.registry import register_model


class ConvBlock(nn.Sequential):
    """Conv2d(k×k, same padding, no bias) → BatchNorm2d → ReLU, optionally → MaxPool2d(2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, pool: bool = False) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("conv", nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)),
            ("bn", nn.BatchNorm2d(out_ch)),
            ("relu", nn.ReLU(inplace=True)),
        ]
        if pool:
            layers.append(("pool", nn.MaxPool2d(2)))
        super().__init__(OrderedDict(layers))


class WideCNN(nn.Module):
    """Plain Conv-BN-ReLU stack with a hidden FC layer (the Lab5 teacher).

    Args:
        num_classes: classifier outputs.
        widths: output channels of conv1..convN; its length is the number of conv blocks.
        kernel_sizes: one odd kernel size for all blocks, or one per block (1 = 1×1 channel compression).
        pool_after: 0-based indices of the blocks followed by MaxPool2d(2); indices ≥ N are ignored.
        hidden: units of the hidden FC layer; 0 removes it (features go straight to the classifier).
        dropout: dropout rate after the hidden FC layer (or before the classifier when hidden = 0).
        head_pool: spatial size of the adaptive average pool before flattening (1 = global average pooling).
        in_chans: input channels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 128, 256, 256),
        kernel_sizes: int | Sequence[int] = 3,
        pool_after: Sequence[int] = (1, 3),
        hidden: int = 512,
        dropout: float = 0.5,
        head_pool: int = 1,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        kernels = [int(kernel_sizes)] * len(widths) if isinstance(kernel_sizes, int) else [int(k) for k in kernel_sizes]
        _check_args(widths, kernels, hidden, dropout, head_pool)
        blocks, in_ch = OrderedDict(), in_chans
        for i, (w, k) in enumerate(zip(widths, kernels)):
            blocks[f"conv{i + 1}"] = ConvBlock(in_ch, w, k, pool=i in set(pool_after))
            in_ch = w
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(head_pool)
        self.num_features = in_ch * head_pool * head_pool
        if hidden > 0:
            self.fc = nn.Sequential(nn.Linear(self.num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
            head_in = hidden
        else:
            self.fc = nn.Dropout(dropout)
            head_in = self.num_features
        self.classifier = nn.Linear(head_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_N, H/4, W/4) with the default two pools."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_N, h, w) → logits (B, num_classes)."""
        x = torch.flatten(self.pool(x), 1)  # (B, C_N · head_pool²)
        return self.classifier(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier


def _check_args(widths: list[int], kernels: list[int], hidden: int, dropout: float, head_pool: int) -> None:
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be a non-empty list of positive channel counts, got {widths}")
    if len(kernels) != len(widths):
        raise ValueError(f"kernel_sizes has {len(kernels)} entries but widths has {len(widths)}; give one per block")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"kernel_sizes must be odd and positive (1, 3, 5 ...), got {kernels}")
    if hidden < 0:
        raise ValueError(f"hidden must be >= 0 (0 removes the hidden FC layer), got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if head_pool < 1:
        raise ValueError(f"head_pool must be >= 1, got {head_pool}")


@register_model
def wide_cnn(num_classes: int = 10, **kwargs) -> WideCNN:
    """The lab's teacher: 64-128-256-256 channels, 3×3 kernels, hidden FC 512, dropout 0.5."""
    return WideCNN(num_classes=num_classes, **kwargs)
