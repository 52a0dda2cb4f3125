import pytest
import torch
from torch import nn

from models import create_model, list_models, load_model, save_model
from models.wide_cnn import WideCNN

ALL = list_models() + ["timm:resnet18"]


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_finite_and_backward(name):
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_model_file_round_trip(tmp_path, name):
    model = create_model(name, num_classes=5).eval()
    save_model(model, tmp_path / "m.pt", meta={"accuracy": 12.5})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["arch"] == name and payload["num_classes"] == 5
    loaded = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.meta == {"accuracy": 12.5}


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="wide_cnn"):
        create_model("vgg_nonexistent")
    with pytest.raises(ValueError, match="timm"):
        create_model("timm:not_a_timm_model")


def test_wide_cnn_default_is_the_lab_teacher():
    model = create_model("wide_cnn", num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4
    pools = [name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert pools == ["features.conv2.pool", "features.conv4.pool"]
    assert model.fc[0].out_features == 512 and model.fc[2].p == 0.5
    assert model.arch_spec == {"name": "wide_cnn", "num_classes": 100, "kwargs": {}}


def test_wide_cnn_hand_methods_are_configurations():
    model = WideCNN(10, widths=(16, 32), kernel_sizes=(3, 1), hidden=0, dropout=0.2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and convs[1].kernel_size == (1, 1)  # fewer layers, 1×1 compression
    assert not any(isinstance(m, nn.Linear) for m in model.fc.modules())  # hidden FC removed
    assert model.fc.p == 0.2
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("kwargs", [
    {"widths": ()}, {"widths": (8, 0)}, {"kernel_sizes": 2}, {"kernel_sizes": (3, 3)}, {"hidden": -1},
    {"dropout": 1.0}, {"head_pool": 0},
])
def test_wide_cnn_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        WideCNN(10, **kwargs)


def test_shufflenet_has_a_cifar_stem():
    model = create_model("shufflenet_v2", 10)
    assert model.conv1[0].stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    feats = model.stage2(model.conv1(torch.randn(1, 3, 32, 32)))
    assert feats.shape[-1] == 16  # 32 → 16 in stage 2, not 32 → 4 as with the ImageNet stem
