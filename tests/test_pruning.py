"""pruning.prune / save / load: targets reached on every registry model and a few timm CNNs, the input model left
alone, the right channels kept, each criterion, and pickle-free round trips."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

import pruning
from kd.data import BatchIterator, make_synthetic
from models import create_model, list_models, profile

TIMM_MODELS = ["timm:resnet18", "timm:mobilenetv3_small_050", "timm:efficientnet_b0", "timm:regnetx_002",
               "timm:convnext_atto"]
NARROW = {"widths": [8, 16, 16, 24], "hidden": 32}  # a wide_cnn small enough to reason about by hand


pytestmark = pytest.mark.usefixtures("one_thread")


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=list_models() + [pytest.param(n, marks=pytest.mark.slow) for n in TIMM_MODELS])
def halved(request):
    """(name, input model, its state before pruning, PruneResult at half the FLOPs)."""
    torch.manual_seed(0)
    model = create_model(request.param, num_classes=10)
    before = _snapshot(model)
    target = profile(model).flops // 2
    return request.param, model, before, target, pruning.prune(model, _x(), target_flops=target)


def test_flops_target_reached_forward_and_shape_kept(halved):
    name, model, _, target, res = halved
    assert res.after.flops <= target
    assert res.after.flops >= 0.9 * target, f"{name}: {res.after.flops} flops is far under the target {target}"
    assert res.after.params < res.before.params
    assert res.before == profile(model)
    assert res.after == profile(res.model)
    out = res.model(_x())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert res.pruned_layers(), f"{name}: no layer was pruned"


def test_input_model_untouched(halved):
    _, model, before, _, res = halved
    assert res.model is not model
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # the input's mode is left as it was ...
    assert res.model.training  # ... and the pruned model comes back in it


def test_save_load_round_trip_weights_only(halved, tmp_path):
    _, _, _, _, res = halved
    path = tmp_path / "student.pt"
    pruning.save(res.model, path, meta={"note": "pruned"})
    payload = torch.load(path, weights_only=True)  # plain tensors and containers: no code is unpickled
    assert payload["arch"] == res.model.arch_spec["name"]
    loaded = pruning.load(path)
    assert loaded.meta == {"note": "pruned"}
    assert profile(loaded) == res.after
    res.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(_x()), res.model(_x()))


def test_kept_indices_are_the_surviving_weights():
    torch.manual_seed(0)
    model = create_model("wide_cnn", 10, **NARROW)
    res = pruning.prune(model, _x(), ratio=0.5)
    convs = [f"features.conv{i}.conv" for i in range(1, 5)]
    prev = list(range(3))
    for name in convs:
        kept = res.kept[name]
        assert kept == sorted(kept) and len(kept) == res.model.get_submodule(name).out_channels
        expected = model.get_submodule(name).weight[kept][:, prev]
        assert torch.equal(res.model.get_submodule(name).weight, expected)
        bn = name[: -len("conv")] + "bn"
        assert torch.equal(res.model.get_submodule(bn).running_mean, model.get_submodule(bn).running_mean[kept])
        prev = kept
    hidden = res.kept["fc.0"]
    assert torch.equal(res.model.fc[0].weight, model.fc[0].weight[hidden][:, prev])
    assert res.kept["classifier"] == list(range(10))  # the classifier is never pruned
    assert torch.equal(res.model.classifier.weight, model.classifier.weight[:, hidden])


def test_ratio_removes_that_fraction_of_each_layer():
    model = create_model("wide_cnn", 10, **NARROW)
    res = pruning.prune(model, _x(), ratio=0.5)
    assert res.ratio == 0.5 and len(res.steps) == 1
    assert res.pruned_layers() == {"features.conv1.conv": (8, 4), "features.conv2.conv": (16, 8),
                                   "features.conv3.conv": (16, 8), "features.conv4.conv": (24, 12),
                                   "fc.0": (32, 16)}


def test_params_target_reached():
    model = create_model("resnet20", 10)
    target = profile(model).params // 3
    res = pruning.prune(model, _x(), target_params=target)
    assert 0.9 * target <= res.after.params <= target
    assert res.after.flops < res.before.flops


def test_flops_target_lands_within_tolerance_on_wide_cnn():
    model = create_model("wide_cnn", 100)
    res = pruning.prune(model, _x(), target_flops=31_269_888)
    assert 31_269_888 * 0.98 <= res.after.flops <= 31_269_888
    assert res.after.flops in [s.flops for s in res.steps]


def test_impossible_target_names_the_smallest_reachable_value():
    model = create_model("resnet20", 10)
    smallest = pruning.prune(model, _x(), ratio=0.999).after.flops  # every group down to one channel
    before = _snapshot(model)
    with pytest.raises(ValueError, match=f"smallest reachable value.*{smallest:,}"):
        pruning.prune(model, _x(), target_flops=smallest - 1, inplace=True)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruning.prune(model, _x(), target_flops=smallest).after.flops == smallest


@pytest.mark.parametrize("kwargs", [{}, {"ratio": 0.5, "target_flops": 10**6}, {"ratio": 1.0}, {"target_params": 0},
                                    {"ratio": 0.5, "importance": "l3"}, {"ratio": 0.5, "importance": "taylor"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        pruning.prune(create_model("wide_cnn", 10, **NARROW), _x(), **kwargs)


def _calibration(n: int = 64) -> BatchIterator:
    data = make_synthetic(n, 10, seed=3)
    return BatchIterator(data, 32, train=False, mean=(0.5,) * 3, std=(0.25,) * 3)


def _with_dead_channels(dead: list[int]) -> nn.Module:
    """A narrow wide_cnn whose conv1 channels ``dead`` are switched off (weights, BN affine and the next conv's
    inputs all zero): every criterion must rank them last."""
    torch.manual_seed(0)
    model = create_model("wide_cnn", 10, **NARROW)
    with torch.no_grad():
        block, nxt = model.features.conv1, model.features.conv2.conv
        block.conv.weight[dead] = 0
        block.bn.weight[dead] = 0
        block.bn.bias[dead] = 0
        nxt.weight[:, dead] = 0
    return model


# every registered criterion but the random control, which by design does not rank dead channels first
@pytest.mark.parametrize("importance", [name for name in pruning.IMPORTANCES if name != "random"])
def test_each_criterion_prunes_dead_channels_first(importance):
    dead = [1, 4, 6]
    model = _with_dead_channels(dead)
    res = pruning.prune(model, _x(), ratio=0.375, importance=importance, calibration=_calibration())
    assert res.importance == importance
    assert res.kept["features.conv1.conv"] == [0, 2, 3, 5, 7]
    assert not any(hasattr(m, "_ptd_activation_in") for m in res.model.modules())  # calibration state cleaned up
    assert all(p.grad is None for p in res.model.parameters())


def test_random_criterion_is_a_seeded_control():
    model = create_model("wide_cnn", 10, **NARROW)
    a = pruning.prune(model, _x(), ratio=0.5, importance="random", seed=1).kept
    b = pruning.prune(model, _x(), ratio=0.5, importance="random", seed=1).kept
    c = pruning.prune(model, _x(), ratio=0.5, importance="random", seed=2).kept
    assert a == b and a != c


def test_importance_object_and_global_pruning():
    model = _with_dead_channels([0, 1, 2, 3])
    res = pruning.prune(model, _x(), ratio=0.25, importance=tp.importance.MagnitudeImportance(p=1),
                        global_pruning=True)
    assert res.importance == "MagnitudeImportance"
    layers = res.channels
    total = sum(b for n, (b, _) in layers.items() if n != "classifier")
    removed = sum(b - a for b, a in layers.values())
    assert removed == total - int(total * 0.75)
    assert res.kept["features.conv1.conv"][:1] == [4]  # the four dead channels go first, whatever their layer
    assert len({round(1 - a / b, 2) for b, a in res.pruned_layers().values()}) > 1  # ratios differ per layer


def test_inplace_ignored_layers_and_round_to():
    model = create_model("wide_cnn", 10, **NARROW)
    res = pruning.prune(model, _x(), ratio=0.6, ignored_layers=["features.conv2.conv", model.fc[0]], round_to=4,
                        inplace=True)
    assert res.model is model
    assert model.features.conv2.conv.out_channels == 16 and model.fc[0].out_features == 32
    assert all(after % 4 == 0 for _, after in res.pruned_layers().values())
    assert model(_x()).shape == (2, 10)


def test_prunes_a_model_with_frozen_parameters_and_eval_mode():
    model = create_model("wide_cnn", 10, **NARROW).eval().requires_grad_(False)
    res = pruning.prune(model, _x(), ratio=0.5, importance="taylor", calibration=_calibration())
    assert not res.model.training
    assert not any(p.requires_grad for p in res.model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    assert copy.deepcopy(res.model).arch_spec == model.arch_spec


def test_a_registered_criterion_is_picked_by_name_and_calibrated_first():
    calls = []

    @pruning.register_importance("last-first")
    class LastChannelsFirst(tp.importance.Importance):
        """Keeps the first channels of every group: scores fall with the channel index."""

        def calibrate(self, model: nn.Module, batches, max_batches: int = 16) -> None:
            calls.append(max_batches)

        def __call__(self, group) -> torch.Tensor:
            return -torch.arange(len(group[0].idxs), dtype=torch.float)

    try:
        assert pruning.importance.needs_calibration("last-first") and "last-first" in pruning.IMPORTANCES
        model = create_model("wide_cnn", 10, **NARROW)
        with pytest.raises(ValueError, match="needs calibration batches"):
            pruning.prune(model, _x(), ratio=0.5, importance="last-first")
        res = pruning.prune(model, _x(), ratio=0.5, importance="last-first", calibration=_calibration(),
                            calibration_batches=2)
        assert calls == [2] and res.importance == "last-first"
        assert res.kept["features.conv1.conv"] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="already registered"):
            pruning.register_importance("last-first")(LastChannelsFirst)
    finally:
        del pruning.IMPORTANCES["last-first"]
