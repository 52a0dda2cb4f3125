"""The lab's wide CNN teacher, with every hand-compression move exposed as an argument.

Layout (defaults give the lab's teacher: 64-128-256-256 channels, 3×3 kernels)::

    x (B, 3, H, W)
    [stem: Conv2d(2×2, no padding, bias) → act]       # only when stem > 0: (B, stem, H-1, W-1), see models.init
    conv1..convN: Conv2d(k, padding k//2) → BatchNorm2d → act [→ MaxPool2d(2) after conv2 and conv4]
                  (pool_first: Conv2d → MaxPool2d(2) → BatchNorm2d → act, the same function on 4× fewer pixels)
    AdaptiveAvgPool2d(head_pool) or AdaptiveMaxPool2d → flatten   # (B, C_N · head_pool²)
                  (max3: MaxPool2d(3) first, airbench94's: on a 4×4 map the top-left 3×3 window only)
    fc: Linear → ReLU → Dropout(dropout)              # omitted when hidden = 0
    classifier: Linear (bias optional) → (B, num_classes), times logit_scale

The lab's moves are configurations: fewer channels (``widths``), removed conv layers (fewer ``widths``), 1×1 channel
compression (``kernel_sizes`` of 1), fewer FC nodes (``hidden``), another dropout rate (``dropout``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model


ACTIVATIONS = ("relu", "gelu")
HEAD_POOLS = ("avg", "max", "max3")


def make_activation(name: str) -> nn.Module:
    """``relu`` (in place) or ``gelu``."""
    return nn.ReLU(inplace=True) if name == "relu" else nn.GELU()


class ConvBlock(nn.Sequential):
    """Conv2d(k×k, same padding, no bias) → BatchNorm2d → activation, optionally → MaxPool2d(2).

    With ``pool_first`` the pool comes straight after the conv (airbench's order): max-pooling commutes with the
    per-channel monotone BatchNorm (positive scale) and activation, so the block computes nearly the same function
    while BatchNorm and the activation run on a quarter of the pixels.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, pool: bool = False, pool_first: bool = False,
                 activation: str = "relu", bn_eps: float = 1e-5) -> None:
        conv = ("conv", nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False))
        rest: list[tuple[str, nn.Module]] = [("bn", nn.BatchNorm2d(out_ch, eps=bn_eps)),
                                             (activation, make_activation(activation))]
        if pool and pool_first:
            layers = [conv, ("pool", nn.MaxPool2d(2)), *rest]
        else:
            layers = [conv, *rest] + ([("pool", nn.MaxPool2d(2))] if pool else [])
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
        head_pool: spatial size of the adaptive pool before flattening (1 = global pooling).
        in_chans: input channels.
        stem: output channels of a 2×2 unpadded conv (with bias) and activation before conv1, meant to be
            initialised as a patch-whitening layer (:func:`models.init.whiten_first_conv`, 2·C·2·2 = 24 channels
            for RGB); 0 = no stem.
        pool_first: pool right after the conv in pooled blocks (see :class:`ConvBlock`).
        activation: ``relu`` or ``gelu``, after every BatchNorm (and the stem).
        head_pool_mode: ``avg`` (adaptive average pool) or ``max`` (adaptive max pool) before flattening;
            ``max3``: a MaxPool2d(3) (stride 3) before the adaptive max pool, as airbench94 pools its final 4×4 map
            (the maximum over the top-left 3×3 positions; a map smaller than 3 is pooled whole).
        logit_scale: the logits are multiplied by it (airbench's 1/9 keeps the head's updates small at a large
            learning rate).
        bn_eps: the BatchNorm layers' eps (airbench: 1e-12); recorded with the model's arguments, so a saved model
            computes the same after loading.
        classifier_bias: whether the classifier has a bias (airbench's has none).
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
        stem: int = 0,
        pool_first: bool = False,
        activation: str = "relu",
        head_pool_mode: str = "avg",
        logit_scale: float = 1.0,
        bn_eps: float = 1e-5,
        classifier_bias: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        kernels = [int(kernel_sizes)] * len(widths) if isinstance(kernel_sizes, int) else [int(k) for k in kernel_sizes]
        _check_args(widths, kernels, hidden, dropout, head_pool)
        _check_style(stem, activation, head_pool_mode, logit_scale)
        if not bn_eps > 0:
            raise ValueError(f"bn_eps must be > 0, got {bn_eps}")
        blocks, in_ch = OrderedDict(), in_chans
        if stem > 0:
            blocks["stem"] = nn.Sequential(OrderedDict([("conv", nn.Conv2d(in_ch, stem, 2, bias=True)),
                                                        (activation, make_activation(activation))]))
            in_ch = stem
        for i, (w, k) in enumerate(zip(widths, kernels)):
            blocks[f"conv{i + 1}"] = ConvBlock(in_ch, w, k, pool=i in set(pool_after), pool_first=pool_first,
                                               activation=activation, bn_eps=bn_eps)
            in_ch = w
        self.features = nn.Sequential(blocks)
        self.logit_scale = float(logit_scale)
        self.pool = _head_pool(head_pool_mode, head_pool)
        self.num_features = in_ch * head_pool * head_pool
        if hidden > 0:
            self.fc = nn.Sequential(nn.Linear(self.num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
            head_in = hidden
        else:
            self.fc = nn.Dropout(dropout)
            head_in = self.num_features
        self.classifier = nn.Linear(head_in, num_classes, bias=classifier_bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_N, H/4, W/4) with the default two pools."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_N, h, w) → logits (B, num_classes)."""
        x = torch.flatten(self.pool(x), 1)  # (B, C_N · head_pool²)
        logits = self.classifier(self.fc(x))
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier


class CornerMaxPool(nn.Module):
    """MaxPool2d(3) with stride 3 on maps of at least 3×3 (on airbench94's 4×4 map: the top-left 3×3 window, one
    output), the identity on smaller ones: (B, C, H, W) → (B, C, ⌊H/3⌋, ⌊W/3⌋)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3) if min(x.shape[-2:]) >= 3 else x


def _head_pool(mode: str, size: int) -> nn.Module:
    """The pool before flattening: (B, C, h, w) → (B, C, size, size)."""
    if mode == "max3":
        return nn.Sequential(CornerMaxPool(), nn.AdaptiveMaxPool2d(size))
    return nn.AdaptiveMaxPool2d(size) if mode == "max" else nn.AdaptiveAvgPool2d(size)


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


def _check_style(stem: int, activation: str, head_pool_mode: str, logit_scale: float) -> None:
    if stem < 0:
        raise ValueError(f"stem must be >= 0 (0 = no stem conv), got {stem}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if head_pool_mode not in HEAD_POOLS:
        raise ValueError(f"head_pool_mode must be one of {', '.join(HEAD_POOLS)}, got {head_pool_mode!r}")
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be > 0, got {logit_scale}")


@register_model
def wide_cnn(num_classes: int = 10, **kwargs) -> WideCNN:
    """The lab's teacher: 64-128-256-256 channels, 3×3 kernels, hidden FC 512, dropout 0.5."""
    return WideCNN(num_classes=num_classes, **kwargs)


# airbench94's network (KellerJordan/cifar10-airbench) as a wide_cnn: a 24-channel whitening stem, three blocks of
# two 3×3 convs (64, 256, 256 channels) pooling right after each block's first conv, GELU, a global max pool and a
# linear head scaled by 1/9. 118 M flops (thop MACs) on 32×32.
FAST_CNN = {"widths": (64, 64, 256, 256, 256, 256), "pool_after": (0, 2, 4), "stem": 24, "pool_first": True,
            "activation": "gelu", "hidden": 0, "dropout": 0.0, "head_pool": 1, "head_pool_mode": "max",
            "logit_scale": 1 / 9}


@register_model
def fast_cnn(num_classes: int = 10, **kwargs) -> WideCNN:
    """A ``wide_cnn`` shaped like airbench94 (:data:`FAST_CNN`; any argument can be overridden), the network of the
    ``fast`` training recipe: with the whitening and identity initialisation of :mod:`models.init`."""
    return WideCNN(num_classes=num_classes, **{**FAST_CNN, **kwargs})
