"""The classifier of any network: which layer it is, how many classes it gives, and replacing it for new classes.

timm models say it themselves (``get_classifier()``, ``reset_classifier(n)``); for other networks (torchvision's, a
user's) it is the last ``nn.Linear`` (a 1×1 conv head of an all-conv network is not guessed).
"""
from __future__ import annotations

import torch
from torch import nn


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the final classifier: ``model.get_classifier()`` when it is a layer with weights, else the last
    linear layer.

    Raises:
        ValueError: when the model has neither.
    """
    names = {id(m): n for n, m in model.named_modules()}
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and id(head) in names and any(True for _ in head.parameters()):
        return names[id(head)]
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"cannot tell the final classifier of {type(model).__name__}: it has no get_classifier() "
                         "and no nn.Linear layer")
    return linear[-1]


def num_outputs(model: nn.Module) -> int:
    """Classes the classifier gives (``out_features`` of a linear head, ``out_channels`` of a conv head)."""
    head = model.get_submodule(classifier_name(model))
    return int(head.out_features if isinstance(head, nn.Linear) else head.out_channels)


def classes_in(state_dict: dict[str, torch.Tensor], model: nn.Module) -> int | None:
    """Classes of the classifier in ``state_dict`` (rows of its ``weight``), or None when it holds no such tensor."""
    weight = state_dict.get(f"{classifier_name(model)}.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Gives ``model`` a new, freshly initialised classifier of ``num_classes`` outputs, in place: timm's
    ``reset_classifier`` where the model has one, else a new ``nn.Linear`` with the old one's inputs (and bias).
    Returns ``model``.

    Raises:
        ValueError: when the classifier is not a linear layer and the model has no ``reset_classifier``.
    """
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return model
    name = classifier_name(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"the classifier {name!r} of {type(model).__name__} is a {type(old).__name__}; only a linear "
                         "one (or a timm model's reset_classifier) can be replaced")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)
    model.set_submodule(name, new)
    return model
