"""Model registry: users pick architectures by name (``create_model("wide_cnn", num_classes=100)``).

Names registered with :func:`register_model` map to factories ``f(num_classes, **kwargs) -> nn.Module``. The prefix
``timm:`` builds any timm model without downloading weights (``create_model("timm:resnet18", 10)``), and an import
path ``module:qualname`` a class or factory of the user's (``create_model("torchvision.models:resnet18", 10)``,
:mod:`models.importable`).

Every model returned by :func:`create_model` carries ``model.arch_spec`` (name, num_classes, kwargs) so that a
checkpoint can rebuild it without pickling code (see :mod:`models.checkpoint`).
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

from torch import nn

from models import heads, importable

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
TIMM_PREFIX = "timm:"


def register_model(fn: ModelFactory) -> ModelFactory:
    """Decorator: registers ``fn`` under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model name {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered models, sorted (``timm:<name>`` works too but is not listed)."""
    return sorted(_REGISTRY)


def model_arguments(name: str) -> list[str] | None:
    """The keyword arguments architecture ``name`` accepts (besides ``num_classes``), or None when they cannot be
    told (``timm:`` models). A factory taking ``**kwargs`` passes them to the class its return annotation names."""
    if name.startswith(TIMM_PREFIX) or name not in _REGISTRY:
        return None
    fn = _REGISTRY[name]
    names = _keywords(fn)
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        target = typing.get_type_hints(fn).get("return")
        if not isinstance(target, type):
            return None
        names += [n for n in _keywords(target.__init__) if n not in names]
    return names


def _keywords(fn: Callable) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in inspect.signature(fn).parameters.items()
            if p.kind in kinds and n not in ("self", "num_classes")]


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Builds a model by registry name.

    Args:
        name: a name from :func:`list_models`, ``"timm:<timm model name>"`` (random init, no download), or
            ``"module:qualname"`` of a class or factory (given ``num_classes`` when it takes that argument, else its
            classifier is replaced when its outputs differ, :func:`models.heads.replace_head`).
        num_classes: size of the classifier output.
        **kwargs: architecture arguments passed to the factory (for ``wide_cnn``: ``widths``, ``kernel_sizes``,
            ``hidden``, ``dropout`` ...).

    Returns:
        The model, with ``model.arch_spec = {"name", "num_classes", "kwargs"}`` attached.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX):], num_classes, **kwargs)
    elif importable.is_import_path(name):
        model = _create_imported(name, num_classes, kwargs)
    elif name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    else:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known models: {known}, 'timm:<name>' for any timm model, or "
                         "module:qualname for your own")
    model.arch_spec = {"name": name, "num_classes": int(num_classes), "kwargs": dict(kwargs)}
    return model


def _create_timm(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    import timm  # imported lazily: timm is slow to import and most runs do not need it

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the names timm knows")
    dropped = sorted(k for k, v in kwargs.items() if v is None)
    if dropped:  # timm.create_model drops None arguments unread: an unknown name would pass unnoticed
        raise ValueError(f"timm model {name!r}: arguments set to null are ignored by timm ({', '.join(dropped)}); "
                         "leave them out or give a value")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _create_imported(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """A user's class or factory: ``num_classes`` goes to it when it takes that argument, else the head is replaced
    when it gives another number of classes."""
    factory = importable.resolve(name)
    given = {**kwargs, "num_classes": num_classes} if importable.accepts(factory, "num_classes") else kwargs
    model = importable.build(name, given)
    if heads.num_outputs(model) != num_classes:
        heads.replace_head(model, num_classes)
    return model
