"""Data-driven initialisation for architecture edits: least-squares 1×1 maps and BatchNorm re-estimation.

Both run on a few calibration batches ``(x (B, C, H, W), y (B,))`` drawn from the training split, never from test.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.common import Batches, eval_mode
# Maps a module's (input, output) to the (X, Y) pair fitted pixel by pixel: X (B, C_in, H, W), Y (B, C_out, H, W).
PairFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def fit_pointwise(model: nn.Module, module: nn.Module, batches: Batches, pair: PairFn,
                  device: str | torch.device = "cpu", ridge: float = 1e-4) -> torch.Tensor:
    """Least-squares 1×1 map ``P`` (C_out, C_in) with ``Y ≈ P · X`` at every pixel, fitted on ``batches``.

    ``module``'s input and output are captured by a forward hook while ``model`` runs in eval mode; ``pair`` turns
    them into ``X`` and ``Y`` (same H, W). Solves ``(XᵀX + λI) Pᵀ = XᵀY`` with ``λ = ridge · trace(XᵀX) / C_in``
    from accumulated Gram matrices, so memory does not grow with the number of batches.
    """
    grams: dict[str, torch.Tensor] = {}

    def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x, y = pair(inputs[0], output)
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()  # (B·H·W, C_in)
        y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()  # (B·H·W, C_out)
        grams["xx"] = grams.get("xx", 0) + x.T @ x
        grams["xy"] = grams.get("xy", 0) + x.T @ y

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for x, _ in batches:
                model(x.to(device))
    finally:
        handle.remove()
    if not grams:
        raise ValueError("fit_pointwise got no calibration batches")
    xx, xy = grams["xx"], grams["xy"]
    lam = ridge * float(torch.trace(xx)) / xx.shape[0] + 1e-12
    p_t = torch.linalg.solve(xx + lam * torch.eye(xx.shape[0], dtype=xx.dtype, device=xx.device), xy)  # (C_in, C_out)
    return p_t.T.float().contiguous()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, device: str | torch.device = "cpu") -> nn.Module:
    """Re-estimates every BatchNorm's running mean and variance on ``batches`` (cumulative average), in place.

    After an architecture edit the old running statistics no longer describe the layer inputs; evaluating with them
    would rank edits by a stale-statistics artefact rather than by what the layers compute. Other layers stay in eval
    mode (no dropout) while the statistics are gathered.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    with eval_mode(model):
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over all calibration batches
            bn.train()
        seen = False
        for x, _ in batches:
            model(x.to(device))
            seen = True
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    if not seen:
        raise ValueError("recalibrate_bn got no calibration batches")
    return model
