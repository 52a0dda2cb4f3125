"""FC reduction for ``wide_cnn``: prune hidden units of the fully connected layer ``fc`` (Linear → ReLU → Dropout).

Removing hidden unit ``h`` drops row ``h`` of the first Linear (and its bias) and column ``h`` of the classifier, so
the result is the same network without that unit: a new ``wide_cnn`` configuration with a smaller ``hidden``.

Importance of a unit:
    ``l1``: ‖row h of the first Linear‖₁ (its incoming weights), the FC analogue of the filter L1 norm;
    ``activation``: mean |ReLU output| of the unit over calibration batches (a unit that is rarely on is cheap to lose).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from models import Complexity, profile
from models.common import Batches, eval_mode
from pruning.wide_config import build_wide, check_wide_cnn, wide_config


@dataclass
class FCPruneResult:
    """The model with fewer hidden units, complexity before/after, and the kept unit indices (sorted)."""

    model: nn.Module
    before: Complexity
    after: Complexity
    kept: list[int] = field(default_factory=list)


def _l1(model: nn.Module, linear: nn.Linear, calibration: Batches | None, device: torch.device) -> torch.Tensor:
    return linear.weight.abs().sum(dim=1)  # (hidden,)


def _activation(model: nn.Module, linear: nn.Linear, calibration: Batches | None,
                device: torch.device) -> torch.Tensor:
    if calibration is None:
        raise ValueError("importance='activation' needs calibration batches")
    total, count = torch.zeros(linear.out_features, device=device), 0
    with eval_mode(model):
        for x, _ in calibration:
            feats = torch.flatten(model.pool(model.forward_features(x.to(device))), 1)  # (B, C_N · head_pool²)
            act = torch.relu(linear(feats))  # (B, hidden)
            total += act.abs().sum(0)
            count += act.shape[0]
    if count == 0:
        raise ValueError("importance='activation' got no calibration batches")
    return total / count


# The criteria for hidden FC units by name (module docstring): FC units are not Torch-Pruning channel groups, so
# they have their own small registry beside pruning.IMPORTANCES.
FC_IMPORTANCES: dict[str, Callable[[nn.Module, nn.Linear, Batches | None, torch.device], torch.Tensor]] = {
    "l1": _l1,
    "activation": _activation,
}


@torch.no_grad()
def unit_importance(model: nn.Module, importance: str = "l1", calibration: Batches | None = None,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """(hidden,) importance of each hidden FC unit by a criterion of :data:`FC_IMPORTANCES`."""
    check_wide_cnn(model, "FC reduction")
    if not isinstance(model.fc, nn.Sequential):
        raise ValueError("this wide_cnn has no hidden FC layer (hidden=0); there are no FC units to prune")
    if importance not in FC_IMPORTANCES:
        raise ValueError(f"unknown FC importance {importance!r}; choose one of {', '.join(FC_IMPORTANCES)}")
    return FC_IMPORTANCES[importance](model, model.fc[0], calibration, torch.device(device))


def prune_fc(model: nn.Module, *, keep: int | None = None, ratio: float | None = None, importance: str = "l1",
             calibration: Batches | None = None, input_size: tuple[int, ...] = (1, 3, 32, 32),
             device: str | torch.device = "cpu") -> FCPruneResult:
    """A new ``wide_cnn`` keeping the ``keep`` most important hidden units (or removing a ``ratio`` of them).

    The input model is not changed. Give exactly one of ``keep`` (≥ 1) and ``ratio`` (in [0, 1)).
    """
    scores = unit_importance(model, importance, calibration, device)
    hidden = scores.numel()
    if (keep is None) == (ratio is None):
        raise ValueError("prune_fc needs exactly one of keep or ratio")
    if ratio is not None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        keep = max(1, round(hidden * (1 - ratio)))
    if not 1 <= keep <= hidden:
        raise ValueError(f"keep must be in [1, {hidden}] (the hidden units this model has), got {keep}")
    kept = sorted(torch.topk(scores, keep).indices.tolist())
    cfg = wide_config(model)
    cfg["hidden"] = keep
    new = build_wide(cfg).to(device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.tensor(kept, device=scores.device)
    state["fc.0.weight"], state["fc.0.bias"] = state["fc.0.weight"][idx], state["fc.0.bias"][idx]
    state["classifier.weight"] = state["classifier.weight"][:, idx]
    new.load_state_dict(state)
    return FCPruneResult(new, profile(model, input_size), profile(new, input_size), kept)
