"""The lab's hand methods as tools: layer removal, 1×1 kernel compression, FC reduction, progressive pruning and the
dropout sweep, on tiny wide_cnn models and synthetic data."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kd.data import BatchIterator, load_dataset, make_loaders
from kd.sweep import set_dropout, sweep_dropout, validation_split
from kd.trainer import evaluate, fine_tuner
from models import create_model, load_model, profile, save_model
from pruning.fc import FC_IMPORTANCES, prune_fc
from pruning.kernels import compress_kernels
from pruning.layer_removal import rank_blocks, remove_block, remove_layers
from pruning.progressive import progressive_prune

SIZE = (1, 3, 16, 16)
TINY = {"widths": [4, 8, 8, 12], "hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", limit_train=96, limit_test=48, image_size=16, seed=0)


@pytest.fixture(scope="module")
def batches(data):
    train, test = make_loaders(data, 16, seed=0)
    return train, test, [b for _, b in zip(range(2), train)]


def tiny(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("wide_cnn", 10, **{**TINY, **kwargs})
    for m in model.modules():  # non-trivial BatchNorm so that folding mistakes show up in the outputs
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def bypassed(model: nn.Module, index: int, calibration) -> nn.Module:
    """The reference bypass, built by hand: [pool] → 1×1 conv with the projection remove_block fits."""
    from pruning.layer_removal import _projection

    proj = _projection(model, index, calibration, "cpu")
    ref = copy.deepcopy(model)
    conv = nn.Conv2d(proj.shape[1], proj.shape[0], 1, bias=False)
    conv.weight.data = proj[:, :, None, None].clone()
    pool = [nn.MaxPool2d(2)] if hasattr(model.features[index], "pool") else []
    ref.features[index] = nn.Sequential(*pool, conv)
    return ref.eval()


# ----------------------------------------------------------------------------------------------- layer removal


@pytest.mark.parametrize("index", [0, 1, 2, 3])  # 3→4 projection, pool moves, identity (8→8), last block into fc
def test_remove_block_is_the_bypassed_network(batches, index):
    model, calib = tiny(), batches[2]
    new = remove_block(model, index, calib).eval()
    assert len(new.features) == 3 and sum(isinstance(m, nn.Conv2d) for m in new.modules()) == 3  # the block is gone
    widths = [b.conv.out_channels for b in new.features]
    assert widths == [w for i, w in enumerate(TINY["widths"]) if i != index]
    assert sum(hasattr(b, "pool") for b in new.features) == 2  # a bypassed block's pool is kept
    x = calib[0][0]
    torch.testing.assert_close(new(x), bypassed(model, index, calib)(x), atol=1e-4, rtol=1e-4)


def test_identity_bypass_when_channels_match(batches):
    model = tiny()
    new = remove_block(model, 2, batches[2])  # conv3: 8 → 8 channels, no pool
    torch.testing.assert_close(new.features.conv3.conv.weight, model.features.conv4.conv.weight)


def test_blocks_that_cannot_go_are_not_removed(batches):
    model = tiny(pool_after=[0, 1])  # conv2's pool has nowhere to go (conv1 already pools)
    scores = {s.name: s for s in rank_blocks(model, batches[2], batches[1])}
    assert not scores["conv2"].removable and scores["conv3"].removable
    with pytest.raises(ValueError, match="cannot be removed"):
        remove_block(model, 1, batches[2])
    with pytest.raises(ValueError, match="wide_cnn"):
        remove_block(create_model("resnet20", 10), 0, batches[2])


def test_remove_layers_meets_target_and_round_trips(batches, tmp_path):
    model, (_, test, calib) = tiny(), batches
    before = profile(model, SIZE).flops
    res = remove_layers(model, calib, test, target_flops=before // 2)
    assert res.after.flops <= before // 2 < res.before.flops
    assert len(res.model.features) == 4 - len(res.removed) and res.removed
    assert res.rounds[0][0].removable
    assert len(model.features) == 4  # input untouched
    save_model(res.model, tmp_path / "m.pt")
    x = calib[0][0]
    torch.testing.assert_close(load_model(tmp_path / "m.pt")(x), res.model.eval()(x))


# ----------------------------------------------------------------------------------------------- kernels, FC


def test_compress_kernels_keeps_output_shape_and_meets_target(batches):
    model, calib = tiny(), batches[2]
    before = profile(model, SIZE).flops
    res = compress_kernels(model, target_flops=before // 3, calibration=calib)
    assert res.after.flops <= before // 3 and res.converted
    kernels = {n: b.conv.kernel_size for n, b in res.model.features.named_children()}
    assert all(kernels[n] == (1, 1) for n in res.converted)
    assert any(k == (3, 3) for k in kernels.values())  # only what the budget needs
    x = calib[0][0]
    assert res.model.eval()(x).shape == model(x).shape == (x.shape[0], 10)
    for name in ("conv1", "conv2"):
        block = dict(res.model.features.named_children())[name]
        assert block(torch.zeros(1, block.conv.in_channels, 8, 8)).shape[1] == block.conv.out_channels


def test_compress_kernels_by_name_without_calibration_sums_taps():
    model = tiny()
    res = compress_kernels(model, ["conv2"], input_size=SIZE)
    assert res.converted == ["conv2"] and res.after.flops < res.before.flops
    torch.testing.assert_close(res.model.features.conv2.conv.weight,
                               model.features.conv2.conv.weight.sum((2, 3), keepdim=True))
    with pytest.raises(ValueError, match="unknown block"):
        compress_kernels(model, ["conv9"])


def test_prune_fc_keeps_strongest_units(batches):
    model = tiny()
    x = batches[2][0][0]
    same = prune_fc(model, keep=8)
    torch.testing.assert_close(same.model.eval()(x), model(x))  # keeping every unit changes nothing
    res = prune_fc(model, ratio=0.5, input_size=SIZE)
    norms = model.fc[0].weight.abs().sum(1)
    assert res.kept == sorted(torch.topk(norms, 4).indices.tolist())
    assert res.model.fc[0].out_features == 4 and res.model.classifier.in_features == 4
    assert res.after.params < res.before.params
    act = prune_fc(model, keep=3, importance="activation", calibration=batches[2])
    assert act.model(x).shape == (x.shape[0], 10)
    with pytest.raises(ValueError, match="calibration"):
        prune_fc(model, keep=3, importance="activation")


@pytest.mark.parametrize("importance", list(FC_IMPORTANCES))
def test_every_fc_criterion_keeps_the_asked_units(importance, batches):
    res = prune_fc(tiny(), keep=3, importance=importance, calibration=batches[2], input_size=SIZE)
    assert len(res.kept) == 3 == res.model.fc[0].out_features and res.after.params < res.before.params


# ----------------------------------------------------------------------------------------------- progressive


@pytest.mark.parametrize("importance", ["l1", "activation"])
def test_progressive_prune_reaches_target(batches, importance):
    train, test, calib = batches
    model = create_model("wide_cnn", 10, **TINY)
    target = profile(model, SIZE).flops // 3
    rows = []
    res = progressive_prune(model, torch.zeros(SIZE), fine_tuner(calib, epochs=1, lr=0.01, teacher=model), test,
                            target_flops=target, step_ratio=0.3, importance=importance, calibration=calib,
                            on_step=rows.append)
    assert res.met_target and res.after.flops <= target
    flops = [s.flops for s in res.steps]
    assert flops == sorted(flops, reverse=True) and len(flops) >= 3  # several steps, each smaller
    assert rows == res.steps and res.chosen == len(res.steps) - 1
    assert res.model(calib[0][0]).shape == (16, 10)


def test_progressive_prune_stops_on_max_drop(batches):
    train, test, calib = batches
    model = create_model("wide_cnn", 10, **TINY)
    res = progressive_prune(model, torch.zeros(SIZE), fine_tuner(calib, epochs=1, lr=0.01), test,
                            target_flops=profile(model, SIZE).flops // 4, step_ratio=0.2,
                            max_drop=-1000.0)  # any accuracy "falls" more than −1000 points
    assert res.stopped_early and not res.met_target and len(res.steps) == 2 and res.chosen == 0


# ----------------------------------------------------------------------------------------------- dropout sweep


def test_validation_split_is_balanced_and_disjoint(data):
    fit, val, idx = validation_split(data.train, 0.25, seed=0)
    assert len(fit) + len(val) == len(data.train) and len(val) == 24
    assert torch.bincount(val.labels, minlength=10).max() - torch.bincount(val.labels, minlength=10).min() <= 1
    torch.testing.assert_close(val.images, data.train.images[idx])


def test_sweep_dropout_picks_on_validation_split(data):
    model = create_model("wide_cnn", 10, **TINY)
    res = sweep_dropout(model, [0.0, 0.3, 0.6], data.train, mean=data.mean, std=data.std, val_size=24, epochs=1,
                        batch_size=24)
    assert set(res.accuracies) == {0.0, 0.3, 0.6}
    assert res.accuracies[res.best_rate] == max(res.accuracies.values())
    assert res.model.fc[2].p == res.best_rate and res.model.arch_spec["kwargs"]["dropout"] == res.best_rate
    val = data.train.__class__(data.train.images[res.val_indices], data.train.labels[res.val_indices],
                               data.classes)
    val_batches = BatchIterator(val, 24, train=False, mean=data.mean, std=data.std)
    assert evaluate(res.model, val_batches).accuracy == res.accuracies[res.best_rate]  # scored on the held-out part
    assert set_dropout(model, 0.1).fc[2].p == 0.1 and model.fc[2].p == 0.5


def test_progressive_prune_even_steps_land_on_target(batches):
    _, test, calib = batches
    model = create_model("wide_cnn", 10, **TINY)
    before = profile(model, SIZE).flops
    res = progressive_prune(model, torch.zeros(SIZE), fine_tuner(calib, epochs=1, lr=0.01), test,
                            target_flops=before // 4, num_steps=2)
    assert [s.step for s in res.steps] == [0, 1, 2] and res.met_target
    assert before // 4 < res.steps[1].flops <= int(before * 0.5) and res.after.flops <= before // 4
