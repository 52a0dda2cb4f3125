"""Read a (possibly pruned) ``wide_cnn`` back into its constructor arguments, and rebuild it with changes.

Torch-Pruning edits layers in place, so ``model.arch_spec`` may still list the original widths; the truth is in the
modules. The hand methods (layer removal, 1×1 compression, FC reduction) and :func:`scaled_wide_cnn` (a student
from scratch at a FLOPs budget) express their results as a new
``models.create_model("wide_cnn", ...)`` configuration, so the result stays a plain ``wide_cnn`` that
``models.save_model`` writes without pickled code.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from models import create_model, profile
from models.wide_cnn import WideCNN


def check_wide_cnn(model: nn.Module, what: str) -> WideCNN:
    """``model`` itself when it is a ``wide_cnn``; otherwise a ValueError naming the method."""
    if not isinstance(model, WideCNN):
        raise ValueError(f"{what} supports wide_cnn models only (it rewrites the wide_cnn configuration), "
                         f"got {type(model).__name__}")
    return model


def wide_config(model: nn.Module) -> dict[str, Any]:
    """The ``wide_cnn`` arguments that rebuild ``model`` with its current (maybe pruned) shapes.

    Returns ``{"num_classes", "widths", "kernel_sizes", "pool_after", "hidden", "dropout", "head_pool", "in_chans",
    "stem", "pool_first", "activation", "head_pool_mode", "logit_scale"}``.
    """
    model = check_wide_cnn(model, "wide_config")
    stem = getattr(model.features, "stem", None)
    blocks = [b for name, b in model.features.named_children() if name != "stem"]
    fc = model.fc
    hidden = fc[0].out_features if isinstance(fc, nn.Sequential) else 0
    dropout = next(m.p for m in fc.modules() if isinstance(m, nn.Dropout))
    head_pool = model.pool.output_size
    return {
        "num_classes": model.classifier.out_features,
        "widths": [b.conv.out_channels for b in blocks],
        "kernel_sizes": [b.conv.kernel_size[0] for b in blocks],
        "pool_after": [i for i, b in enumerate(blocks) if hasattr(b, "pool")],
        "hidden": hidden,
        "dropout": float(dropout),
        "head_pool": head_pool if isinstance(head_pool, int) else head_pool[0],
        "in_chans": stem.conv.in_channels if stem is not None else blocks[0].conv.in_channels,
        "stem": stem.conv.out_channels if stem is not None else 0,
        "pool_first": any(list(b).index(b.pool) < list(b).index(b.bn) for b in blocks if hasattr(b, "pool")),
        "activation": "gelu" if any(isinstance(m, nn.GELU) for m in model.features.modules()) else "relu",
        "head_pool_mode": "max" if isinstance(model.pool, nn.AdaptiveMaxPool2d) else "avg",
        "logit_scale": model.logit_scale,
    }


def build_wide(config: dict[str, Any]) -> WideCNN:
    """``models.create_model("wide_cnn", ...)`` from a :func:`wide_config` dict (fresh weights)."""
    kwargs = {k: v for k, v in config.items() if k != "num_classes"}
    return create_model("wide_cnn", config["num_classes"], **kwargs)


def block_names(model: nn.Module) -> list[str]:
    """``["conv1", "conv2", ...]``: the conv blocks in order."""
    return [name for name, _ in check_wide_cnn(model, "block_names").features.named_children() if name != "stem"]


def scaled_wide_cnn(teacher: nn.Module, target_flops: int, input_size: tuple[int, ...]) -> nn.Module:
    """A fresh ``wide_cnn`` shaped like ``teacher`` with every width and the hidden layer scaled by one factor, the
    largest (to 1/64) whose FLOPs are ≤ ``target_flops``."""
    cfg = wide_config(teacher)

    def build(s: float) -> nn.Module:
        c = copy.deepcopy(cfg)
        c["widths"] = [max(1, round(w * s)) for w in cfg["widths"]]
        c["hidden"] = max(1, round(cfg["hidden"] * s)) if cfg["hidden"] else 0
        return build_wide(c)

    lo, hi = 0.0, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if profile(build(mid), input_size).flops <= target_flops else (lo, mid)
    return build(max(lo, 1 / 64))
