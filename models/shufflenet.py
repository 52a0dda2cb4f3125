"""ShuffleNetV2 for 32×32 inputs: torchvision's ShuffleNetV2 with a CIFAR stem.

torchvision's ImageNet stem (3×3 stride-2 conv + stride-2 max-pool) shrinks a 32×32 image to 8×8 before the first
stage, which is why the lab's ShuffleNet scored 68 %. Here the stem is a 3×3 stride-1 conv and the max-pool is removed,
so the stages see 32 → 16 → 8 → 4.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.shufflenetv2 import ShuffleNetV2

from models.registry import register_model

STAGE_CHANNELS = {  # width_mult → channels of the stem, the three stages and conv5
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}


@register_model
def shufflenet_v2(num_classes: int = 10, width_mult: float = 1.0) -> ShuffleNetV2:
    """CIFAR ShuffleNetV2 (Ma et al., 2018); ``width_mult`` in {0.5, 1.0, 1.5, 2.0}."""
    if width_mult not in STAGE_CHANNELS:
        raise ValueError(f"width_mult must be one of {sorted(STAGE_CHANNELS)}, got {width_mult}")
    channels = STAGE_CHANNELS[width_mult]
    model = ShuffleNetV2([4, 8, 4], channels, num_classes=num_classes)
    model.conv1 = nn.Sequential(
        nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(channels[0]),
        nn.ReLU(inplace=True),
    )
    model.maxpool = nn.Identity()
    return model
