"""The command line as a user meets it: options in groups, short help, --config YAML, --print-config, the time
estimate of a long stage, and nothing Unix-only."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from kd.callbacks import EstimatePrinter
from recipes import compare_methods, distill_only, export, progressive_prune, prune_then_distill, train_teacher
from recipes.plumbing.config import GROUP_OF, JSON_FIELDS, parse_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = [train_teacher, prune_then_distill, distill_only, progressive_prune, compare_methods, export]
HELP_CHARS = 170  # two lines of a terminal


def _config_class(recipe) -> type:
    return next(obj for name, obj in vars(recipe).items() if name.endswith("Config") and dataclasses.is_dataclass(obj)
                and obj.__module__ == recipe.__name__)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.__name__.split(".")[-1])
def test_every_option_is_in_a_help_group_with_a_short_help(recipe, capsys):
    fields = dataclasses.fields(_config_class(recipe))
    assert [f.name for f in fields if f.name not in GROUP_OF] == []
    long = [f.name for f in fields if len(f.metadata.get("help", "")) > HELP_CHARS]
    assert long == []
    with pytest.raises(SystemExit) as info:
        recipe.main(["--help"])
    assert info.value.code == 0
    shown = capsys.readouterr().out
    assert "data options:" in shown and "output options:" in shown and "--print-config" in shown
    assert "other options:" not in shown


def test_a_yaml_config_with_nested_model_arguments_is_read(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: synthetic\nrecipe: fast\nbatch-size: 256\nmodel_args:\n  widths: [8, 8, 8, 8]\n"
                    "  hidden: 16\nlatency_batch_sizes: [1, 8]\n")
    cfg = parse_config(distill_only.DistillConfig, ["--config", str(path), "--epochs", "3"])
    assert (cfg.dataset, cfg.recipe, cfg.batch_size, cfg.epochs) == ("synthetic", "fast", 256, 3)
    assert json.loads(cfg.model_args) == {"widths": [8, 8, 8, 8], "hidden": 16}
    assert cfg.latency_batch_sizes == (1, 8)
    assert cfg.lr == pytest.approx(1.5 * 256 / 1024)  # the recipe still scales what the file did not set


@pytest.mark.parametrize("text, message", [("epochs: [1, 2\n", "is not valid YAML at line"),
                                           ("- a list\n", "does not hold an object of options"),
                                           ("epochs: three\n", "--epochs must be int")])
def test_a_bad_yaml_config_is_named(tmp_path, text, message):
    path = tmp_path / "run.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(train_teacher.TeacherConfig, ["--config", str(path)])


def test_print_config_prints_what_config_reads_back(tmp_path, capsys):
    argv = ["--recipe", "fast", "--batch-size", "512", "--model-args", '{"widths": [8, 8, 8, 8], "hidden": 16}']
    with pytest.raises(SystemExit) as info:
        parse_config(distill_only.DistillConfig, [*argv, "--print-config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["lr"] == pytest.approx(0.75) and values["model_args"] == {"widths": [8, 8, 8, 8], "hidden": 16}
    path = tmp_path / "resolved.yaml"
    path.write_text(printed)
    again = parse_config(distill_only.DistillConfig, ["--config", str(path)])
    assert again == parse_config(distill_only.DistillConfig, argv)
    assert set(JSON_FIELDS) & set(values) == {"model_args", "teacher_model_args", "loss_args"}


class _FakeTrainer:
    epochs, epoch = 3, 1


def test_the_estimate_is_seconds_per_step_times_the_steps_left(monkeypatch, capsys):
    clock = iter(range(0, 1000, 2))  # every call to the clock advances it by 2 s
    monkeypatch.setattr("kd.callbacks.time.perf_counter", lambda: float(next(clock)))
    printer = EstimatePrinter(steps_per_epoch=100, skip=2, measure=4, min_seconds=60)
    for step in range(10):
        printer.on_step_end(_FakeTrainer(), step, 1.0)
    left = 2 * 100 + (100 - 5 - 1)  # two more epochs and the rest of this one after step index 5
    assert printer.estimate == pytest.approx(0.5 * left)  # 2 s over 4 steps
    assert "estimate: about 2 min of training left (294 steps at 0.50 s/step" in capsys.readouterr().out


def test_no_module_of_the_project_imports_fcntl():
    sources = [p for d in ("kd", "models", "pruning", "recipes", "benchmarks") for p in (REPO / d).rglob("*.py")]
    assert sources and [str(p) for p in sources if re.search(r"^\s*(import fcntl|from fcntl)", p.read_text(), re.M)] == []
