"""Data-parallel training: 2 gloo ranks on the CPU end with the weights of one process on the same global batches.

The models have no BatchNorm (and no dropout): with BatchNorm each rank normalises by its own slice's statistics
unless --sync-bn (CUDA only), so two ranks and one process would differ by design.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kd import Callback, DistillationLoss, Trainer
from kd import distributed
from kd.data import BatchIterator, load_dataset, make_loaders
from kd.teacher_cache import CachedBatchIterator, build_teacher_cache
from models import create_model

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
BATCH = 32  # global batch: 16 per rank


def _net(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * width, 10))


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer, record) -> None:
        trainer.should_stop = record.epoch >= self.epochs


def _fit(out: Path, stop_after: int | None = None, resume: bool = False,
         sizes: list[int] | None = None) -> tuple[nn.Module, list]:
    data = load_dataset("synthetic", image_size=16, limit_train=128, limit_test=64, seed=0, progress=False)
    train, test = make_loaders(data, BATCH, seed=7)
    student = _net(1)
    if sizes is not None:  # the batch sizes the student trains on
        student.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]) if m.training else None)
    trainer = Trainer(student, _net(2, width=12), DistillationLoss(4.0, 0.5), epochs=3, out_dir=out, progress=False,
                      precision="fp32", channels_last=False, callbacks=[StopAfter(stop_after)] if stop_after else [])
    result = trainer.fit(train, test, resume=resume)
    return student, result.history


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        sizes: list[int] = []
        student, history = _fit(Path(tmp) / "ddp", sizes=sizes)
        _fit(Path(tmp) / "cut", stop_after=1)  # "crashes" after epoch 1 ...
        resumed, _ = _fit(Path(tmp) / "cut", resume=True)  # ... and is resumed by both ranks
        # BatchNorm and dropout: each rank's own statistics and masks during training, rank 0's state after fit,
        # and the common random stream again afterwards
        data = load_dataset("synthetic", image_size=16, limit_train=64, limit_test=32, seed=0, progress=False)
        train, _ = make_loaders(data, BATCH, seed=7)
        torch.manual_seed(5)
        bn_model = create_model("wide_cnn", 10, widths=(8, 16), hidden=16, dropout=0.3)
        Trainer(bn_model, epochs=1, progress=False, precision="fp32", channels_last=False).fit(train)
        torch.save({"full": student.state_dict(), "resumed": resumed.state_dict(), "history": history,
                    "sizes": sizes, "bn": bn_model.state_dict(), "after": torch.rand(3)},
                   f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_same_global_batches(tmp_path, one_thread):
    single, single_history = _fit(tmp_path / "single")
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for name, expected in single.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["full"][name], expected, rtol=1e-5, atol=1e-5, msg=name)
            torch.testing.assert_close(r["resumed"][name], expected, rtol=1e-5, atol=1e-5, msg=name)
    for name, value in ranks[0]["bn"].items():
        assert torch.equal(value, ranks[1]["bn"][name]), name
    assert torch.equal(ranks[0]["after"], ranks[1]["after"])
    assert all(r["sizes"] == [BATCH // WORLD] * 12 for r in ranks)  # 3 epochs × 4 steps, each rank half a batch
    for got, want in zip(ranks[0]["history"], single_history):  # summed over ranks: the numbers of the whole data
        assert got.train_loss == pytest.approx(want.train_loss, rel=1e-5)
        assert got.train_accuracy == pytest.approx(want.train_accuracy)
        assert got.val_accuracy == pytest.approx(want.val_accuracy)
        assert got.val_loss == pytest.approx(want.val_loss, rel=1e-5)
    # one set of checkpoints, written by rank 0, in the same place a single process writes them
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


def test_shards_together_are_the_single_process_batch(tiny):
    whole = BatchIterator(tiny.train, 32, train=True, mean=tiny.mean, std=tiny.std, seed=3)
    shards = [BatchIterator(tiny.train, 32, train=True, mean=tiny.mean, std=tiny.std, seed=3, rank=r, world_size=4)
              for r in range(4)]
    for batch, *parts in zip(whole, *shards):
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), batch[0], rtol=0, atol=0)
        assert torch.equal(torch.cat([p[1] for p in parts]), batch[1])
    assert all(s.generator.get_state().equal(whole.generator.get_state()) for s in shards)  # resume stays exact
    test = BatchIterator(tiny.test, 10, train=False, mean=tiny.mean, std=tiny.std)
    served = torch.cat([y for r in range(3) for _, y in test.shard(r, 3)])
    assert served.numel() == len(tiny.test) and sorted(served.tolist()) == sorted(tiny.test.labels.tolist())


def test_cached_teacher_batches_shard_the_same_way(tiny):
    def base():
        return BatchIterator(tiny.train, 32, train=True, mean=tiny.mean, std=tiny.std, seed=5)

    cache = build_teacher_cache(_net(2), tiny.train.images, views=2, mean=tiny.mean, std=tiny.std, progress=False)
    whole = list(CachedBatchIterator(cache, base()))
    halves = [list(CachedBatchIterator(cache, base()).shard(r, 2)) for r in range(2)]  # one process per rank
    assert len(halves[0]) == len(halves[1]) == len(whole)
    for batch, a, b in zip(whole, *halves):
        for k in range(3):  # images, labels, teacher logits
            torch.testing.assert_close(torch.cat([a[k], b[k]]), batch[k], rtol=0, atol=0)


def test_batch_size_must_divide_among_ranks(tiny):
    with pytest.raises(ValueError, match="multiple of 3"):
        BatchIterator(tiny.train, 32, train=True, mean=tiny.mean, std=tiny.std, rank=0, world_size=3)
    assert distributed.shard(torch.arange(8), 1, 2).tolist() == [4, 5, 6, 7]
    assert not distributed.initialized() and distributed.is_main() and distributed.all_reduce_sum([1.0, 2.0]) == [1, 2]


@pytest.mark.slow
def test_torchrun_recipe_prints_and_writes_once(tmp_path):
    """Every recipe goes through recipes.plumbing.run: under torchrun rank 0 alone prints and writes, the others stay silent."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(REPO / "recipes" / "train_teacher.py"), "--dataset", "synthetic", "--limit-train", "64",
           "--limit-test", "32", "--image-size", "16", "--epochs", "2", "--batch-size", "16", "--model-args",
           '{"widths": [8, 16], "hidden": 16}', "--device", "cpu", "--no-progress", "--precision", "fp32",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("Accuracy =") == 1 and run.stdout.count("epoch   2:") == 1
    assert "torchrun: 2 processes, 8 images each" in run.stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert written == ["config.json", "console.log", "inputs.json", "report.json", "sittings.json", "teacher.pt",
                       "teacher_train", "teacher_train/best.pt", "teacher_train/curves.png", "teacher_train/last.pt",
                       "teacher_train/metrics.csv"]
    assert (out / "console.log").read_text().splitlines()[1:] == run.stdout.splitlines()  # rank 0's console, once
    assert len((out / "teacher_train" / "metrics.csv").read_text().splitlines()) == 3  # header + one row per epoch


def test_sync_bn_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(_net(1), sync_bn=True, progress=False)
