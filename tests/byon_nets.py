"""A user's own networks, outside the model registry, for tests/test_bring_your_own.py (importable as
``byon_nets:SmallNet`` because pytest puts tests/ on the path; a subprocess gets it through PYTHONPATH)."""
from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """conv-BN-ReLU ×2 (the second grouped), global pooling, a hidden linear layer and the classifier."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Linear(2 * width, 16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, classes)
        return self.fc(torch.relu(self.hidden(self.features(x))))


def make_small_net(width: int = 8) -> SmallNet:
    """A factory, as users write them (``--teacher-arch byon_nets:make_small_net``)."""
    return SmallNet(width)
