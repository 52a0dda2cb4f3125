"""``--config FILE``: a recipe re-run from an earlier run's config.json repeats it (same weights, same accuracy);
command-line options override the file; a bad file is one error line; list options parse with their element type."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass

import pytest
import torch

from recipes import compare_methods, distill_only, export, progressive_prune, prune_then_distill, train_teacher
from recipes.plumbing.config import POSITIVE, RunConfig, arg, check_values, parse_config
from recipes.plumbing.errors import run_main

TINY = '{"widths": [8, 8, 8, 8], "hidden": 16}'
SYNTHETIC = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16",
             "--batch-size", "16", "--epochs", "2", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_a_run_repeats_from_its_config_file(tmp_path, capsys):
    first = train_teacher.main([*SYNTHETIC, "--model-args", TINY, "--seed", "3", "--out", str(tmp_path / "a")])
    again = train_teacher.main(["--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")])
    assert again.accuracy == first.accuracy and again.flops == first.flops
    a, b = (torch.load(tmp_path / d / "teacher.pt", weights_only=True)["state_dict"] for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config == {**json.loads((tmp_path / "a" / "config.json").read_text()), "out": str(tmp_path / "b")}


def test_the_command_line_overrides_the_file_and_report_json_works_too(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"dataset": "synthetic", "epochs": 7, "lr": 1, "resume": True,
                                  "model_args": TINY, "out": "x"}))
    cfg = parse_config(train_teacher.TeacherConfig, ["--config", str(config), "--epochs", "2"])
    assert (cfg.dataset, cfg.epochs, cfg.lr, cfg.model_args, cfg.out) == ("synthetic", 2, 1.0, TINY, "x")
    assert isinstance(cfg.lr, float) and cfg.resume is False  # --resume is never read from a file
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accuracy": 50.0, "config": {"epochs": 5}}))
    assert parse_config(train_teacher.TeacherConfig, ["--config", str(report)]).epochs == 5


@pytest.mark.parametrize("body, message", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ({"target_flops": 5}, "options this recipe does not take (target_flops)"),
    ({"epochs": "3"}, "--epochs must be int, got '3'"),
    ({"dataset": "mnist"}, "--dataset 'mnist' is not one of"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, body, message):
    path = tmp_path / "config.json"
    if body is not None:
        path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(SystemExit) as info:
        run_main(train_teacher.main, ["--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: --config") and message in err and "\n" not in err


@dataclass
class _Lists:
    rates: tuple[float, ...] = arg((0.1,), "floats")
    names: tuple[str, ...] = arg(("a",), "words")
    sizes: tuple[int, ...] = arg((1,), "whole numbers")


def test_list_options_parse_with_their_element_type(tmp_path):
    cfg = parse_config(_Lists, ["--rates", "0.2", "0.5", "--names", "x", "y", "--sizes", "2", "3"])
    assert cfg == _Lists((0.2, 0.5), ("x", "y"), (2, 3))
    path = tmp_path / "lists.json"
    path.write_text(json.dumps({"rates": [1, 0.5], "sizes": [4]}))
    assert parse_config(_Lists, ["--config", str(path)]) == _Lists((1.0, 0.5), ("a",), (4,))
    with pytest.raises(SystemExit):
        parse_config(_Lists, ["--sizes", "0.5"])


RECIPE_CONFIGS = [train_teacher.TeacherConfig, distill_only.DistillConfig, prune_then_distill.PruneThenDistillConfig,
                  progressive_prune.ProgressiveConfig, compare_methods.CompareConfig, export.ExportConfig]


@pytest.mark.parametrize("cls", RECIPE_CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_option_declares_its_limit(cls):
    hints = typing.get_type_hints(cls)
    numeric = [f for f in dataclasses.fields(cls) if _is_number(hints[f.name])]
    assert numeric and [f.name for f in numeric if f.metadata.get("limit") is None] == []


def test_a_limit_belongs_to_its_field_not_to_its_name():
    @dataclasses.dataclass
    class Other(RunConfig):
        ratio: float = arg(2.0, "a ratio of another kind", limit=POSITIVE)  # prune_then_distill's is in [0, 1)

    check_values(Other())  # accepted: this recipe's ratio has its own range
    with pytest.raises(ValueError, match=r"--ratio must be in \[0, 1\) \(the fraction of channels removed\), got 2.0"):
        check_values(prune_then_distill.PruneThenDistillConfig(ratio=2.0))
    with pytest.raises(ValueError, match="--latency-batch-sizes must be a whole number >= 1, got 0"):
        check_values(distill_only.DistillConfig(latency_batch_sizes=(1, 0)))


def _is_number(hint) -> bool:
    """int or float, also optional or as the elements of a tuple (bool is not a number option)."""
    if hint in (int, float):
        return True
    return any(_is_number(a) for a in typing.get_args(hint) if a is not Ellipsis)
