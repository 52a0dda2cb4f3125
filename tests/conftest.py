"""Shared fixtures: tiny synthetic data, the real CIFAR-10 JPEGs shipped with the tests, a private cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd.data import load_dataset
from models.latency import num_threads

REPO = Path(__file__).resolve().parents[1]
# 600 real CIFAR-10 JPEGs: 40 training and 20 test images per class (tests/data/cifar10/README.md)
CIFAR10_DIR = REPO / "tests" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setenv("PTD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """The real CIFAR-10 images shipped with the suite (ImageFolder layout: 400 training, 200 test images)."""
    return CIFAR10_DIR


@pytest.fixture
def synthetic():
    """512 training / 256 test synthetic 32×32 images of 10 classes."""
    return load_dataset("synthetic", limit_train=512, limit_test=256, seed=0)


@pytest.fixture
def tiny():
    """128 training / 64 test synthetic 16×16 images of 10 classes (for mechanics, not learning)."""
    return load_dataset("synthetic", image_size=16, limit_train=128, limit_test=64, seed=0)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread beats two that spin against each other (and against other processes)."""
    with num_threads(1):
        yield
