"""Networks from outside: an architecture name plus a weight file, or timm's pretrained weights.

    teacher = load_network("timm:resnet18", "resnet18_cifar.safetensors", num_classes=10)
    teacher = load_network("torchvision.models:resnet18", "resnet18.pth", num_classes=7)
    teacher = load_network("mypkg.nets:MyNet", "mynet.pt", num_classes=10)
    teacher = load_network("timm:resnet18", pretrained=True, num_classes=10, new_head=True)

The architecture is any name :func:`models.create_model` builds: a registered one, ``timm:NAME`` or an import path
``module:qualname`` (:mod:`models.importable`). The weights are

* a ``.safetensors`` file (read with the safetensors package), or
* a ``torch.save`` file read with ``torch.load(weights_only=True)`` (no code is unpickled): a state dict, plain or
  wrapped as timm's and torchvision's training scripts wrap it — under ``state_dict_ema``, ``model_ema``,
  ``state_dict`` or ``model``, taken in that order as timm's ``load_state_dict`` does — with the ``module.`` (DDP) and
  ``_orig_mod.`` (torch.compile) prefixes removed (timm's ``clean_state_dict``).

The kind of file is told by its first bytes, not its name. The network is built with as many classes as the file's
classifier has, and must then match the file key for key and shape for shape (the error names the first key that
does not). The returned model records its architecture (``arch_spec``) but not the weight file: a student pruned from
it is saved with its own weights and never needs that file again.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import (NotAModelFile, architecture_of, check_finite, is_model_payload, model_from_payload,
                               safe_load)
from models.errors import FileFormatError
from models.heads import classes_in, num_outputs, replace_head
from models.registry import TIMM_PREFIX, create_model
from models.validate import check_state_dict

# Wrappers of a state dict, in the order timm's load_state_dict prefers them (the EMA weights first)
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


class HeadMismatchError(ValueError):
    """The network's classifier gives another number of classes than the data has (and no new head was asked for)."""


class WeightsUnavailableError(ValueError):
    """timm could not fetch a network's pretrained weights (offline, or none published)."""


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (see the module docstring for the kinds of file), on the CPU.

    Raises:
        FileNotFoundError: no such file. FileFormatError: unreadable, pickled code, a prune-then-distill model file
            (which :func:`models.load_model` reads), or no dict of tensors inside.
    """
    payload = safe_load(path, "weight file")  # a safetensors file or a weights_only torch file
    if is_model_payload(payload):
        raise NotAModelFile(f"weight file {str(path)!r} is a prune-then-distill model file (architecture "
                            f"{payload['arch']!r}, widths and weights); read it with models.load_model", "model_file")
    return _state_dict_in(payload, path)


def _state_dict_in(payload: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dict of tensors in a read weight file: plain, or under the first of :data:`WRAPPER_KEYS` it has."""
    inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload, dict) and isinstance(payload.get(k), dict)),
                 payload)
    if not isinstance(inner, dict) or not inner or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        raise FileFormatError(f"weight file {str(path)!r} holds no state dict (a dict of tensors, plain or under "
                              f"{', '.join(WRAPPER_KEYS)})")
    return _clean(inner)


def load_weights_into(model: nn.Module, path: str | os.PathLike, where: str | None = None) -> dict[str, Any]:
    """Loads the weights of ``path`` into ``model``, a freshly built network (timm's ``--initial-checkpoint``).

    ``path`` is a weight file (see the module docstring) or a prune-then-distill model file; a model file's recorded
    widths (a pruned network's) are applied to ``model``'s layers first, so a pruned student can go on training.

    Args:
        model: the network, built with the architecture arguments the weights were trained with.
        path: the file.
        where: how errors about a weight file name it (default ``"weight file 'PATH'"``); a model file's errors are
            :func:`models.load_model`'s, which name the file and its architecture.

    Returns:
        the model file's ``meta`` (its normalisation ``mean``/``std``, classes, input size), or ``{}`` for a weight
        file, which records none.

    Raises:
        FileNotFoundError, FileFormatError: an unreadable file, or weights that do not fit ``model`` (the first
            offending key or shape). NonFiniteError: NaN or infinite weights.
    """
    return _weights_into(model, safe_load(path, "weight file"), path, where)


def _weights_into(model: nn.Module, payload: Any, path: str | os.PathLike, where: str | None) -> dict[str, Any]:
    """:func:`load_weights_into` on a file already read (``payload``: a model file, a safetensors file or a state
    dict); a model file is applied at its widths, as :func:`models.load_model` does."""
    if is_model_payload(payload):
        return dict(model_from_payload(path, payload, model).meta)
    _load_checked(model, _state_dict_in(payload, path), where or f"weight file {str(path)!r}")
    return {}


def start_network(model: nn.Module, path: str | os.PathLike,
                  where: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The network that training started from ``path`` goes on with (timm's ``--initial-checkpoint``).

    A prune-then-distill model file records its architecture, arguments and widths, so the network is rebuilt as the
    file says (:func:`models.load_model`), not as ``model`` was built: a student saved with other arguments than the
    recipe gives a fresh one (another head, BatchNorm eps or bias) goes on training as it was. ``model``, freshly built
    from the command line, must be of the file's architecture; a model file that names none is given ``model`` itself.
    The weights of any other file go into ``model`` as :func:`load_weights_into` puts them.

    Args:
        model: the network built from the command line (its architecture; its arguments serve a weight file only).
        path: the file.
        where: how errors name the file (default ``"weight file 'PATH'"``).

    Returns:
        ``(network, meta)``: the network to train and the model file's ``meta``, or ``{}`` for a weight file.

    Raises:
        FileNotFoundError, FileFormatError, NonFiniteError: as :func:`load_weights_into`. ValueError: a model file of
            another architecture than ``model``'s.
    """
    payload = safe_load(path, "weight file")  # read once
    if not is_model_payload(payload) or payload["arch"] is None:
        return model, _weights_into(model, payload, path, where)
    built = architecture_of(model)["name"]
    if payload["arch"] != built:
        name = where or f"weight file {str(path)!r}"
        raise ValueError(f"{name} holds a {payload['arch']!r} network, where a {built!r} one was asked for")
    network = model_from_payload(path, payload)
    return network, dict(network.meta)


def _load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Copies ``state_dict`` into ``model`` once it is finite and fits (errors name ``where``)."""
    check_finite(state_dict, where)
    check_state_dict(model, state_dict, where)
    model.load_state_dict(state_dict)


def _clean(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from timm.models import clean_state_dict

    return clean_state_dict(state_dict)


def load_network(arch: str, weights: str | os.PathLike | None = None, *, pretrained: bool = False,
                 num_classes: int | None = None, new_head: bool = False,
                 model_args: dict[str, Any] | None = None) -> nn.Module:
    """Builds ``arch`` and loads ``weights`` (a file) or, with ``pretrained``, timm's published weights.

    Args:
        arch: a :func:`models.create_model` name (``timm:NAME``, registered, or ``module:qualname``).
        weights: a weight file (see the module docstring); built with its classifier's number of classes.
        pretrained: timm's pretrained weights (``timm:`` architectures only; downloaded by timm, or from its cache).
        num_classes: the classes of the data the network will see; None takes the weights' head as it is.
        new_head: replace the head with a freshly initialised one of ``num_classes`` outputs
            (:func:`models.heads.replace_head`; also when the counts agree: the classes may differ) instead of
            refusing another number of classes: the network must then be fine-tuned before it can teach.
        model_args: architecture arguments (``create_model``'s ``**kwargs``).

    Returns:
        The network in eval mode on the CPU, with ``arch_spec`` (its architecture and current classes; no path).

    Raises:
        ValueError: neither or both of ``weights`` and ``pretrained``; ``pretrained`` for a non-timm architecture.
        FileNotFoundError, FileFormatError: an unreadable file, or weights that do not fit the architecture (the
            first offending key). HeadMismatchError: another number of classes than ``num_classes`` without
            ``new_head``. WeightsUnavailableError: timm could not fetch its weights. NonFiniteError: NaN or inf weights.
    """
    if (weights is None) == (not pretrained):
        raise ValueError("load_network needs exactly one of a weight file or pretrained=True")
    args = dict(model_args or {})
    model = _pretrained(arch, args) if pretrained else _from_file(arch, Path(weights), args)
    classes = num_outputs(model)
    if num_classes is not None and new_head:
        replace_head(model, num_classes)
        model.arch_spec = {**model.arch_spec, "num_classes": int(num_classes)}
    elif num_classes is not None and classes != num_classes:
        raise HeadMismatchError(f"{arch}'s classifier gives {classes} classes but the data has {num_classes}")
    return model.eval()


def _from_file(arch: str, path: Path, args: dict[str, Any]) -> nn.Module:
    state_dict = read_weights(path)
    model = create_model(arch, 10, **args)
    classes = classes_in(state_dict, model)
    if classes is not None and classes != num_outputs(model):
        model = create_model(arch, classes, **args)
    _load_checked(model, state_dict, f"weight file {str(path)!r} for architecture {arch!r}")
    return model


def _pretrained(arch: str, args: dict[str, Any]) -> nn.Module:
    if not arch.startswith(TIMM_PREFIX):
        raise ValueError(f"pretrained weights come from timm: the architecture must be timm:NAME, got {arch!r}")
    import timm

    name = arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models() for the names timm knows")
    try:
        with _quiet_hub():
            model = timm.create_model(name, pretrained=True, **args)
    except TypeError as err:
        raise ValueError(f"{arch} cannot be built from arguments {args} ({err})") from None
    except Exception as err:  # noqa: BLE001 (huggingface_hub, urllib and timm raise many kinds for "not available")
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise WeightsUnavailableError(f"timm could not fetch the pretrained weights of {name} ({first}); download "
                                      "them where there is internet and pass the file as the weights") from None
    model.arch_spec = {"name": arch, "num_classes": num_outputs(model), "kwargs": args}
    return model


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs every retry of a failed download: the error raised afterwards says it in one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
