"""BatchNorm's running-statistics momentum, set on every BatchNorm layer a model has (airbench94: 0.4).

PyTorch's convention: ``running ← (1 − m) · running + m · batch_statistic``; airbench94 writes its 0.6 as the weight
of the old value, which is ``m = 0.4`` here. The eps (airbench: 1e-12) changes what a saved model computes, so it is
an architecture argument (``fast_cnn``'s ``bn_eps``) that the model file records, not a training option; a frozen
scale is ``bn_weight_lr_scale = 0`` of :func:`kd.optim.param_groups`.
"""
from __future__ import annotations

from torch import nn


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Sets ``momentum`` on every BatchNorm layer of ``model`` (a model without any is left alone).

    Returns:
        How many layers were set.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"BatchNorm momentum must be in (0, 1], got {momentum}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)
