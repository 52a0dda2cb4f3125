"""A network Torch-Pruning cannot prune ends in one :class:`PruningError` naming the layer, not a raw traceback.

Two things fail: tracing (Torch-Pruning runs the network to build its dependency graph and gives up on an operation it
cannot map) and the pruned network itself (a layer whose forward assumes widths pruning changed: timm's ViT attention
reshapes by ``num_heads · head_dim`` when Torch-Pruning is not told the heads). Both are run under forward hooks on
every module, so the innermost module running when the error was raised is the layer the message names.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")

# What tracing or a pruned forward raises for a network Torch-Pruning does not fit (our own ValueErrors pass through)
_FAILURES = (RuntimeError, IndexError, KeyError, TypeError, AssertionError, AttributeError)
ADVICE = ("pass it in ignored_layers, give Torch-Pruning a pruning function for it (customized_pruners), or declare "
          "its attention heads (num_heads) or free parameters (unwrapped_parameters)")


class PruningError(ValueError):
    """Torch-Pruning cannot trace a network, or the network it pruned no longer runs; the message names the layer."""


@contextlib.contextmanager
def _running_layers(model: nn.Module) -> Iterator[list[str]]:
    """Inside the block, the list yielded holds the dotted names of the modules whose forward is running (outermost
    first); when an error escapes, it still holds the ones that were running then."""
    stack: list[str] = []

    def leave(module: nn.Module, args: tuple, output: object) -> None:  # None: the output stays as it is
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n) and None))
            handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _error(model: nn.Module, stack: list[str], err: BaseException, when: str) -> PruningError:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    if stack:
        layer = model.get_submodule(stack[-1])
        where = f"layer {stack[-1]!r} ({type(layer).__name__})"
    else:
        where = "an operation outside the layers"
    return PruningError(f"Torch-Pruning cannot prune {type(model).__name__}: {when} fails in {where}: "
                        f"{type(err).__name__}: {first}; {ADVICE}")


def traced(model: nn.Module, example_inputs: torch.Tensor, build: Callable[[], T]) -> T:
    """``build()`` (which traces ``model`` with Torch-Pruning), its failures turned into a :class:`PruningError`
    naming the layer that was running. ``example_inputs`` (B, C, H, W) is only read to say what was traced."""
    with _running_layers(model) as stack:
        try:
            return build()
        except _FAILURES as err:
            raise _error(model, stack, err, f"tracing it on inputs {tuple(example_inputs.shape)}") from err


def check_forward(model: nn.Module, example_inputs: torch.Tensor) -> None:
    """One forward pass of the pruned ``model`` (no gradients, its mode unchanged); a failure becomes a
    :class:`PruningError` naming the layer."""
    with _running_layers(model) as stack, torch.no_grad():
        try:
            model(example_inputs)
        except _FAILURES as err:
            raise _error(model, stack, err, "the pruned network") from err
