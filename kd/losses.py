"""Distillation losses. Each takes tensors; features come from forward hooks (:mod:`kd.hooks`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """Soft-target distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural Network").

    ``loss = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y)``

    where ``s`` and ``t`` are student and teacher logits (B, K), ``y`` the labels (B,), KL is summed over the K
    classes and averaged over the batch (``batchmean``), and CE is the mean cross-entropy (with optional label
    smoothing). The T² factor keeps the soft-target gradients on the same scale as the hard-target ones when T
    changes. ``alpha = 0`` is plain cross-entropy and then no teacher logits are needed.

    Args:
        temperature: T > 0.
        alpha: weight of the soft-target term, in [0, 1].
        label_smoothing: passed to the cross-entropy term, in [0, 1).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.temperature, self.alpha, self.label_smoothing = float(temperature), float(alpha), float(label_smoothing)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
        """student_logits, teacher_logits: (B, K); targets: (B,) int64 → scalar loss."""
        ce = F.cross_entropy(student_logits, targets, label_smoothing=self.label_smoothing)
        if self.alpha == 0.0:
            return ce
        if teacher_logits is None:
            raise ValueError(f"DistillationLoss with alpha={self.alpha} needs teacher logits; pass a teacher or alpha=0")
        return self.alpha * soft_target_kl(student_logits, teacher_logits, self.temperature) + (1 - self.alpha) * ce

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, label_smoothing={self.label_smoothing}"


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, KL summed over classes and averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * t * t
