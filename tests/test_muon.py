"""The muon optimizer: Newton–Schulz orthogonalisation, the Muon step on filters, SGD's arithmetic on the rest."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd.optim import NS_COEFFICIENTS, Muon, make_optimizer, newton_schulz, param_groups
from models import create_model
from recipes.distill_only import DistillConfig
from recipes.plumbing.config import parse_config
from recipes.prune_then_distill import PruneThenDistillConfig
from recipes.train_teacher import TeacherConfig


class StemNet(nn.Module):
    """A stem conv with a bias (as fast_cnn's whitening conv), a bias-free conv + BatchNorm, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 2, bias=True)
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(F.relu(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("shape", [(6, 36), (36, 6)])
def test_newton_schulz_brings_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # condition number ~10²
    x = newton_schulz(g, steps=5)
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and x.dtype == g.dtype
    assert s.min() > 0.5 and s.max() < 1.5, s
    # same singular vectors as g: x ≈ U S' Vᵀ, so Uᵀ x V is diagonal
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    inner = u.T @ x @ vh.T
    assert torch.allclose(inner, torch.diag(torch.diagonal(inner)), atol=1e-4)


def test_newton_schulz_one_step_is_the_quintic_by_hand():
    g = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    a, b, c = NS_COEFFICIENTS
    x = torch.tensor([0.6, 0.8])  # g / ‖g‖_F = diag(3, 4) / 5
    expected = torch.diag(a * x + b * x**3 + c * x**5)
    assert torch.allclose(newton_schulz(g, steps=1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.ones(2, 2, 2))


def test_muon_groups_take_bias_free_conv_filters_only():
    net = StemNet()
    groups = {g["name"]: g for g in param_groups([net], 1.5, 1e-3, decay_norm_and_bias=False,
                                                 filter_lr_scale=0.16)}
    assert [p is net.conv.weight for p in groups["filters"]["params"]] == [True]
    assert groups["filters"]["lr"] == pytest.approx(0.24)
    assert groups["filters"]["weight_decay"] == 0.0 and groups["filters"]["muon"] is True
    assert {id(p) for p in groups["weights"]["params"]} == {id(net.stem.weight), id(net.fc.weight)}
    assert "filters" not in {g["name"] for g in param_groups([net], 1.5, 1e-3)}  # without muon: one weights group


def test_muon_step_follows_its_formula_and_sgd_groups_match_torch_sgd():
    torch.manual_seed(0)
    net, ref = StemNet(), StemNet()
    ref.load_state_dict(net.state_dict())
    lr, wd, m, mu = 0.1, 1e-2, 0.85, 0.6
    opt = make_optimizer("muon", param_groups([net], lr, wd, filter_lr_scale=2.0), lr, wd, m, mu)
    assert isinstance(opt, Muon)
    ref_params = [ref.stem.weight, ref.stem.bias, ref.bn.weight, ref.bn.bias, ref.fc.weight, ref.fc.bias]
    sgd = torch.optim.SGD(ref_params, lr=lr, momentum=m, nesterov=True, weight_decay=wd)
    x, y = torch.randn(8, 3, 9, 9), torch.randint(0, 3, (8,))
    w, buf = ref.conv.weight.detach().clone(), torch.zeros_like(ref.conv.weight)
    for _ in range(3):
        for model, o in ((net, opt), (ref, sgd)):
            model.zero_grad()  # the reference's filter is in no optimizer: its gradient would accumulate
            F.cross_entropy(model(x), y).backward()
            o.step()
        g = ref.conv.weight.grad
        buf = mu * buf + g
        update = g + mu * buf
        w = w * math.sqrt(w.shape[0]) / w.norm()
        w = w - 2.0 * lr * newton_schulz(update.reshape(6, -1)).view_as(w)
        with torch.no_grad():
            ref.conv.weight.copy_(w)  # the reference's filter follows the formula, the rest torch's SGD
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_muon_trains_fast_cnn_with_the_fast_recipe(one_thread):
    torch.manual_seed(0)
    net = create_model("fast_cnn", num_classes=4)
    groups = param_groups([net], 1.5, 1e-3, decay_norm_and_bias=False, bn_bias_lr_scale=64.0, bn_weight_lr_scale=0.0,
                          filter_lr_scale=0.16)
    opt = make_optimizer("muon", groups, 1.5, 1e-3, 0.85, 0.6)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,))
    first = None
    for _ in range(15):
        loss = F.cross_entropy(net(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first  # it memorises 32 images
    for g in opt.param_groups:
        if g["muon"]:
            for p in g["params"]:  # each filter bank held at norm sqrt(out) before its step, moved by lr·O(1)
                assert p.norm().item() == pytest.approx(math.sqrt(p.shape[0]), rel=0.5)


def test_fast_recipe_trains_with_muon_and_classic_with_sgd_unless_told():
    for config in (TeacherConfig, PruneThenDistillConfig, DistillConfig):
        assert parse_config(config, ["--recipe", "fast"]).optimizer == "muon"
        assert parse_config(config, ["--recipe", "classic"]).optimizer == "sgd"
        assert parse_config(config, ["--recipe", "fast", "--optimizer", "sgd"]).optimizer == "sgd"
