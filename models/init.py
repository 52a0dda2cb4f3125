"""Initialisation for CNNs on small images: a patch-whitening first conv and identity (dirac) convs.

An init is a function of a model and (for whitening) some training images, not a new architecture; both work on any
model whose first layer is a ``Conv2d`` (:func:`first_conv`). They are two of the pieces of airbench94's recipe
(KellerJordan/cifar10-airbench; its ablation counts 35 → 21 epochs to 94 % for whitening, 21 → 18 for dirac).

Whitening (Coates & Ng, 2011; airbench): the first conv's ``k×k`` kernels are the eigenvectors ``v_i`` of the
covariance ``Σ = E[p pᵀ]`` of the training images' ``C·k·k`` patches ``p``, scaled by ``1 / sqrt(λ_i + eps)``, and
their negatives (so that a following ReLU/GELU keeps both signs)::

    W = [v_1/√(λ_1+ε), …, v_m/√(λ_m+ε), −v_1/√(λ_1+ε), …]    m = min(out_channels // 2, C·k·k), largest λ first

(filters beyond ``2m`` keep their init), so the first ``m`` outputs on the patches have covariance
``diag(λ_i / (λ_i + ε))`` ≈ I: decorrelated, unit variance.
"""
from __future__ import annotations

import torch
from torch import nn


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``Conv2d`` of ``model`` in module order (ValueError when it has none)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer to initialise")
    return conv


def image_patches(images: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Every ``kh×kw`` patch (stride 1, no padding) of ``images`` (N, C, H, W) as rows (N·(H−kh+1)·(W−kw+1), C·kh·kw),
    flattened in the order of a conv weight's ``(C, kh, kw)``."""
    kh, kw = kernel_size
    n, c = images.shape[:2]
    patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # (N, C, H', W', kh, kw)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: torch.Tensor, eps: float = 5e-4, freeze: bool = True) -> nn.Conv2d:
    """Sets the first conv's weights to whiten the patches of ``images`` (see the module docstring) and its bias to 0.

    Args:
        model: a model whose first ``Conv2d`` has ``groups == 1`` (airbench's has 24 = 2·3·2·2 outputs, all set;
            a wider one keeps its init in the filters beyond ``2·C·kh·kw``).
        images: (N, C, H, W) training images, normalised as the model sees them (a few thousand suffice).
        eps: added to the eigenvalues, so near-constant directions are not blown up.
        freeze: ``requires_grad = False`` on the weight (airbench keeps the whitening fixed; the bias trains); only
            when every filter was set.

    Returns:
        The conv that was set.
    """
    conv = first_conv(model)
    c, kh, kw = conv.weight.shape[1:]
    dims, out = c * kh * kw, conv.out_channels
    m = min(out // 2, dims)
    if conv.groups != 1 or m < 1 or images.shape[1] != c:
        raise ValueError(f"whitening needs a first conv with groups 1 and at least 2 outputs over {c}-channel "
                         f"images; got {conv} and images of shape {tuple(images.shape)}")
    p = image_patches(images, (kh, kw)).double()  # (M, D)
    cov = p.T @ p / p.shape[0]  # (D, D), E[p pᵀ] as airbench (no centring: the images are normalised)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    order = eigvals.argsort(descending=True)[:m]
    scaled = eigvecs[:, order].T / (eigvals[order, None] + eps).sqrt()  # (m, D)
    conv.weight[: 2 * m] = torch.cat([scaled, -scaled]).view(2 * m, c, kh, kw).to(conv.weight.dtype)
    if conv.bias is not None:
        conv.bias[: 2 * m] = 0
    conv.weight.requires_grad_(not (freeze and 2 * m == out))
    return conv


@torch.no_grad()
def dirac_init(model: nn.Module, skip_first: bool = True) -> int:
    """Identity init: every ``Conv2d`` with ``groups == 1``, odd square kernels and "same" padding gets
    ``nn.init.dirac_`` on its first ``min(C_in, C_out)`` filters, so output channel ``i < C_in`` starts as a copy of
    input channel ``i`` (the remaining filters keep their random init, as airbench). With equal widths the conv
    starts as the identity map.

    Args:
        skip_first: leave the first conv alone (it is the whitening layer, or sees raw pixels).

    Returns:
        How many convs were set.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    count = 0
    for conv in convs[1:] if skip_first else convs:
        kh, kw = conv.kernel_size
        same = conv.padding == (kh // 2, kw // 2) or conv.padding == "same"
        if conv.groups != 1 or kh != kw or kh % 2 == 0 or not same or conv.stride != (1, 1):
            continue
        k = min(conv.in_channels, conv.out_channels)
        nn.init.dirac_(conv.weight[:k])
        count += 1
    return count


@torch.no_grad()
def init_for_small_images(model: nn.Module, images: torch.Tensor | None, whiten: bool = True,
                          dirac: bool = True) -> list[str]:
    """The fast recipe's init: :func:`dirac_init` then (when ``images`` are given) :func:`whiten_first_conv`.

    Returns:
        What was done, e.g. ``["dirac (6 convs)", "whitening (first conv, 24 channels)"]``.
    """
    done = []
    if dirac:
        done.append(f"dirac ({dirac_init(model)} convs)")
    if whiten and images is not None:
        conv = whiten_first_conv(model, images)
        done.append(f"whitening (first conv, {conv.out_channels} channels)")
    return done


@torch.no_grad()
def reinitialize(model: nn.Module) -> int:
    """Fresh weights for ``model`` as it is now (widths, kernels, layers unchanged): ``reset_parameters()`` of every
    module that has one (PyTorch's default init: Kaiming-uniform convs and linears, BatchNorm weight 1, bias 0 and
    running statistics reset), and every parameter trainable again, as in a newly built model (a frozen whitening
    conv of the model it came from was a trained layer like the rest). Draws from torch's global generator: seed it
    first.

    Returns:
        How many modules were reset.

    Raises:
        ValueError: a parameter belongs to a module without ``reset_parameters`` (it would keep its trained value, so
            the model would not start from scratch).
    """
    reset = [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]
    owned = {id(p) for m in reset for p in m.parameters(recurse=False)}
    kept = [name for name, p in model.named_parameters() if id(p) not in owned]
    if kept:
        raise ValueError(f"{type(model).__name__} cannot be re-initialised: {', '.join(kept[:4])} belong to modules "
                         "without reset_parameters()")
    for module in reset:
        module.reset_parameters()
    model.requires_grad_(True)
    return len(reset)
