"""The model files under benchmarks/weights: listed with their sha256, pickle-free, and as good as their table says."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from kd.data import load_dataset
from kd.data.batches import BatchIterator
from kd.trainer import evaluate
from models import load_model, profile
from models.checkpoint import read_model_file

WEIGHTS = Path(__file__).resolve().parent.parent / "benchmarks" / "weights"
FILES = sorted(WEIGHTS.glob("*.pt"))


def _listed() -> dict[str, str]:
    """file name → sha256, from the README's table rows."""
    rows = re.findall(r"^\| `([^`]+\.pt)` \|.*\| `([0-9a-f]{64})` \|$", (WEIGHTS / "README.md").read_text(), re.M)
    return dict(rows)


def _accuracy_on_1000_test_images(model: torch.nn.Module, meta: dict) -> float:
    """Top-1 % on 1,000 of the shipped copy's test images (class-balanced), normalised as the file's ``meta`` says."""
    data = load_dataset("cifar10-jpeg", limit_train=10, limit_test=1000, progress=False)
    return evaluate(model, BatchIterator(data.test, 500, train=False, mean=meta["mean"], std=meta["std"])).accuracy


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_committed_model_file_is_listed_with_its_sha256(path):
    assert _listed().get(path.name) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_10_epoch_teacher_has_airbenchs_head_and_scores_near_its_table(one_thread):
    path = WEIGHTS / "fast_cnn_cifar10_e10.pt"
    model, meta = load_model(path), read_model_file(path)["meta"]
    assert model.classifier.bias is None and model.pool[0].__class__.__name__ == "CornerMaxPool"
    assert all(m.eps == 1e-12 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # 1,000 of the shipped copy's test images (class-balanced): 89.93 % on all 10,000; a binomial std of ~1 point
    assert 86.0 < _accuracy_on_1000_test_images(model, meta) < 93.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fast_cnn_wide_cifar10_e40.pt", "fast_cnn_wide_kd_cifar10_e40.pt",
                                  "fast_cnn_wide_kd80_cifar10.pt"])
def test_the_wide_teacher_has_airbench95s_widths_and_scores_near_its_table(one_thread, name):
    path = WEIGHTS / name
    model, meta = load_model(path), read_model_file(path)["meta"]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [24, 128, 128, 384, 384, 384, 384]
    # 1,000 of the shipped copy's test images (class-balanced): 91.35 / 91.55 / 91.85 % on all 10,000; binomial std ~0.9
    assert 87.5 < _accuracy_on_1000_test_images(model, meta) < 95.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fast_cnn_budget_kd160_cifar10.pt", "fast_cnn_budget_dkd40_cifar10.pt",
                                  "fast_cnn_budget_dkd_mixup40_cifar10.pt", "fast_cnn_budget_dkd_mixup80_cifar10.pt"])
def test_the_seed_budget_student_fits_the_seeds_budget_and_scores_near_its_table(one_thread, name):
    path = WEIGHTS / name
    model, meta = load_model(path), read_model_file(path)["meta"]
    complexity = profile(model)
    assert (complexity.flops, complexity.params) == (30_667_737, 516_399)
    assert complexity.flops <= 31_269_888 and complexity.param_size_kb <= 8677.812
    # 1,000 of the shipped copy's test images (class-balanced): 89.46 / 90.16 / 90.19 / 90.87 % on all; binomial std ~1
    assert 85.5 < _accuracy_on_1000_test_images(model, meta) < 93.0
