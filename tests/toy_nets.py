"""A toy conv net the training-piece tests share: conv → BatchNorm → ReLU → global average → linear (3 classes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyNet(nn.Module):
    """(B, 3, H, W) → (B, 3) logits through one conv, one BatchNorm and one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))
