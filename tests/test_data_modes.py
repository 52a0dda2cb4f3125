"""Stream mode (files decoded in DataLoader workers) serves the batches memory mode serves, on real JPEGs."""
from __future__ import annotations

import pytest
import torch

from kd.data import BatchIterator, FileSplit, StreamBatchIterator, choose_data_mode, load_dataset, make_loaders

pytestmark = pytest.mark.slow  # decodes real images in DataLoader worker processes


@pytest.fixture(scope="module")
def both(cifar10_dir, tmp_path_factory):
    options = {"limit_train": 40, "limit_test": 20, "cache_dir": tmp_path_factory.mktemp("decoded"), "progress": False}
    return (load_dataset("imagefolder", cifar10_dir, data_mode="memory", **options),
            load_dataset("imagefolder", cifar10_dir, data_mode="stream", **options))


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_batches_equal_memory_batches(both, workers):
    memory, stream = both
    assert isinstance(stream.train, FileSplit) and stream.mode == "stream" and memory.mode == "memory"
    assert stream.mean == memory.mean and stream.std == memory.std  # all 40 images sampled: the same statistics
    assert stream.input_size == memory.input_size and stream.classes == memory.classes
    mem_train, mem_test = make_loaders(memory, 8, seed=3)
    str_train, str_test = make_loaders(stream, 8, seed=3, workers=workers)
    assert isinstance(str_train, StreamBatchIterator) and len(str_train) == len(mem_train) == 5
    global_rng = torch.get_rng_state()
    for epoch in range(2):
        for (xm, ym), (xs, ys) in zip(mem_train, str_train, strict=True):
            assert torch.equal(xm, xs) and torch.equal(ym, ys)
    assert torch.equal(torch.get_rng_state(), global_rng)  # dropout masks of training stay those of memory mode
    assert torch.equal(mem_train.generator.get_state(), str_train.generator.get_state())
    for (xm, ym), (xs, ys) in zip(mem_test, str_test, strict=True):
        assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_stream_shards_like_memory(both):
    memory, stream = both
    whole = BatchIterator(memory.train, 8, train=True, mean=memory.mean, std=memory.std, seed=1)
    halves = [StreamBatchIterator(stream.train, 8, train=True, mean=stream.mean, std=stream.std, seed=1, workers=0,
                                  rank=r, world_size=2) for r in range(2)]
    for (x, y), (xa, ya), (xb, yb) in zip(whole, *halves, strict=True):
        assert torch.equal(torch.cat([xa, xb]), x) and torch.equal(torch.cat([ya, yb]), y)


def test_auto_picks_by_decoded_size(cifar10_dir):
    assert choose_data_mode(3 * 32 * 32 * 100, budget_bytes=1e6)[0] == "memory"
    mode, why = choose_data_mode(3 * 32 * 32 * 1000, budget_bytes=4e6, processes_per_node=2)
    assert mode == "stream" and "per process (2 on this node)" in why
    small = load_dataset("imagefolder", cifar10_dir, limit_train=20, limit_test=10, data_mode="auto",
                         memory_budget=25 * 3 * 32 * 32, progress=False)
    assert small.mode == "stream" and "budget" in small.mode_reason
    with pytest.raises(ValueError, match="imagefolder"):
        load_dataset("synthetic", data_mode="stream")
    with pytest.raises(ValueError, match="memory"):
        load_dataset("imagefolder", cifar10_dir, limit_train=20, limit_test=10, data_mode="stream",
                     skip_bad_images=True)
