"""Every recipe trains through one path (``recipes.plumbing.training.fit_stage``): the shared speed and logging
options (--precision, the memory format, --compile, --tensorboard, --teacher-cache) reach every Trainer a recipe
builds, or are refused in one line where they cannot apply."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import kd.trainer
import recipes.plumbing.checks
import recipes.plumbing.training
from kd.callbacks import Callback
from kd.precision import prefers_channels_last, resolve_precision
from kd.mixup import MixedBatches
from kd.teacher_cache import CachedBatchIterator
from recipes import compare_methods, distill_only, progressive_prune, prune_then_distill, train_teacher
from recipes.plumbing.errors import run_main

TINY = '{"widths": [8, 8, 8, 8], "hidden": 16}'
SYNTHETIC = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16",
             "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-latency"]
# the precision and memory format this CPU would not pick by itself, so that a path that ignores them fails
PRECISION = "fp32" if resolve_precision("auto", "cpu") == "bf16" else "bf16"
CHANNELS_LAST = not prefers_channels_last(PRECISION, "cpu")
OPTIONS = ["--device", "cpu", "--precision", PRECISION, "--channels-last" if CHANNELS_LAST else "--no-channels-last",
           "--tensorboard", "--compile"]

# recipe → its own arguments; "{teacher}" is a trained teacher file. Every one of them distils except train_teacher.
RECIPES = {
    "distill_only": (distill_only, ["--teacher", "{teacher}", "--model-args", '{"widths": [4, 4, 4, 4], "hidden": 8}']),
    "prune_then_distill": (prune_then_distill, ["--teacher", "{teacher}", "--ratio", "0.5"]),
    "progressive_prune": (progressive_prune, ["--teacher", "{teacher}", "--budget", "0.7", "--max-steps", "2",
                                              "--val-size", "0.25"]),
    "compare_methods": (compare_methods, ["--teacher", "{teacher}", "--methods", "l1+kd,scratch+ce",
                                          "--val-size", "0.25"]),
}

pytestmark = pytest.mark.usefixtures("one_thread")


class CompiledStandIn(torch.nn.Module):
    """What ``torch.compile`` returns, without compiling: a wrapper that calls the model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FakeTensorBoard(Callback):
    """Stands in for kd.metrics.TensorBoardLogger (the tensorboard package is optional): records its folder."""

    main_only = True
    folders: list[Path] = []

    def __init__(self, log_dir: Path) -> None:
        FakeTensorBoard.folders.append(Path(log_dir))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    train_teacher.main([*SYNTHETIC[:-1], "--model-args", TINY, "--out", str(out)])
    return out / "teacher.pt"


@pytest.fixture
def trainers(monkeypatch) -> list[dict]:
    """What every ``Trainer.fit`` of the run saw: precision, memory format, teacher, batches, callbacks."""
    seen: list[dict] = []
    fit = kd.trainer.Trainer.fit

    def spy(self, train, val=None, **kwargs):
        seen.append({"precision": self.precision, "channels_last": self.channels_last, "teacher": self.teacher,
                     "compiled": self._forward is not self.student,
                     "distils": getattr(self.loss, "needs_teacher", False), "batches": train,
                     "callbacks": [type(cb) for cb in self.callbacks]})
        return fit(self, train, val, **kwargs)

    monkeypatch.setattr(kd.trainer.Trainer, "fit", spy)
    monkeypatch.setattr(torch, "compile", lambda model, **options: CompiledStandIn(model))  # no minutes of compiling
    monkeypatch.setattr(recipes.plumbing.training, "TensorBoardLogger", FakeTensorBoard)
    monkeypatch.setattr(recipes.plumbing.checks, "tensorboard_available", lambda: True)
    FakeTensorBoard.folders = []
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_shared_options_reach_every_trainer(name, teacher, trainers, tmp_path, capsys):
    recipe, own = RECIPES[name]
    argv = [*SYNTHETIC, *OPTIONS, "--teacher-cache", "2", "--out", str(tmp_path / "out"),
            *(a.replace("{teacher}", str(teacher)) for a in own)]
    recipe.main(argv)
    assert trainers, f"{name} trained nothing"
    for seen in trainers:
        assert seen["precision"] == PRECISION and seen["channels_last"] is CHANNELS_LAST and seen["compiled"]
        assert FakeTensorBoard in seen["callbacks"]
        if seen["distils"]:  # the teacher's logits come from the cache: the teacher itself is never run
            assert seen["teacher"] is None and isinstance(seen["batches"], CachedBatchIterator)
    assert any(s["distils"] for s in trainers)
    assert len(FakeTensorBoard.folders) == len(trainers)  # one log folder per training stage, inside --out
    assert all(f.is_relative_to(tmp_path / "out") for f in FakeTensorBoard.folders)
    out = capsys.readouterr().out
    assert "teacher cache: 2 views" in out
    # a log line per view where the cache is built (an earlier parameter's cache may be reused: then none)
    built = ", built in " in out
    assert ("teacher cache: view 1/2 in" in out and "teacher cache: view 2/2 in" in out) == built


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_mixup_reaches_every_trainer_and_the_teacher_scores_mixed_batches(name, teacher, trainers, tmp_path):
    recipe, own = RECIPES[name]
    recipe.main([*SYNTHETIC, "--mixup", "0.4", "--cutmix", "1.0", "--out", str(tmp_path / "out"),
                 *(a.replace("{teacher}", str(teacher)) for a in own)])
    assert trainers and all(isinstance(s["batches"], MixedBatches) for s in trainers)
    assert any(s["distils"] and s["teacher"] is not None for s in trainers)  # the Trainer runs it on the mixed x


@pytest.mark.slow
def test_train_teacher_honours_the_options_and_refuses_a_teacher_cache(trainers, tmp_path, capsys):
    train_teacher.main([*SYNTHETIC[:-1], *OPTIONS, "--model-args", TINY, "--out", str(tmp_path / "out")])
    assert [(s["precision"], s["channels_last"], s["compiled"], FakeTensorBoard in s["callbacks"]) for s in trainers] \
        == [(PRECISION, CHANNELS_LAST, True, True)]
    with pytest.raises(SystemExit) as info:  # a teacher has no teacher to cache: not an option of this recipe
        run_main(train_teacher.main, [*SYNTHETIC[:-1], "--teacher-cache", "2", "--out", str(tmp_path / "other")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unrecognized arguments: --teacher-cache") and "\n" not in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_main(train_teacher.main, [*SYNTHETIC[:-1], "--tensorboard", "--model-args", TINY,
                                      "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --tensorboard needs the tensorboard package (pip install tensorboard); install it or drop "
                   "--tensorboard (metrics.csv and curves.png are written either way)")
    assert not (tmp_path / "out").exists()
