"""airbench94's pieces the fast recipe lacked (issue 28), each against a hand computation: lookahead, BatchNorm
momentum and frozen scales, the stem bias held after its epochs, fast_cnn's max3 head / bias-free classifier / eps,
6-view test-time augmentation of an invariant model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd import Callback
from kd.batchnorm import set_bn_momentum
from kd.data import load_dataset, make_loaders
from kd.lookahead import Lookahead
from kd.trainer import Trainer, evaluate, fit_model
from kd.tta import tta_logits
from models import create_model, load_model, save_model
from recipes import train_teacher
from recipes.plumbing.config import RunConfig, parse_config
from recipes.plumbing.errors import run_main
from toy_nets import ToyNet


_Toy = ToyNet


def _batches(n: int, b: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)) for _ in range(n)]


def _constant_lr(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def test_lookahead_follows_its_formula(one_thread):
    """Every 5 steps a ← d·a + (1 − d)·w and w ← a with d = 0.95⁵ · (t / T)³, once more at T; BatchNorm statistics
    included."""
    torch.manual_seed(0)
    model, batches = _Toy(), _batches(12)
    hand = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    Trainer(model, epochs=1, precision="fp32", channels_last=False, progress=False, lookahead=True, optimizer=opt,
            scheduler=_constant_lr(opt)).fit(batches)

    hand_opt = torch.optim.SGD(hand.parameters(), lr=0.2, momentum=0.5)
    average = {k: v.clone() for k, v in hand.state_dict().items() if v.is_floating_point()}
    total = len(batches)
    hand.train()
    for t, (x, y) in enumerate(batches, start=1):
        hand_opt.zero_grad()
        F.cross_entropy(hand(x), y).backward()
        hand_opt.step()
        if t % 5 == 0 or t == total:
            d = 0.95 ** 5 * (t / total) ** 3 if t % 5 == 0 else 1.0
            with torch.no_grad():
                for name, w in hand.state_dict().items():
                    if name in average:
                        average[name] = d * average[name] + (1 - d) * w
                        w.copy_(average[name])
    if total % 5:  # the final reset after a pull-free tail: the weights become the average
        with torch.no_grad():
            for name, w in hand.state_dict().items():
                if name in average:
                    w.copy_(average[name])
    for name, value in hand.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_lookahead_decay_ramps_cubically_to_0_95_to_the_fifth():
    la = Lookahead(_Toy(), total_steps=100)
    assert la.decay(100) == pytest.approx(0.95 ** 5)
    assert la.decay(50) == pytest.approx(0.95 ** 5 / 8)
    assert la.decay(0) == 0.0


class _StopAfterOne(Callback):
    def on_epoch_end(self, trainer, record):
        trainer.should_stop = True  # "crashes" after epoch 1


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_resume_with_lookahead_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, tiny, one_thread, optimizer):
    """The lookahead's slow weights and the optimizer's state (SGD's momentum; Muon's too) come back on --resume."""
    def fit(out, stop=False, resume=False):
        train, test = make_loaders(tiny, 32, seed=7)
        torch.manual_seed(11 if resume else 1)
        model = create_model("wide_cnn", 10, widths=(8, 16), hidden=0, dropout=0.0)
        fit_model(model, train, test, epochs=3, lr=0.5, optimizer=optimizer, schedule="triangular", momentum=0.85,
                  lookahead=True, out_dir=out, progress=False, precision="fp32", resume=resume,
                  callbacks=[_StopAfterOne()] if stop else [])
        return model

    full = fit(tmp_path / "full")
    fit(tmp_path / "cut", stop=True)
    resumed = fit(tmp_path / "cut", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_frozen_batchnorm_scale_stays_put_after_a_step(one_thread):
    """bn_weight_lr_scale 0: a fresh model's scales stay 1, a pruned student's learned scales are kept, not reset."""
    torch.manual_seed(0)
    fresh, learned = _Toy(), _Toy()
    with torch.no_grad():
        learned.bn.weight.uniform_(0.5, 1.5)
    scales = learned.bn.weight.detach().clone()
    for model, expected in ((fresh, torch.ones(4)), (learned, scales)):
        fit_model(model, _batches(2), epochs=1, lr=0.5, weight_decay=0.1, bn_weight_lr_scale=0.0,
                  precision="fp32", progress=False)
        assert torch.equal(model.bn.weight.detach(), expected)
        assert not torch.equal(model.bn.bias.detach(), torch.zeros(4))  # the shift does train


def test_bn_momentum_sets_the_running_statistics_update(one_thread):
    """running ← (1 − m)·running + m·batch mean: from running 0, one batch leaves m · its mean."""
    model = _Toy()
    assert set_bn_momentum(model, 0.4) == 1
    Trainer(model, epochs=1, precision="fp32", progress=False, bn_momentum=0.4)
    assert model.bn.momentum == 0.4
    x = _batches(1)[0][0]
    model.train()
    with torch.no_grad():
        model(x)
        expected = 0.4 * model.conv(x).mean((0, 2, 3))
    torch.testing.assert_close(model.bn.running_mean, expected)
    assert set_bn_momentum(nn.Linear(2, 2), 0.4) == 0  # no BatchNorm: nothing to set
    with pytest.raises(ValueError, match="momentum"):
        set_bn_momentum(model, 0.0)


def test_stem_bias_stops_changing_after_its_epochs(one_thread):
    torch.manual_seed(0)
    model = create_model("wide_cnn", 10, widths=(8, 8), pool_after=(), hidden=0, dropout=0.0, stem=6)
    bias = model.features.stem.conv.bias
    seen = [bias.detach().clone()]
    weights = []

    class Watch:
        main_only = False

        def on_step_end(self, trainer, step, loss):
            pass

        def on_epoch_end(self, trainer, record):
            seen.append(bias.detach().clone())
            weights.append(model.classifier.weight.detach().clone())

    data = load_dataset("synthetic", image_size=16, limit_train=64, limit_test=16, seed=0)
    train, _ = make_loaders(data, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    Trainer(model, epochs=3, precision="fp32", progress=False, stem_bias_epochs=1, lookahead=True, optimizer=opt,
            callbacks=[Watch()]).fit(train)
    assert not torch.equal(seen[1], seen[0])  # trained in epoch 1
    assert torch.equal(seen[2], seen[1]) and torch.equal(seen[3], seen[1])  # held through momentum and lookahead
    assert not torch.equal(weights[2], weights[1])  # the rest still trains


def test_max3_head_takes_the_top_left_window_of_a_4x4_map():
    model = create_model("fast_cnn", 10, head_pool_mode="max3", classifier_bias=False)
    assert model.classifier.bias is None
    fmap = torch.randn(2, 256, 4, 4)
    torch.testing.assert_close(model.pool(fmap).flatten(1), fmap[..., :3, :3].amax((-2, -1)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    small = torch.randn(1, 8, 2, 2)  # smaller than the window: pooled whole
    torch.testing.assert_close(model.pool(small).flatten(1), small.amax((-2, -1)))


def test_bn_eps_is_an_architecture_argument_the_model_file_keeps(tmp_path):
    model = create_model("fast_cnn", 10, bn_eps=1e-12, head_pool_mode="max3", classifier_bias=False)
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert {m.eps for m in loaded.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-12}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(ValueError, match="bn_eps"):
        create_model("fast_cnn", 10, bn_eps=0.0)


def test_six_view_tta_of_a_translation_and_flip_invariant_model_equals_plain(one_thread):
    """On images of one colour each, a shift by reflection and a mirror change nothing: the 6 views' weighted mean
    (½ : ¼ : ¼ over the shifts) is the plain logits, and so is the accuracy."""
    torch.manual_seed(0)
    colours = torch.rand(64, 3, 1, 1)
    x = colours.expand(64, 3, 8, 8).contiguous()
    y = torch.randint(0, 4, (64,))
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                          nn.Linear(5, 4)).eval()
    with torch.no_grad():
        torch.testing.assert_close(tta_logits(model, x, "flip-translate"), model(x))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    assert evaluate(model, batches, tta="flip-translate").accuracy == evaluate(model, batches).accuracy


def test_airbench_options_reach_the_config_and_are_checked(tmp_path, capsys):
    cfg = parse_config(RunConfig, ["--recipe", "fast", "--lookahead", "--bn-momentum", "0.4",
                                   "--stem-bias-epochs", "3"])
    assert (cfg.lookahead, cfg.bn_momentum, cfg.stem_bias_epochs) == (True, 0.4, 3)
    classic = parse_config(RunConfig, ["--recipe", "classic"])
    assert (classic.lookahead, classic.bn_momentum, classic.stem_bias_epochs) == (False, 0.0, 0)
    out = tmp_path / "run"
    for bad in (["--bn-momentum", "1.5"], ["--stem-bias-epochs", "-1"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            run_main(train_teacher.main, ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32",
                                          "--out", str(out), "--no-progress", *bad])
        assert info.value.code == 2
        assert capsys.readouterr().err.startswith("error: --")
        assert not out.exists()


def test_a_recipes_architecture_arguments_reach_the_model_it_builds_unless_overridden(monkeypatch):
    from recipes.plumbing import config

    arch_args = {"fast_cnn": {"classifier_bias": False, "bn_eps": 1e-12}}
    monkeypatch.setitem(config.RECIPES, "fast", {**config.RECIPES["fast"], "arch_args": arch_args})
    assert config.recipe_arch_args("fast", "fast_cnn", {"bn_eps": 1e-5}) == {"classifier_bias": False, "bn_eps": 1e-5}
    assert config.recipe_arch_args("fast", "wide_cnn", {"hidden": 8}) == {"hidden": 8}  # another network: its own
    assert config.recipe_arch_args("classic", "fast_cnn", {}) == {}


def test_a_fast_cnn_with_airbenchs_head_prunes_and_round_trips(tmp_path, one_thread):
    from pruning.persistence import load, save
    from pruning.prune import prune

    torch.manual_seed(0)
    model = create_model("fast_cnn", 10, bn_eps=1e-12, head_pool_mode="max3", classifier_bias=False)
    result = prune(model, torch.randn(1, 3, 32, 32), target_flops=30_000_000)
    assert result.after.flops <= 30_000_000
    save(result.model, tmp_path / "student.pt")
    loaded = load(tmp_path / "student.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), result.model.eval()(x))
    assert loaded.classifier.bias is None and loaded.features.conv1.bn.eps == 1e-12
