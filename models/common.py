"""What every package repeats, in one place at the bottom of the imports (``recipes → pruning → kd → models``): the
type of a stream of batches, and a model in eval mode for a block with its own mode given back afterwards."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# (x, y) batches: x (B, C, H, W) images, y (B,) labels; batches from a teacher cache add the teacher's logits (B, K).
Batches = Iterable[tuple[torch.Tensor, ...]]


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
