"""Several frozen teachers, and optionally each one's mirrored view, seen by the Trainer as one teacher.

:class:`TeacherEnsemble` returns the arithmetic mean of its members' logits over the views it is given::

    t(x) = 1/(N·V) · Σ_n Σ_v f_n(v(x))        V = {x} or, with ``mirror``, {x, mirror(x)}   (B, K)

Why the mean of the logits and not of the probabilities (Hinton et al. 2015 average the members' probabilities at
temperature T): every distillation loss here takes logits and applies its own transform to them (softmax at T for
``kd`` and ``dkd``, z-scoring then softmax for ``kd-ls``, Pearson correlation of probabilities for ``dist``), and the
teacher cache stores logits. A mean of logits is one logit vector that each loss and the cache treat exactly as one
teacher's; ``softmax(t / T)`` is then the normalised geometric mean of the members' tempered distributions (a product
of experts) at every T. A mean of probabilities would have to be taken at each loss's own T and turned back into
logits, so the cached "teacher" would depend on the loss. The mirrored view (``--teacher-tta``) is averaged the same
way, as :mod:`kd.tta` averages its views: the teacher scores the very crop the student sees and its mirror image
(Beyer et al. 2022: a consistent teacher).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TeacherEnsemble(nn.Module):
    """``forward(x)`` (B, C, H, W) → (B, K) float32: the mean logits of ``members`` over ``x`` and, with ``mirror``,
    ``x.flip(-1)`` (formula in the module docstring).

    The number of views is also a buffer, so the state dict (which :func:`kd.teacher_cache.cache_key` hashes) tells a
    mirrored ensemble from a plain one with the same weights. It starts in eval mode, as a teacher is used.

    Args:
        members: teachers with the same classes in the same order, fed the same normalised images.
        mirror: also score each image's horizontal mirror.
    """

    def __init__(self, members: Sequence[nn.Module], mirror: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one teacher")
        self.members = nn.ModuleList(members)
        self.mirror = mirror
        self.register_buffer("views", torch.tensor(2 if mirror else 1))
        self.eval()  # a teacher: a caller's eval_mode() would otherwise restore train mode on every member after it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = (x, x.flip(-1)) if self.mirror else (x,)
        total = sum(member(v).float() for member in self.members for v in inputs)  # (B, K)
        return total / (len(self.members) * len(inputs))

    def extra_repr(self) -> str:
        return f"teachers={len(self.members)}, mirror={self.mirror}"


def ensemble_members(teacher: nn.Module) -> list[nn.Module]:
    """The teachers inside ``teacher``: its members when it is a :class:`TeacherEnsemble`, else ``[teacher]``."""
    return list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]
