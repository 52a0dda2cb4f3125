"""Architectures named by import path: ``module:qualname`` (``torchvision.models:resnet18``, ``mypkg.nets:MyNet``).

A name like that is how a user's own code enters (``--teacher-arch mypkg.nets:make_net``) and how a model file records a
class that is not in the registry, so :func:`models.load_model` can build it again. Importing a module runs its code,
as importing it by hand would; what a *file* names is held to less than what a user types: it must resolve to an
``nn.Module`` subclass, or to a function annotated as returning one (timm and torchvision factories are), never to an
arbitrary callable, so a model file cannot make this package call, say, ``subprocess:run``.
"""
from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

SEPARATOR = ":"


def is_import_path(name: str) -> bool:
    """True for ``module:qualname`` (not ``timm:NAME``, which names a timm model)."""
    module, sep, qualname = name.partition(SEPARATOR)
    return bool(sep) and module != "timm" and bool(module) and bool(qualname)


def resolve(name: str, *, from_file: bool = False) -> Callable[..., nn.Module]:
    """The class or factory ``module:qualname`` names.

    Args:
        name: ``module:qualname``; the qualname may be dotted (``module:Outer.make``).
        from_file: the name was read from a model file: only an ``nn.Module`` subclass or a function annotated as
            returning one is accepted (see the module docstring).

    Raises:
        ValueError: a malformed name, a module that does not import, a missing attribute, something not callable (or,
            ``from_file``, not a module class or annotated factory).
    """
    module_name, _, qualname = name.partition(SEPARATOR)
    if not is_import_path(name):
        raise ValueError(f"{name!r} is not an import path: write module:qualname, e.g. torchvision.models:resnet18")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"architecture {name!r}: module {module_name!r} does not import ({err}); is it on "
                         "PYTHONPATH?") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"architecture {name!r}: {module_name} has no {qualname!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"architecture {name!r} is a {type(obj).__name__}, not a class or factory")
    if from_file and not (_module_class(obj) or _module_class(_return_type(obj))):
        raise ValueError(f"architecture {name!r} is neither an nn.Module class nor a function annotated to return one; "
                         "a model file may only name those (pass the model yourself: load_model(path, model=...))")
    return obj


def build(name: str, kwargs: dict[str, Any] | None = None, *, from_file: bool = False) -> nn.Module:
    """``resolve(name)(**kwargs)``, checked to be an ``nn.Module``.

    Raises:
        ValueError: see :func:`resolve`; also arguments the callable does not take, or a result that is not a module.
    """
    factory = resolve(name, from_file=from_file)
    try:
        model = factory(**(kwargs or {}))
    except TypeError as err:
        raise ValueError(f"architecture {name!r} cannot be built from arguments {kwargs or {}} ({err})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"architecture {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def import_path(model: nn.Module) -> str | None:
    """``module:qualname`` of ``model``'s class when importing it gives that very class back and it can be built
    without arguments (every parameter has a default), else None (a class defined in ``__main__``, inside a function,
    or one that needs arguments: ``load_model(path, model=...)`` rebuilds those)."""
    cls = type(model)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    name = f"{cls.__module__}{SEPARATOR}{cls.__qualname__}"
    try:
        if resolve(name) is not cls:
            return None
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (ValueError, TypeError):
        return None
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return None if required else name


def accepts(factory: Callable[..., Any], argument: str) -> bool:
    """Whether ``factory`` takes the keyword ``argument`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in params)


def _module_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _return_type(obj: Any) -> Any:
    try:
        return typing.get_type_hints(obj).get("return")
    except Exception:  # noqa: BLE001 (unresolvable annotations: not a declared module factory)
        return None
