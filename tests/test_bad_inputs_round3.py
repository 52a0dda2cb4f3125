"""Nothing lost, nothing escapes, round 3 (issue 30): export never replaces its input, ``--config`` re-runs derive the
recipe's values again when the recipe or the batch changes, distill_only's ``--model-args`` follow ``--arch``, an
impossible reflect padding is refused before any write, kd_gain reuses only cells measured from the same inputs and
ends every bad argument in one line, ``--overwrite`` removes the earlier run's outputs but not this run's inputs, a
slower student is called slower, and a diverged run says where in one line."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from models import create_model, profile, save_model
from models.latency import LatencyResult
from recipes import distill_only, export, train_teacher
from recipes.plumbing.checks import build_model
from recipes.plumbing.config import KDConfig, parse_config, save_config
from recipes.plumbing.errors import run_main
from recipes.plumbing.option_checks import check_options

TINY = '{"widths": [8, 8, 8, 8], "hidden": 16}'
SYNTHETIC = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16",
             "--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def fail(main, argv: list[str], capsys) -> str:
    """``main(argv)`` under ``run_main``: exit status 2 and exactly one ``error:`` line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ 1. export spares its input


@pytest.fixture
def model_file(tmp_path) -> Path:
    """A tiny wide_cnn saved as the recipes save it, trained (as its meta says) on 16-pixel images."""
    path = tmp_path / "student.pt"
    save_model(create_model("wide_cnn", 10, widths=[4, 4, 4, 4], hidden=8), path,
               meta={"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    return path


@pytest.mark.parametrize("out", ["student.pt", "./sub/../student.pt"])
def test_export_refuses_an_out_that_is_its_own_student_file(out, model_file, tmp_path, monkeypatch, capsys):
    import recipes.plumbing.option_checks as checks

    monkeypatch.setattr(checks, "missing_deploy_packages", lambda: [])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = contents(tmp_path)
    line = fail(export.main, ["--student", "student.pt", "--out", out], capsys)
    assert "which is the --student file" in line and "another --out" in line
    assert contents(tmp_path) == before  # the trained model is intact and nothing else was written


def test_export_refuses_an_out_whose_export_json_is_its_config_file(model_file, tmp_path, monkeypatch, capsys):
    import recipes.plumbing.option_checks as checks

    monkeypatch.setattr(checks, "missing_deploy_packages", lambda: [])
    config = tmp_path / "student.export.json"  # what an earlier export of student.pt wrote
    config.write_text(json.dumps({"config": {"student": str(model_file), "batch_sizes": [1]}}))
    before = contents(tmp_path)
    line = fail(export.main, ["--config", str(config)], capsys)
    assert "which is the --config file this export reads" in line and contents(tmp_path) == before


def test_export_refuses_an_image_size_the_model_file_contradicts(model_file, tmp_path, monkeypatch, capsys):
    import recipes.plumbing.option_checks as checks

    monkeypatch.setattr(checks, "missing_deploy_packages", lambda: [])
    line = fail(export.main, ["--student", str(model_file), "--image-size", "32"], capsys)
    assert "was trained on 16-pixel images" in line and "--image-size 16" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.pt"]


def test_export_takes_the_recorded_size_and_image_size_only_where_none_is_recorded(tmp_path):
    model = create_model("wide_cnn", 10, widths=[4, 4, 4, 4], hidden=8)
    model.meta = {"image_size": 16}
    assert export._input_size(export.ExportConfig(student="m.pt"), model) == (3, 16, 16)
    assert export._input_size(export.ExportConfig(student="m.pt", image_size=16), model) == (3, 16, 16)
    model.meta = {}
    assert export._input_size(export.ExportConfig(student="m.pt", image_size=24), model) == (3, 24, 24)


# ---------------------------------------------------------------- 2. --config re-runs derive the recipe again


def saved_config(tmp_path: Path, argv: list[str], cls: type = train_teacher.TeacherConfig) -> Path:
    """The config.json a run with ``argv`` writes (start_run saves the parsed config with save_config)."""
    path = tmp_path / "config.json"
    save_config(parse_config(cls, argv), path)
    return path


def test_a_fast_runs_config_rerun_with_recipe_classic_is_classic(tmp_path):
    path = saved_config(tmp_path, ["--recipe", "fast", "--epochs", "3"])
    assert json.loads(path.read_text())["_derived"][:3] == ["batch_size", "bn_bias_lr_scale", "bn_momentum"]
    rerun = parse_config(train_teacher.TeacherConfig, ["--config", str(path), "--recipe", "classic"])
    fresh = parse_config(train_teacher.TeacherConfig, ["--recipe", "classic", "--epochs", "3"])
    assert dataclasses.asdict(rerun) == dataclasses.asdict(fresh)
    assert (rerun.batch_size, rerun.lr, rerun.schedule, rerun.ema, rerun.init, rerun.flip, rerun.epochs) == (
        128, 0.05, "cosine", 0.0, "default", "random", 3)  # epochs was given in the first run: it stays


def test_a_fast_runs_config_rerun_with_another_batch_scales_the_rate(tmp_path):
    path = saved_config(tmp_path, ["--recipe", "fast"])
    rerun = parse_config(train_teacher.TeacherConfig, ["--config", str(path), "--batch-size", "64"])
    assert rerun.batch_size == 64 and rerun.lr == pytest.approx(1.5 * 64 / 1024)
    assert rerun.schedule == "triangular" and rerun.ema == 0.0 and rerun.lookahead  # same recipe: its other values as before
    assert dataclasses.asdict(rerun) == dataclasses.asdict(
        parse_config(train_teacher.TeacherConfig, ["--recipe", "fast", "--batch-size", "64"]))


def test_a_value_given_in_the_first_run_stays_and_an_unchanged_rerun_repeats(tmp_path):
    path = saved_config(tmp_path, ["--recipe", "fast", "--lr", "0.4", "--ema", "0"])
    rerun = parse_config(train_teacher.TeacherConfig, ["--config", str(path), "--recipe", "classic"])
    assert (rerun.lr, rerun.ema, rerun.batch_size, rerun.momentum) == (0.4, 0.0, 128, 0.9)
    same = tmp_path / "same"
    same.mkdir()
    save_config(parse_config(train_teacher.TeacherConfig, ["--config", str(path)]), same / "config.json")
    assert json.loads((same / "config.json").read_text()) == json.loads(path.read_text())


def test_a_config_file_from_before_derived_was_recorded_is_still_read(tmp_path):
    path = saved_config(tmp_path, ["--recipe", "fast", "--lr", "0.4"])
    body = json.loads(path.read_text())
    del body["_derived"]
    path.write_text(json.dumps(body))
    rerun = parse_config(train_teacher.TeacherConfig, ["--config", str(path), "--recipe", "classic"])
    assert (rerun.batch_size, rerun.schedule, rerun.ema, rerun.lr) == (128, "cosine", 0.0, 0.4)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"config": {**body, "_derived": ["nope"]}}))
    with pytest.raises(ValueError, match="_derived must list option names"):
        parse_config(train_teacher.TeacherConfig, ["--config", str(report)])


# ------------------------------------------------------------------- 3. distill_only's --model-args per --arch


def test_distill_only_builds_the_architectures_own_default_student():
    fast = parse_config(distill_only.DistillConfig, ["--arch", "fast_cnn"])
    flops = profile(build_model(fast.arch, fast.model_args), (1, 3, 32, 32)).flops  # as check_models builds it
    assert fast.model_args == "{}" and flops == profile(create_model("fast_cnn", 10), (1, 3, 32, 32)).flops
    resnet = parse_config(distill_only.DistillConfig, ["--arch", "resnet20"])
    build_model(resnet.arch, resnet.model_args)  # accepted: no widths or hidden the user never gave
    wide = parse_config(distill_only.DistillConfig, [])
    assert json.loads(wide.model_args) == {"widths": [32, 64, 128, 128], "hidden": 256}
    assert parse_config(distill_only.DistillConfig, ["--arch", "fast_cnn", "--model-args", TINY]).model_args == TINY


def test_a_distill_config_rerun_with_another_arch_takes_that_archs_default(tmp_path):
    path = saved_config(tmp_path, [], distill_only.DistillConfig)
    rerun = parse_config(distill_only.DistillConfig, ["--config", str(path), "--arch", "resnet20"])
    assert rerun.model_args == "{}"
    given = saved_config(tmp_path, ["--model-args", TINY], distill_only.DistillConfig)
    assert parse_config(distill_only.DistillConfig, ["--config", str(given), "--arch", "fast_cnn"]).model_args == TINY


# ------------------------------------------------------------------------- 4. impossible reflect padding


def test_an_impossible_reflect_padding_is_refused_before_any_write(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*SYNTHETIC, "--image-size", "32", "--model-args", TINY, "--pad-mode", "reflect", "--out", str(out)]
    line = fail(train_teacher.main, [*argv, "--pad", "32"], capsys)
    assert "--pad-mode reflect mirrors at most 31 pixels of a 32-pixel image, but --pad is 32" in line
    assert not out.exists()  # so the corrected command is not refused as "an earlier run"
    check_options(parse_config(train_teacher.TeacherConfig, [*argv, "--pad", "31"]))


# ----------------------------------------------------------------------------- 5. benchmarks/kd_gain.py


@pytest.fixture
def kd_gain(tmp_path, monkeypatch):
    """benchmarks/kd_gain.py with its results folder in ``tmp_path`` and cells that must not run."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kd_gain.py"
    spec = importlib.util.spec_from_file_location("kd_gain_round3", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()

    def no_run(*args, **kwargs):
        raise AssertionError("a cell ran")

    monkeypatch.setattr(module, "run_cell", no_run)
    return module


@pytest.fixture
def gain_inputs(tmp_path) -> list[str]:
    """A teacher file and a data folder (kd_gain only hashes them here) and a one-cell grid."""
    (tmp_path / "teacher.pt").write_bytes(b"teacher one")
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        (tmp_path / "data" / split / "cat" / "0.png").write_bytes(b"pixels")
    return ["--teacher", str(tmp_path / "teacher.pt"), "--data-dir", str(tmp_path / "data"), "--flops", "1000",
            "--epochs", "2", "--losses", "ce", "--lrs", "0.1", "--seeds", "0", "--tag", "t", "--recipe", "fast"]


def cell(kd_gain, tmp_path, argv_inputs: dict, **changes) -> Path:
    record = {"cell": "t_f1000_e2_ce_lr0.1_s0", "flops_target": 1000, "epochs": 2, "loss": "ce", "lr": 0.1,
              "seed": 0, "recipe": "fast", **argv_inputs, "accuracy": 50.0, "wall_s": 10.0, **changes}
    path = tmp_path / "results" / "t_f1000_e2_ce_lr0.1_s0.json"
    path.write_text(json.dumps(record))
    return path


def test_kd_gain_reuses_a_cell_measured_from_the_same_inputs(kd_gain, gain_inputs, tmp_path, capsys):
    inputs = {"teacher_sha256": kd_gain.file_sha256(tmp_path / "teacher.pt"), "data_dir": "elsewhere",
              "data_sha256": kd_gain.data_sha256(tmp_path / "data"), "optimizer": "muon"}
    cell(kd_gain, tmp_path, inputs)
    run_main(kd_gain.main, gain_inputs)
    assert "1 of 1 cells done" in capsys.readouterr().out  # a copy of the images elsewhere is the same data


@pytest.mark.parametrize("change, expected", [
    ({"teacher_sha256": "0" * 64}, "measured from a teacher with sha256 000000000000..."),
    ({"recipe": "classic"}, "measured with --recipe classic, this run has --recipe fast"),
    ({"optimizer": None}, "its student trained with --optimizer sgd, this run's with --optimizer muon"),
    ({"data_sha256": "f" * 64}, "measured on other images (data sha256 ffffffffffff..."),
    ({"data_sha256": None, "command": "python recipes/prune_then_distill.py --data-dir /other/c10 --seed 0"},
     "measured on --data-dir '/other/c10'"),
])
def test_kd_gain_refuses_a_cell_measured_from_other_inputs(change, expected, kd_gain, gain_inputs, tmp_path,
                                                           capsys):
    inputs = {"teacher_sha256": kd_gain.file_sha256(tmp_path / "teacher.pt"), "data_dir": str(tmp_path / "data"),
              "data_sha256": kd_gain.data_sha256(tmp_path / "data"), "optimizer": "muon"}
    path = cell(kd_gain, tmp_path, inputs, **change)
    body = json.loads(path.read_text())
    for key in [k for k, v in change.items() if v is None]:  # a cell from before the images' sha256 / the optimizer
        del body[key]                                            # was recorded
    path.write_text(json.dumps(body))
    before = path.read_bytes()
    line = fail(kd_gain.main, gain_inputs, capsys)
    assert "cell t_f1000_e2_ce_lr0.1_s0 cannot be reused" in line and expected in line and "another --tag" in line
    assert path.read_bytes() == before


def test_kd_gain_does_not_reuse_one_teachers_cell_for_an_ensemble(kd_gain, gain_inputs, tmp_path, capsys):
    one = kd_gain.file_sha256(tmp_path / "teacher.pt")
    path = cell(kd_gain, tmp_path, {"teacher_sha256": one, "data_dir": str(tmp_path / "data"),
                                    "data_sha256": kd_gain.data_sha256(tmp_path / "data")})
    second = tmp_path / "second.pt"
    second.write_bytes((tmp_path / "teacher.pt").read_bytes() + b"x")  # another file: only its sha256 is read
    argv = list(gain_inputs)
    at = argv.index("--teacher") + 2
    line = fail(kd_gain.main, [*argv[:at], str(second), *argv[at:]], capsys)
    assert "cannot be reused" in line and f"is 2 teachers with sha256 {one[:12]}...+" in line
    assert path.is_file()


def test_kd_gain_bad_arguments_and_files_are_one_line(kd_gain, gain_inputs, tmp_path, capsys):
    assert "argument --flops: 'abc' is not a comma-separated list of ints" in fail(
        kd_gain.main, [*gain_inputs, "--flops", "abc"], capsys)
    assert "--teacher 'missing.pt' is not a file" in fail(kd_gain.main, [*gain_inputs, "--teacher", "missing.pt"],
                                                           capsys)
    assert "--losses: unknown nope" in fail(kd_gain.main, [*gain_inputs, "--losses", "ce,nope"], capsys)
    assert "the folder" in fail(kd_gain.main, [*gain_inputs, "--plot", str(tmp_path / "none" / "d.svg")], capsys)
    path = cell(kd_gain, tmp_path, {})
    path.write_text(path.read_text()[:40])
    line = fail(kd_gain.main, ["--table", "--tag", "t"], capsys)
    assert str(path) in line and "is not valid JSON" in line and "truncated" in line
    path.write_text("[1, 2]")
    assert "is not a finished cell's record" in fail(kd_gain.main, ["--table", "--tag", "t"], capsys)


def test_the_other_benchmarks_end_bad_arguments_in_one_line(capsys):
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    cases = (("fast_recipe", ["--bogus"]), ("ema_vs_raw", ["missing_run"]), ("batch_speed", ["--batch-sizes", "x"]))
    for name, argv in cases:
        spec = importlib.util.spec_from_file_location(f"{name}_round3", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        line = fail(module.main, argv, capsys)
        assert name != "ema_vs_raw" or "missing_run" in line


# --------------------------------------------------------------------------------------- 6. --overwrite


def earlier_run(out: Path) -> None:
    """What a train_teacher run and a prune_then_distill run leave in ``out``, and two files of the user's."""
    for name in ("config.json", "inputs.json", "report.json", "teacher.pt", "student.pt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    for stage in ("teacher_train", "student_train"):
        for name in ("last.pt", "best.pt", "metrics.csv", "curves.png", "tb/events.out.tfevents.1"):
            (out / stage / name).parent.mkdir(parents=True, exist_ok=True)
            (out / stage / name).write_text(name)
    (out / "notes.txt").write_text("mine")
    (out / "images" / "cat").mkdir(parents=True, exist_ok=True)
    (out / "images" / "cat" / "0.png").write_text("mine")


def test_overwrite_removes_the_earlier_runs_outputs_and_keeps_inputs_and_other_files(tmp_path):
    from recipes.plumbing.outdir import prepare_out

    out = tmp_path / "run"
    earlier_run(out)
    cfg = parse_config(KDConfig, ["--out", str(out), "--overwrite", "--teacher", str(out / "teacher.pt")])
    prepare_out(cfg, out)
    assert sorted(contents(out)) == ["images/cat/0.png", "notes.txt", "teacher.pt"]  # teacher.pt is this run's input
    assert sorted(p.name for p in out.iterdir()) == ["images", "notes.txt", "teacher.pt"]  # no empty stage folders
    earlier_run(out)
    prepare_out(parse_config(KDConfig, ["--out", str(out), "--overwrite"]), out)
    assert sorted(contents(out)) == ["images/cat/0.png", "notes.txt"]
    earlier_run(out)
    prepare_out(parse_config(KDConfig, ["--out", str(out)]), out)  # without --overwrite nothing is removed
    assert "teacher_train/metrics.csv" in contents(out)


def test_a_teacher_that_this_run_would_overwrite_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    earlier_run(out)
    save_model(create_model("wide_cnn", 10, widths=[4, 4, 4, 4], hidden=8), out / "student.pt")  # a readable model
    before = contents(out)
    argv = [*SYNTHETIC, "--teacher", str(out / "student.pt"), "--out", str(out), "--overwrite"]
    line = fail(distill_only.main, argv, capsys)
    assert "is a file this run writes" in line and "student.pt" in line
    assert contents(out) == before


# ------------------------------------------------------------------------- 7. a slower student is slower


def test_latency_says_slower_for_a_student_slower_than_its_teacher(monkeypatch, capsys, tmp_path):
    from recipes.plumbing import deploy

    teacher, student = torch.nn.Identity(), torch.nn.Identity()

    def timed(model, shape, batch_sizes, **kwargs):  # the student takes 6 ms where the teacher takes 5
        ms = 5.0 if model is teacher else 6.0
        return [LatencyResult(b, ms, ms, ms, 1000 * b / ms, 1, "fp32") for b in batch_sizes]

    monkeypatch.setattr(deploy, "measure_latency", timed)
    cfg = parse_config(KDConfig, ["--device", "cpu", "--precision", "fp32", "--latency-batch-sizes", "1"])
    found = deploy.deployment(cfg, teacher, student, (1, 3, 16, 16), tmp_path)
    printed = capsys.readouterr().out
    assert "1.20x slower" in printed and "faster" not in printed
    assert found["latency"]["speedup"][1] == pytest.approx(5 / 6)  # report.json keeps the plain ratio
    assert deploy.speed_wording(6.0, 5.0).strip() == "1.20x faster"


# ------------------------------------------------------------------------------------------ 8. divergence


def test_a_run_whose_validation_loss_is_nan_ends_in_one_line_naming_stage_and_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    line = fail(train_teacher.main, [*SYNTHETIC, "--model-args", TINY, "--lr", "1e8", "--out", str(out)], capsys)
    assert re.search(r"stage 'teacher_train': the (training|validation) loss became (nan|inf) at epoch 1", line)
    assert "the run diverged" in line
    assert "nothing non-finite was saved" in line
    # no model, checkpoint or metrics
    assert sorted(contents(out)) == ["config.json", "console.log", "inputs.json", "sittings.json"]
    assert (out / "console.log").read_text().rstrip().endswith(line)  # the line that ended the run is kept


def test_a_model_file_named_safetensors_is_read_for_what_it_holds(tmp_path):
    """A model file renamed ``.safetensors`` is a torch.save file: it loads (torch.load would read the name as
    safetensors and call the file corrupt)."""
    from models import create_model, load_model, save_model

    model = create_model("wide_cnn", 10, widths=[8, 8, 8, 8], hidden=16)
    save_model(model, tmp_path / "m.pt")
    renamed = tmp_path / "m.safetensors"
    (tmp_path / "m.pt").rename(renamed)
    again = load_model(renamed)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(again(x), model(x))
