"""Logit distillation losses behind one interface, picked by name from a registry.

Every loss is a :class:`DistillLoss`, called as ``loss(student_logits, teacher_logits | None, targets, state)`` with
logits (B, K) and integer targets (B,) or soft targets (B, K) (mixup, :mod:`kd.mixup`: every CE part takes them
through :func:`cross_entropy`; DKD splits off the soft target's largest class). It returns a dict of named scalar
parts, each already multiplied by its weight; the training loss is their sum (:func:`total_loss`), and the parts can
be logged one by one. Users pick a loss with
``create_loss("dkd", beta=6.0)``; adding one is a :class:`DistillLoss` subclass plus a ``@register_loss("name")`` line.

All arithmetic is fp32: the logits are cast with ``.float()`` first, so callers may run bf16 autocast. Teacher logits
are treated as constants (detached): every loss here distils from a fixed teacher.

Features come from forward hooks instead (:mod:`kd.hooks`, :class:`kd.HintLoss`).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

Parts = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """Where the fit is, for losses with a schedule (DKD's warm-up reads ``epoch``).

    Attributes:
        epoch: 1-based epoch being trained.
        epochs: epochs of the whole fit.
        step: 0-based global optimizer step.
        steps_per_epoch: batches per epoch, when known.
    """

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.epoch < 1 or self.epochs < 1:
            raise ValueError(f"epoch and epochs are 1-based and must be >= 1, got epoch={self.epoch}, "
                             f"epochs={self.epochs}")
        if self.step < 0:
            raise ValueError(f"step is 0-based and must be >= 0, got {self.step}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")


class DistillLoss(nn.Module):
    """Base class of the registered losses.

    ``forward`` checks the shapes, casts the logits to fp32, detaches the teacher's, refuses a missing teacher when
    :attr:`needs_teacher`, and hands over to :meth:`_parts`, which subclasses implement (it gets ``None`` for the
    teacher logits only when the loss needs none).
    """

    @property
    def needs_teacher(self) -> bool:
        """Whether ``forward`` needs teacher logits (False for cross-entropy alone)."""
        return True

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
                state: TrainState | None = None) -> Parts:
        """student_logits (B, K), teacher_logits (B, K) or None, targets (B,) int64 or (B, K) soft →
        named weighted scalar parts."""
        _check_shapes(student_logits, teacher_logits, targets)
        s = student_logits.float()  # (B, K)
        if not self.needs_teacher:
            return self._parts(s, None, targets, state)
        if teacher_logits is None:
            raise ValueError(f"{type(self).__name__}({self.extra_repr()}) needs teacher logits; pass the teacher's "
                             f"logits, or use a loss that needs none such as 'ce'")
        return self._parts(s, teacher_logits.detach().float(), targets, state)

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        raise NotImplementedError


LOSSES: dict[str, type[DistillLoss]] = {}
_L = TypeVar("_L", bound=type[DistillLoss])


def register_loss(name: str) -> Callable[[_L], _L]:
    """Class decorator: registers a :class:`DistillLoss` subclass under ``name`` for :func:`create_loss`."""
    def decorator(cls: _L) -> _L:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise TypeError(f"register_loss({name!r}) decorates DistillLoss subclasses, got {cls!r}")
        if name in LOSSES:
            raise ValueError(f"loss name {name!r} is registered twice ({LOSSES[name].__name__} and {cls.__name__})")
        LOSSES[name] = cls
        return cls
    return decorator


def create_loss(name: str, **kwargs: Any) -> DistillLoss:
    """Builds the loss registered as ``name`` with its keyword arguments, e.g. ``create_loss("dist", tau=1.0)``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), an argument the loss does not take (the
            message lists those it takes), or a bad value (the message names it).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    accepted = _init_arguments(cls)
    unknown = [key for key in kwargs if key not in accepted]
    if unknown:
        raise ValueError(f"loss {name!r} takes no argument {', '.join(map(repr, unknown))}; it accepts: "
                         f"{', '.join(accepted) or 'no arguments'}")
    return cls(**kwargs)


def loss_arguments(name: str) -> list[str]:
    """The keyword arguments the registered loss ``name`` accepts (ValueError for an unknown name)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return _init_arguments(LOSSES[name])


def total_loss(parts: Parts) -> torch.Tensor:
    """The training loss: the sum of the (already weighted) parts a :class:`DistillLoss` returned."""
    values = list(parts.values())
    if not values:
        raise ValueError("total_loss got no parts")
    return sum(values[1:], values[0])


# ----------------------------------------------------------------------------------------------------------- losses


@register_loss("ce")
class CrossEntropy(DistillLoss):
    """Plain cross-entropy with the hard labels; no teacher.

    ``parts = {"ce": CE(s, y)}``, CE averaged over the batch, with label smoothing ε:
    ``CE = mean_b[(1 − ε)·(−log softmax(s_b)_{y_b}) + ε·mean_k(−log softmax(s_b)_k)]``.

    Args:
        label_smoothing: ε in [0, 1); default 0.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _smoothing(label_smoothing)

    @property
    def needs_teacher(self) -> bool:
        return False

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        return {"ce": cross_entropy(s, y, self.label_smoothing)}

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


@register_loss("kd")
class DistillationLoss(DistillLoss):
    """Soft-target distillation (Hinton, Vinyals and Dean, 2015, "Distilling the Knowledge in a Neural Network").

    ``parts = {"ce": (1 − alpha)·CE(s, y), "kd": alpha·T²·KL(softmax(t/T) ‖ softmax(s/T))}``

    where ``s`` and ``t`` are student and teacher logits (B, K), ``y`` the labels (B,), KL is summed over the K
    classes and averaged over the batch (``batchmean``), and CE is the mean cross-entropy (with optional label
    smoothing). The T² factor keeps the soft-target gradients on the same scale as the hard-target ones when T
    changes. ``alpha = 0`` is plain cross-entropy: the parts are then ``{"ce"}`` alone and no teacher is needed.

    Defaults T = 4, alpha = 0.9 are this project's long-standing ones, the same as mdistiller's CIFAR-100 KD
    (``KD.TEMPERATURE = 4``, CE weight 0.1, KD weight 0.9).

    Args:
        temperature: T > 0.
        alpha: weight of the soft-target term, in [0, 1].
        label_smoothing: passed to the cross-entropy term, in [0, 1).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.alpha = _check("alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
        self.label_smoothing = _smoothing(label_smoothing)

    @property
    def needs_teacher(self) -> bool:
        return self.alpha > 0.0

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        parts = {"ce": (1.0 - self.alpha) * cross_entropy(s, y, self.label_smoothing)}
        if t is not None:
            parts["kd"] = self.alpha * soft_target_kl(s, t, self.temperature)
        return parts

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, label_smoothing={self.label_smoothing}"


@register_loss("dkd")
class DKDLoss(DistillLoss):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu and Liang, CVPR 2022).

    With ``p = softmax(z/T)`` (B, K) for student and teacher logits and ``y`` the label of each row:

    - TCKD (target-class KD): ``T²·mean_b KL(b^t_b ‖ b^s_b)`` on the binary distributions
      ``b = [p_y, 1 − p_y]`` (B, 2);
    - NCKD (non-target-class KD): ``T²·mean_b KL(p̂^t_b ‖ p̂^s_b)`` on ``p̂_k = p_k / (1 − p_y)`` for ``k ≠ y``,
      i.e. the softmax of the K − 1 non-target logits (B, K − 1).

    Classical KD decomposes as ``KL(p^t ‖ p^s) = TCKD + (1 − p^t_y)·NCKD`` per sample (the paper's eq. 1); DKD drops
    the coupling factor and weights the two freely:

    ``parts = {"ce": ce_weight·CE(s, y), "tckd": w·alpha·TCKD, "nckd": w·beta·NCKD}``,
    ``w = min(epoch / warmup, 1)``

    The T² factors and the linear warm-up of the distillation terms over the first epochs follow the authors' code
    (mdistiller, ``distillers/DKD.py``); ``w`` reads ``state.epoch`` (1-based, as mdistiller's epochs) and is 1 when no
    state is given or ``warmup = 0``.

    Defaults are the paper's CIFAR-100 setting as in mdistiller's config (``DKD.CE_WEIGHT = 1``, ``ALPHA = 1``,
    ``BETA = 8``, ``T = 4``, ``WARMUP = 20``). beta is tuned per teacher–student pair there (8 for ResNet32×4 →
    ResNet8×4, 6 for WRN-40-2 and VGG13 teachers, 2 for ResNet56/110 teachers); its ImageNet configs use T = 1, a
    1-epoch warm-up and beta = 0.5 (ResNet34 → ResNet18) or 2 (ResNet50 → MobileNetV1).

    With soft targets (mixup), the target class of TCKD / NCKD is the soft target's largest entry (:func:`hard_labels`);
    the CE part takes the soft target itself.

    Args:
        alpha: weight of TCKD, >= 0.
        beta: weight of NCKD, >= 0.
        temperature: T > 0.
        warmup: epochs of linear warm-up of the distillation terms, >= 0 (0: none).
        ce_weight: weight of the cross-entropy term, >= 0.
        label_smoothing: passed to the cross-entropy term, in [0, 1).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: float = 20,
                 ce_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.beta = _non_negative("alpha", alpha), _non_negative("beta", beta)
        self.temperature = _positive("temperature", temperature)
        self.warmup = _non_negative("warmup", warmup)
        self.ce_weight = _non_negative("ce_weight", ce_weight)
        self.label_smoothing = _smoothing(label_smoothing)

    @property
    def needs_teacher(self) -> bool:
        return self.alpha > 0.0 or self.beta > 0.0

    def warmup_factor(self, state: TrainState | None) -> float:
        """``min(epoch / warmup, 1)``; 1 without a state or with ``warmup = 0``."""
        if state is None or self.warmup == 0:
            return 1.0
        return min(state.epoch / self.warmup, 1.0)

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        parts = {"ce": self.ce_weight * cross_entropy(s, y, self.label_smoothing)}
        if t is not None:
            tckd, nckd = decoupled_kl(s, t, hard_labels(y), self.temperature)
            w = self.warmup_factor(state)
            parts["tckd"], parts["nckd"] = w * self.alpha * tckd, w * self.beta * nckd
        return parts

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, warmup={self.warmup}, "
                f"ce_weight={self.ce_weight}, label_smoothing={self.label_smoothing}")


@register_loss("dist")
class DISTLoss(DistillLoss):
    """DIST (Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

    With ``Y^s = softmax(s/τ)`` and ``Y^t = softmax(t/τ)`` (B, K) and ``ρ`` the Pearson correlation coefficient:

    - inter-class relation (rows: one sample's distribution over classes):
      ``inter = τ²·(1 − mean_b ρ(Y^s_{b,:}, Y^t_{b,:}))``;
    - intra-class relation (columns: one class's probabilities across the batch):
      ``intra = τ²·(1 − mean_k ρ(Y^s_{:,k}, Y^t_{:,k}))``;

    ``parts = {"ce": ce_weight·CE(s, y), "inter": beta·inter, "intra": gamma·intra}``.

    ``ρ(u, v) = Σ(u − ū)(v − v̄) / (‖u − ū‖·‖v − v̄‖ + 1e-8)``, the small constant as in the authors' code, so that a
    constant vector (e.g. a column when B = 1) counts as uncorrelated instead of giving NaN. The intra-class term needs
    B >= 2 to carry information. Being correlations, both terms are unchanged by adding a constant to a row of logits
    (softmax ignores it), but not by rescaling the logits (that changes the softmax); they are zero whenever the
    student's probabilities are a positive affine map of the teacher's, ``Y^s = a·Y^t + (1 − a)/K`` with one a > 0
    for the batch, which is the relaxed match the paper argues for.

    Defaults are the paper's CIFAR-100 setting, beta = gamma = 2, τ = 4, CE weight 1; in the authors' code
    (hunto/image_classification_sota, ``configs/strategies/distill/dist_cifar.yaml``) this is the ``dist_t4`` loss
    (beta = gamma = 1, τ = 4) times ``kd_loss_weight: 2`` with ``ori_loss_weight: 1``. Their ImageNet config
    (``resnet_dist.yaml``) is the same with τ = 1.

    Args:
        beta: weight of the inter-class relation, >= 0.
        gamma: weight of the intra-class relation, >= 0.
        tau: temperature τ > 0.
        ce_weight: weight of the cross-entropy term, >= 0.
        label_smoothing: passed to the cross-entropy term, in [0, 1).
    """

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, tau: float = 4.0, ce_weight: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.beta, self.gamma = _non_negative("beta", beta), _non_negative("gamma", gamma)
        self.tau = _positive("tau", tau)
        self.ce_weight = _non_negative("ce_weight", ce_weight)
        self.label_smoothing = _smoothing(label_smoothing)

    @property
    def needs_teacher(self) -> bool:
        return self.beta > 0.0 or self.gamma > 0.0

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        parts = {"ce": self.ce_weight * cross_entropy(s, y, self.label_smoothing)}
        if t is not None:
            p_s, p_t = F.softmax(s / self.tau, dim=1), F.softmax(t / self.tau, dim=1)  # (B, K)
            scale = self.tau ** 2
            parts["inter"] = self.beta * scale * (1.0 - _mean_row_correlation(p_s, p_t))
            parts["intra"] = self.gamma * scale * (1.0 - _mean_row_correlation(p_s.T, p_t.T))
        return parts

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}, ce_weight={self.ce_weight}, "
                f"label_smoothing={self.label_smoothing}")


@register_loss("kd-ls")
class LogitStandardizedKDLoss(DistillLoss):
    """KD with logit standardisation (Sun, Ren, Li, Wang and Cao, "Logit Standardization in Knowledge
    Distillation", CVPR 2024).

    Each row of logits z (K,) is z-scored before the usual temperature softmax,
    ``Z(z) = (z − mean(z)) / (std(z) + eps)``, so teacher and student need not match the logits' range and spread,
    only their relations:

    ``parts = {"ce": ce_weight·CE(s, y), "kd": kd_weight·T²·KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T))}``

    with KL summed over classes and averaged over the batch, s, t (B, K), and CE on the raw student logits. The paper
    writes this as a per-sample temperature ``T·std(z)`` for each model; ``T`` is its base temperature. The "kd" part
    is unchanged by adding a constant to a row of either model's logits or multiplying it by a positive number.

    ``std`` is the sample standard deviation (divisor K − 1) and ``eps = 1e-7`` is added to it, as in the authors'
    code (sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``, ``torch.std``). The population std
    (divisor K) would only rescale T by ``sqrt(K/(K − 1))`` (0.5 % for K = 100, 5 % for K = 10).

    Weights are named as in the authors' code (a CE weight and a KD weight, not alpha) because their KD weight is 9,
    not a convex mix. Defaults are their CIFAR-100 setting for KD+LS: base temperature 2 and KD weight 9
    (``tools/train.py --base-temp 2 --kd-weight 9``, the ``…,2,9`` logs; some pairs use T = 3) with CE weight 1
    (``KD.LOSS.CE_WEIGHT`` in their ``engine/cfg.py``).

    Args:
        temperature: base temperature T > 0.
        kd_weight: weight of the distillation term, >= 0.
        ce_weight: weight of the cross-entropy term, >= 0.
        eps: added to the standard deviation, >= 0.
        label_smoothing: passed to the cross-entropy term, in [0, 1).
    """

    def __init__(self, temperature: float = 2.0, kd_weight: float = 9.0, ce_weight: float = 1.0, eps: float = 1e-7,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.temperature = _positive("temperature", temperature)
        self.kd_weight = _non_negative("kd_weight", kd_weight)
        self.ce_weight = _non_negative("ce_weight", ce_weight)
        self.eps = _non_negative("eps", eps)
        self.label_smoothing = _smoothing(label_smoothing)

    @property
    def needs_teacher(self) -> bool:
        return self.kd_weight > 0.0

    def _parts(self, s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor, state: TrainState | None) -> Parts:
        parts = {"ce": self.ce_weight * cross_entropy(s, y, self.label_smoothing)}
        if t is not None:
            z_s, z_t = standardize_logits(s, self.eps), standardize_logits(t, self.eps)
            parts["kd"] = self.kd_weight * soft_target_kl(z_s, z_t, self.temperature)
        return parts

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, kd_weight={self.kd_weight}, ce_weight={self.ce_weight}, "
                f"eps={self.eps}, label_smoothing={self.label_smoothing}")


# -------------------------------------------------------------------------------------------------------- functions


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits (B, K) against class indices (B,) or soft targets (B, K).

    Class indices: ``mean_b[(1 − ε)·(−log softmax(s_b)_{y_b}) + ε·mean_k(−log softmax(s_b)_k)]``. Soft targets
    (mixup / CutMix, :mod:`kd.mixup`): ``mean_b[−Σ_k y_bk·log softmax(s_b)_k]`` with no smoothing: the soft target
    carries its own (timm's ``Mixup`` folds ε in, and its ``SoftTargetCrossEntropy`` smooths no further).
    """
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices (B,) of targets that are indices already (B,) or soft targets (B, K) (their largest entry)."""
    return targets.argmax(dim=1) if targets.dim() == 2 else targets


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, KL summed over classes and averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)  # (B, K)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * t * t


def decoupled_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's (TCKD, NCKD), each ``T²·KL(teacher ‖ student)`` averaged over the batch (see :class:`DKDLoss`).

    Computed in log space: ``log p_y = z_y/T − lse(z/T)`` and ``log(1 − p_y) = lse_{k≠y}(z_k/T) − lse(z/T)``, which
    stays finite when ``p_y`` rounds to 1.
    """
    temp = temperature
    s, t = student_logits.float() / temp, teacher_logits.float() / temp  # (B, K)
    target = F.one_hot(targets, s.shape[1]).bool()  # (B, K)
    tckd = F.kl_div(_binary_log_probs(s, target), _binary_log_probs(t, target), reduction="batchmean",
                    log_target=True)
    nckd = F.kl_div(_non_target_log_probs(s, target), _non_target_log_probs(t, target), reduction="batchmean",
                    log_target=True)
    return tckd * temp * temp, nckd * temp * temp


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each row: ``(z − mean(z)) / (std(z) + eps)`` with the sample std (divisor K − 1); (B, K) → (B, K)."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def _binary_log_probs(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K) scaled logits, (B, K) target mask → (B, 2) log of [p_target, 1 − p_target]."""
    lse = z.logsumexp(dim=1, keepdim=True)  # (B, 1)
    log_target = z.masked_select(target).unsqueeze(1)  # (B, 1)
    log_rest = z.masked_fill(target, float("-inf")).logsumexp(dim=1, keepdim=True)  # (B, 1)
    return torch.cat([log_target, log_rest], dim=1) - lse


def _non_target_log_probs(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, K) scaled logits, (B, K) target mask → (B, K − 1) log-softmax over the non-target classes."""
    b, k = z.shape
    return F.log_softmax(z[~target].view(b, k - 1), dim=1)


def _mean_row_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over rows of the Pearson correlation between row i of ``a`` and row i of ``b``, both (N, M)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    corr = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)  # (N,)
    return corr.mean()


def _check_shapes(s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor) -> None:
    if s.dim() != 2 or s.shape[1] < 2:
        raise ValueError(f"student logits must be (B, K) with K >= 2 classes, got shape {tuple(s.shape)}")
    if t is not None and t.shape != s.shape:
        raise ValueError(f"teacher logits must have the student's shape {tuple(s.shape)}, got {tuple(t.shape)}")
    if y.shape != s.shape[:1] and y.shape != s.shape:
        raise ValueError(f"targets must be class indices of shape ({s.shape[0]},) or soft targets of shape "
                         f"{tuple(s.shape)}, got shape {tuple(y.shape)}")


def _init_arguments(cls: type) -> list[str]:
    """Names of the keyword arguments ``cls(...)`` takes."""
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def _check(name: str, value: Any, ok: Callable[[float], bool], accepted: str) -> float:
    """``float(value)`` when ``ok`` holds for it, else a ValueError naming the argument, the value and the range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number {accepted}, got {value!r}") from None
    if not ok(number):  # also rejects NaN
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return number


def _positive(name: str, value: Any) -> float:
    return _check(name, value, lambda v: 0.0 < v < float("inf"), "> 0 and finite")


def _non_negative(name: str, value: Any) -> float:
    return _check(name, value, lambda v: 0.0 <= v < float("inf"), ">= 0 and finite")


def _smoothing(value: Any) -> float:
    return _check("label_smoothing", value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
