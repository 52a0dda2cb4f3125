"""``--initial-checkpoint``: a student that starts from a file's weights (models.load_weights_into,
recipes.plumbing.training.start_from)."""
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

import pruning
from models import create_model, load_weights_into, save_model
from models.errors import FileFormatError
from recipes.plumbing.training import start_from

SMALL = {"widths": [8, 16, 16, 16], "hidden": 32}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _trained_like(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("wide_cnn", 10, **SMALL).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_a_model_file_and_a_safetensors_file_give_their_weights(tmp_path):
    source = _trained_like(1)
    save_model(source, tmp_path / "student.pt", meta={"mean": list(MEAN), "std": list(STD)})
    save_file(source.state_dict(), tmp_path / "student.safetensors")
    for name, meta in (("student.pt", {"mean": list(MEAN), "std": list(STD)}), ("student.safetensors", {})):
        fresh = _trained_like(2)
        assert not torch.equal(fresh.state_dict()["classifier.weight"], source.state_dict()["classifier.weight"])
        assert load_weights_into(fresh, tmp_path / name) == meta
        _same(fresh, source)


def test_a_pruned_model_file_resizes_the_fresh_network(tmp_path):
    pruned = pruning.prune(_trained_like(1), torch.randn(1, 3, 32, 32), ratio=0.5).model
    save_model(pruned, tmp_path / "pruned.pt")
    fresh = _trained_like(2)
    load_weights_into(fresh, tmp_path / "pruned.pt")
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in pruned.parameters())
    _same(fresh, pruned)


def test_a_state_dict_of_other_widths_is_refused_naming_the_option(tmp_path):
    save_file(_trained_like(1).state_dict(), tmp_path / "student.safetensors")  # no widths recorded: --model-args's
    wider = create_model("wide_cnn", 10, widths=[8, 16, 16, 32], hidden=32)
    with pytest.raises(FileFormatError, match=r"^--initial-checkpoint '.*student\.safetensors': .*shape"):
        start_from(wider, str(tmp_path / "student.safetensors"), SimpleNamespace(mean=MEAN, std=STD))


def test_a_model_file_of_other_normalisation_is_refused(tmp_path, capsys):
    save_model(_trained_like(1), tmp_path / "student.pt", meta={"mean": list(MEAN), "std": list(STD)})
    start_from(_trained_like(2), str(tmp_path / "student.pt"), SimpleNamespace(mean=MEAN, std=STD))
    assert "init: the weights of" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"normalised with mean \(0\.49, 0\.48, 0\.45\), but this run normalises "
                                         r"with \(0\.5, 0\.5, 0\.5\)"):
        start_from(_trained_like(2), str(tmp_path / "student.pt"), SimpleNamespace(mean=(0.5,) * 3, std=STD))


def test_a_model_file_brings_its_own_architecture_arguments(tmp_path, capsys):
    """A pruned fast_cnn saved with its defaults (a classifier bias, BatchNorm eps 1e-5, adaptive max pool) starts a
    run whose recipe builds fast_cnn with airbench's head (no bias, eps 1e-12, 3×3 corner pool): the file's network
    goes on training, unchanged, where copying its weights into the recipe's network would not fit."""
    torch.manual_seed(1)
    saved = pruning.prune(create_model("fast_cnn", 10).eval(), torch.randn(1, 3, 32, 32), ratio=0.5).model
    save_model(saved, tmp_path / "student.pt", meta={"mean": list(MEAN), "std": list(STD)})
    recipe_built = create_model("fast_cnn", 10, bn_eps=1e-12, head_pool_mode="max3", classifier_bias=False)
    network = start_from(recipe_built, str(tmp_path / "student.pt"), SimpleNamespace(mean=MEAN, std=STD))
    assert network is not recipe_built and network.classifier.bias is not None
    assert "the network rebuilt as the file records it" in capsys.readouterr().out
    _same(network, saved)


def test_a_model_file_of_another_architecture_is_refused_naming_both(tmp_path):
    save_model(_trained_like(1), tmp_path / "student.pt")  # a wide_cnn
    with pytest.raises(ValueError, match=r"^--initial-checkpoint '.*student\.pt' holds a 'wide_cnn' network, where a "
                                         r"'fast_cnn' one was asked for$"):
        start_from(create_model("fast_cnn", 10), str(tmp_path / "student.pt"), SimpleNamespace(mean=MEAN, std=STD))
