"""What every package repeats, in one place at the bottom of the imports (``recipes → pruning → kd → models``):
the type of a stream of batches and how many it yields per pass, a model in eval mode for a block with its own mode
given back afterwards, the device a model is on, the intra-op thread count for a block, and bf16 autocast by precision
name."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# The precisions a forward pass runs in: fp32, or bf16 autocast (kd.precision adds "auto", chosen by hardware).
PRECISIONS = ("fp32", "bf16")

# (x, y) batches: x (B, C, H, W) images, y (B,) labels; batches from a teacher cache add the teacher's logits (B, K).
Batches = Iterable[tuple[torch.Tensor, ...]]


def batch_count(batches: Batches) -> int | None:
    """How many batches one pass over ``batches`` yields, or None when it cannot say: no ``__len__``, or a wrapper
    whose ``__len__`` asks an inner iterable that has none (TypeError)."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block (no dropout, BatchNorm running statistics); its train/eval mode comes
    back after it, also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.empty(0)).device


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block, the previous number after it; None changes nothing."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, a no-op context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
