"""Bring your own network (issue 25): teachers from weight files, any nn.Module through prune / save / load,
Torch-Pruning's own options, students that leave the project, and refusals that name the option. End-to-end recipe
runs are marked slow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import pruning
from byon_nets import SmallNet
from models import (
    HeadMismatchError, create_model, load_model, load_network, profile, read_weights, save_model, save_portable,
)
from models.errors import FileFormatError
from recipes import prune_then_distill, train_teacher
from recipes.plumbing.errors import run_main

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DATA = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--image-size", "16", "--epochs", "1",
        "--batch-size", "32", "--no-progress", "--device", "cpu", "--precision", "fp32"]
SYNTHETIC = [*DATA, "--no-latency"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm_files(folder: Path, classes: int = 10) -> tuple[nn.Module, Path, Path]:
    """timm's tiny test_resnet, its weights as .safetensors and as a .pth wrapped as a DDP training script saves it."""
    net = timm.create_model("test_resnet", num_classes=classes).eval()
    plain = folder / f"r{classes}.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(plain))
    wrapped = folder / f"r{classes}.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, wrapped)
    return net, plain, wrapped


def _fail(recipe, argv: list[str], capsys) -> str:
    """``recipe.main(argv)`` under run_main: exit status 2 and one ``error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(recipe.main, argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---------------------------------------------------------------------------------------- 1. teachers from anywhere

def test_weights_load_plain_wrapped_and_prefixed_with_the_same_outputs(tmp_path):
    net, plain, wrapped = _timm_files(tmp_path)
    ema = tmp_path / "ema.pt"
    shifted = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"state_dict": net.state_dict(), "state_dict_ema": shifted}, ema)  # timm prefers the EMA weights
    x = torch.randn(2, 3, 32, 32)
    for path in (plain, wrapped):
        loaded = load_network("timm:test_resnet", path)
        assert torch.equal(loaded(x), net(x))
        assert loaded.arch_spec == {"name": "timm:test_resnet", "num_classes": 10, "kwargs": {}}
    assert torch.equal(read_weights(ema)["fc.bias"], net.fc.bias + 1)
    renamed = tmp_path / "really_safetensors.pth"  # the kind is read from the bytes, not the name
    renamed.write_bytes(plain.read_bytes())
    assert torch.equal(read_weights(renamed)["fc.weight"], net.fc.weight)


def test_a_mismatch_names_the_first_offending_key(tmp_path):
    net, plain, _ = _timm_files(tmp_path)
    state = dict(net.state_dict())
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :3].contiguous()
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, str(bad))
    with pytest.raises(FileFormatError, match=r"'layer1.0.conv1.weight' has shape"):
        load_network("timm:test_resnet", bad)
    with pytest.raises(FileFormatError, match=r"'conv1.1.num_batches_tracked' is not a parameter or buffer"):
        load_network("timm:resnet18", plain)


def test_a_head_of_other_classes_is_refused_or_replaced(tmp_path):
    net, plain, _ = _timm_files(tmp_path, classes=7)
    with pytest.raises(HeadMismatchError, match="gives 7 classes but the data has 10"):
        load_network("timm:test_resnet", plain, num_classes=10)
    fresh = load_network("timm:test_resnet", plain, num_classes=10, new_head=True)
    assert fresh.get_classifier().out_features == 10 and fresh.arch_spec["num_classes"] == 10
    assert torch.equal(fresh.conv1[0].weight, net.conv1[0].weight)  # the body keeps its weights


def test_torchvision_and_own_factories_load_by_import_path(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(num_classes=7).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    loaded = load_network("torchvision.models:resnet18", tmp_path / "tv.pth")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), tv(x)) and loaded.fc.out_features == 7
    own = SmallNet(classes=4).eval()
    torch.save({"model": own.state_dict()}, tmp_path / "own.pt")
    assert torch.equal(load_network("byon_nets:make_small_net", tmp_path / "own.pt")(x), own(x))


def test_seven_class_weights_on_ten_class_data_are_refused_with_nothing_written(tmp_path, capsys):
    _, plain, _ = _timm_files(tmp_path, classes=7)
    out = tmp_path / "run"
    line = _fail(prune_then_distill, [*SYNTHETIC, "--teacher-arch", "timm:test_resnet", "--teacher-weights",
                                      str(plain), "--ratio", "0.5", "--out", str(out)], capsys)
    assert "gives 7 classes" in line and "--new-head" in line
    assert not out.exists()


@pytest.mark.parametrize("argv, words", [
    (["--teacher", "T", "--train-teacher"], "--train-teacher trains a teacher here, --teacher loads one"),
    (["--teacher-model-args", '{"pretrained_cfg_overlay": {"file": "w.pth"}}'], "--teacher-weights"),
    (["--teacher-model-args", '{"checkpoint_path": "w.pth"}'], "--teacher-weights"),
    (["--teacher-arch", "timm:test_resnet", "--teacher-model-args", '{"no_such_argument": 1}'], "no_such_argument"),
    (["--teacher-arch", "timm:test_resnet", "--teacher-model-args", '{"no_such_argument": null}'], "no_such_argument"),
    (["--new-head"], "--new-head replaces the classifier of a loaded network"),
    (["--teacher-arch", "wide_cnn", "--pretrained"], "--pretrained takes timm's weights"),
])
def test_options_that_would_be_ignored_are_refused(argv, words, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a if a != "T" else str(tmp_path / "t.pt") for a in argv]
    line = _fail(prune_then_distill, [*SYNTHETIC, *argv, "--ratio", "0.5", "--out", str(out)], capsys)
    assert words in line
    assert not out.exists()


def test_bare_weights_given_to_teacher_and_a_model_file_given_to_teacher_weights(tmp_path, capsys):
    net, plain, wrapped = _timm_files(tmp_path)
    for path, kind in ((plain, "a safetensors file"), (wrapped, "a state dict")):
        line = _fail(prune_then_distill, [*SYNTHETIC, "--teacher", str(path), "--ratio", "0.5",
                                          "--out", str(tmp_path / "a")], capsys)
        assert kind in line and "--teacher-arch NAME --teacher-weights" in line
    save_model(create_model("timm:test_resnet", 10), tmp_path / "model.pt")
    line = _fail(prune_then_distill, [*SYNTHETIC, "--teacher-arch", "timm:test_resnet", "--teacher-weights",
                                      str(tmp_path / "model.pt"), "--ratio", "0.5", "--out", str(tmp_path / "b")],
                 capsys)
    assert "pass it as --teacher FILE" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pretrained_offline_is_one_line_naming_the_file_option(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1: no network tried
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    out = tmp_path / "run"
    line = _fail(prune_then_distill, [*SYNTHETIC, "--teacher-arch", "timm:resnet18", "--pretrained", "--ratio", "0.5",
                                      "--out", str(out)], capsys)
    assert line.startswith("error: --pretrained") and "--teacher-weights FILE" in line
    assert not out.exists()


def test_resume_refuses_a_changed_weight_file(tmp_path, tiny):
    from types import SimpleNamespace

    from recipes.plumbing import inputs

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"first")
    cfg = SimpleNamespace(teacher=None, teacher_weights=str(weights), out=str(tmp_path))
    inputs.save(cfg, tiny, tmp_path)
    inputs.check_unchanged(cfg, tiny, tmp_path)  # the same file: goes on
    weights.write_bytes(b"other")
    with pytest.raises(ValueError, match=r"--resume: the --teacher-weights file .* changed"):
        inputs.check_unchanged(cfg, tiny, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["safetensors", "wrapped pth"])
def test_timm_weights_teach_a_pruned_distilled_student_that_needs_no_weight_file(kind, tmp_path, capsys):
    _, plain, wrapped = _timm_files(tmp_path)
    weights = plain if kind == "safetensors" else wrapped
    out = tmp_path / "run"
    export = ["--export", "torch-export"] if kind == "safetensors" else []
    result = prune_then_distill.main([*SYNTHETIC, "--teacher-arch", "timm:test_resnet", "--teacher-weights",
                                      str(weights), "--target-flops", "400000", "--out", str(out), *export])
    assert result.pruning.after.flops <= 400_000 < result.pruning.before.flops
    weights.unlink()  # the student must not need the teacher's file
    student = load_model(out / "student.pt")
    assert profile(student, (1, 3, 16, 16)).flops == result.pruning.after.flops
    assert str(weights) not in json.dumps(torch.load(out / "student.pt")["meta"], default=str)
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["teacher_weights"] == str(weights) and report["models"]["teacher"]["flops"] > 0
    spec = json.loads((out / "student.json").read_text())
    assert spec["architecture"]["name"] == "test_resnet" and (out / "student.safetensors").is_file()
    assert (out / "student.pt2").is_file() == bool(export)
    if export:
        assert report["torch_export"]["max_abs_diff"] < 1e-3 and json.loads(report["torch_export"]["metadata"]
                                                                            ["image_size"]) == 16


@pytest.mark.slow
def test_new_head_fine_tunes_the_teacher_first(tmp_path):
    _, plain, _ = _timm_files(tmp_path, classes=7)
    out = tmp_path / "run"
    prune_then_distill.main([*SYNTHETIC, "--teacher-arch", "timm:test_resnet", "--teacher-weights", str(plain),
                             "--new-head", "--teacher-epochs", "1", "--ratio", "0.5", "--out", str(out)])
    teacher = load_model(out / "teacher.pt")  # fine-tuned here, with a 10-class head
    assert teacher.get_classifier().out_features == 10
    assert (out / "teacher_train" / "metrics.csv").is_file()


@pytest.mark.slow
def test_train_teacher_initial_checkpoint_is_transfer_learning(tmp_path, capsys):
    _, plain, _ = _timm_files(tmp_path, classes=7)
    argv = [*DATA, "--arch", "timm:test_resnet", "--initial-checkpoint", str(plain)]
    line = _fail(train_teacher, [*argv, "--out", str(tmp_path / "a")], capsys)
    assert "gives 7 classes" in line and not (tmp_path / "a").exists()
    train_teacher.main([*argv, "--new-head", "--out", str(tmp_path / "b")])
    assert load_model(tmp_path / "b" / "teacher.pt").get_classifier().out_features == 10


# ---------------------------------------------------------------------------------------- 2. your own nn.Module

LOAD_SCRIPT = """
import sys, torch
from models import load_model
from byon_nets import SmallNet
x, expected = torch.load(sys.argv[2])
by_name = load_model(sys.argv[1])
by_instance = load_model(sys.argv[1], model=SmallNet())
print(torch.equal(by_name(x), expected), torch.equal(by_instance(x), expected), type(by_name).__name__)
"""


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_own_module_pruned_saved_and_reloaded_identically_in_a_fresh_process(tmp_path):
    net = SmallNet().eval()
    result = pruning.prune(net, torch.zeros(1, 3, 16, 16), ratio=0.5)
    student = result.model.eval()
    assert student.features[0].out_channels < 8 and student.hidden.out_features < 16
    save_model(student, tmp_path / "own.pt", meta={"image_size": 16})
    assert torch.load(tmp_path / "own.pt")["arch"] == "byon_nets:SmallNet"
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.save((x, student(x)), tmp_path / "expected.pt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "own.pt"), str(tmp_path / "expected.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "SmallNet"]


def test_a_class_that_cannot_be_imported_needs_an_instance(tmp_path):
    class Local(SmallNet):
        pass

    student = pruning.prune(Local().eval(), torch.zeros(1, 3, 16, 16), ratio=0.5).model.eval()
    save_model(student, tmp_path / "local.pt", meta={"image_size": 16})
    with pytest.raises(FileFormatError, match=r"load_model\(path, model="):
        load_model(tmp_path / "local.pt")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(load_model(tmp_path / "local.pt", model=Local())(x), student(x))


def test_timm_models_built_by_timm_itself_reload_by_name_or_from_an_instance(tmp_path):
    student = pruning.prune(timm.create_model("test_resnet", num_classes=10).eval(), torch.zeros(1, 3, 16, 16),
                            ratio=0.5).model.eval()
    save_model(student, tmp_path / "r.pt", meta={"image_size": 16})
    x = torch.randn(2, 3, 16, 16)
    assert torch.load(tmp_path / "r.pt")["arch"] == "timm:test_resnet"
    assert torch.equal(load_model(tmp_path / "r.pt")(x), student(x))
    vit = timm.create_model("test_vit", num_classes=10, img_size=32).eval()  # img_size: not recorded by timm
    save_model(vit, tmp_path / "v.pt")
    with pytest.raises(FileFormatError, match=r"other arguments than the file records.*model=\.\.\."):
        load_model(tmp_path / "v.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path / "v.pt", model=timm.create_model("test_vit", img_size=32))(x), vit(x))


def test_a_model_file_may_not_name_an_arbitrary_callable(tmp_path):
    save_model(SmallNet(), tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt")
    payload["arch"] = "subprocess:run"
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(FileFormatError, match="neither an nn.Module class"):
        load_model(tmp_path / "m.pt")


def test_own_module_trains_through_fit_model(tmp):
    from kd import fit_model

    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    student = pruning.prune(SmallNet(), torch.zeros(1, 3, 16, 16), ratio=0.5).model
    before = [p.detach().clone() for p in student.parameters()]
    fit_model(student, batches, epochs=1, lr=0.1, teacher=SmallNet().eval(), out_dir=tmp, progress=False,
              precision="fp32", device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path / "fit"


# ---------------------------------------------------------------------------------------- 3. what Torch-Pruning prunes

TIMM_CNNS = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "regnetx_002", "convnext_atto"]


@pytest.mark.slow  # 3-8 s each on two busy cores
@pytest.mark.parametrize("name", TIMM_CNNS)
def test_timm_cnns_prune_to_a_flops_target(name):
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    target = profile(model, (1, 3, 32, 32)).flops // 2
    result = pruning.prune(model, x, target_flops=target)
    assert target * 0.9 <= result.after.flops <= target
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_small_vit_prunes_to_a_flops_target_and_reloads(tmp_path):
    vit = create_model("timm:deit_tiny_patch16_224", 10, img_size=32, depth=2).eval()
    assert pruning.find_num_heads(vit) == {"blocks.0.attn.qkv": 3, "blocks.1.attn.qkv": 3}
    target = profile(vit, (1, 3, 32, 32)).flops // 2
    result = pruning.prune(vit, torch.zeros(1, 3, 32, 32), target_flops=target)
    assert target * 0.9 <= result.after.flops <= target
    attn = result.model.blocks[0].attn
    assert attn.num_heads == 3 and attn.head_dim * 3 * 3 == attn.qkv.out_features < 3 * 192
    save_model(result.model, tmp_path / "vit.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path / "vit.pt")(x), result.model.eval()(x))


def test_a_vit_without_its_heads_fails_in_one_error_naming_the_layer():
    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1).eval()
    with pytest.raises(pruning.PruningError, match=r"layer 'blocks.0.attn' \(Attention\)"):
        pruning.prune(vit, torch.zeros(1, 3, 32, 32), ratio=0.3, num_heads={})


def test_per_layer_ratios_and_unwrapped_parameters_pass_through():
    net = SmallNet().eval()
    result = pruning.prune(net, torch.zeros(1, 3, 16, 16), ratio=0.0, pruning_ratio_dict={"hidden": 0.5})
    assert result.channels["hidden"] == (16, 8) and result.channels["features.0"] == (8, 8)
    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1).eval()
    pruned = pruning.prune(vit, torch.zeros(1, 3, 32, 32), ratio=0.25,
                           unwrapped_parameters={"pos_embed": 2, "cls_token": 2}).model
    assert pruned.pos_embed.shape[2] == pruned.cls_token.shape[2] == pruned.patch_embed.proj.out_channels < 192
    with pytest.raises(ValueError, match="not a layer"):
        pruning.prune(net, torch.zeros(1, 3, 16, 16), ratio=0.5, pruning_ratio_dict={"nope": 0.5})


# ---------------------------------------------------------------------------------------- 4. students that leave

# The README's lines ("Taking the student out"), run where only torch, timm, safetensors and json are imported
REBUILD_SCRIPT = """
import json, sys
import timm, torch
from safetensors.torch import load_file

spec = json.load(open(sys.argv[1] + ".json"))
arch = spec["architecture"]
model = timm.create_model(arch["name"], num_classes=arch["num_classes"], **arch["kwargs"])
for name, attrs in spec["widths"].items():  # the pruned widths
    for attr, value in attrs.items():
        setattr(model.get_submodule(name), attr, tuple(value) if isinstance(value, list) else value)
for key, tensor in load_file(sys.argv[1] + ".safetensors").items():  # the pruned tensors
    owner, _, attr = key.rpartition(".")
    module = model.get_submodule(owner)
    setattr(module, attr, torch.nn.Parameter(tensor) if attr in module._parameters else tensor)
model.eval()

check = load_file(sys.argv[2])
ours = {"models", "pruning", "kd", "recipes"} & set(sys.modules)
with torch.no_grad():
    diff = float((model(check["x"]) - check["y"]).abs().max())
print(diff, sorted(ours), spec["image_size"], len(spec["classes"]))
"""


def _pruned_timm_student(channels_last: bool = True) -> nn.Module:
    student = pruning.prune(create_model("timm:test_resnet", 10), torch.zeros(1, 3, 16, 16), ratio=0.5).model.eval()
    return student.to(memory_format=torch.channels_last) if channels_last else student


def test_portable_files_hold_contiguous_tensors_and_what_rebuilds_them(tmp_path):
    from models.portable import rebuild

    student = _pruned_timm_student()
    assert not student.conv1[0].weight.is_contiguous()  # channels-last: what safetensors refuses as it is
    meta = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "classes": [f"c{i}" for i in range(10)], "image_size": 16}
    weights, spec_path = save_portable(student, tmp_path / "student", meta)
    spec = json.loads(spec_path.read_text())
    assert spec["architecture"] == {"source": "timm", "name": "test_resnet", "num_classes": 10, "kwargs": {},
                                    "class": "timm.models.resnet:ResNet"}
    assert spec["widths"]["conv1.0"]["out_channels"] == student.conv1[0].out_channels
    assert {k: spec[k] for k in meta} == meta
    fresh = rebuild(timm.create_model("test_resnet", num_classes=10), spec["widths"],
                    safetensors.torch.load_file(str(weights)))
    x = torch.randn(2, 3, 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), student.state_dict().values()))
    # the same weights; the student's channels-last filters take another convolution kernel on some CPUs (AMD EPYC
    # with AVX512-BF16), which rounds differently in the last bits
    torch.testing.assert_close(fresh(x), student(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a fresh interpreter imports torch and timm: seconds
def test_a_student_is_rebuilt_without_this_package_with_the_same_outputs(tmp_path):
    student = _pruned_timm_student()
    save_portable(student, tmp_path / "student", {"image_size": 16, "classes": [str(i) for i in range(10)]})
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        safetensors.torch.save_file({"x": x, "y": student(x).contiguous()}, str(tmp_path / "check.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", REBUILD_SCRIPT, str(tmp_path / "student"),
                           str(tmp_path / "check.safetensors")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    diff, *rest = proc.stdout.split()
    assert float(diff) < 1e-5  # the same up to the summation order of another thread count
    assert rest == ["[]", "16", "10"]


def test_torch_export_program_matches_and_carries_the_metadata(tmp_path):
    from models.export import deploy_metadata, export_program

    student = pruning.prune(SmallNet(), torch.zeros(1, 3, 16, 16), ratio=0.5).model.eval()
    metadata = deploy_metadata({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": ["a"] * 10,
                                "image_size": 16})
    diff = export_program(student, tmp_path / "student.pt2", (3, 16, 16), metadata)
    assert diff < 1e-5
    extra = {"metadata.json": ""}
    program = torch.export.load(str(tmp_path / "student.pt2"), extra_files=extra)
    assert json.loads(extra["metadata.json"]) == metadata and json.loads(metadata["mean"]) == [0.5, 0.5, 0.5]
    x = torch.randn(4, 3, 16, 16)  # a batch size it was not exported with
    assert torch.allclose(program.module()(x), student(x), atol=1e-5)


@pytest.mark.slow  # the dynamo ONNX exporter takes seconds
def test_onnx_metadata_holds_mean_std_classes_and_image_size(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from models.export import deploy_metadata, export_onnx

    student = pruning.prune(SmallNet(), torch.zeros(1, 3, 16, 16), ratio=0.5).model.eval()
    meta = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "classes": [f"c{i}" for i in range(10)], "image_size": 16}
    export_onnx(student, tmp_path / "s.onnx", (3, 16, 16), metadata=deploy_metadata(meta))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert {k: json.loads(props[k]) for k in meta} == meta and "mean" in props["input"]


def test_the_report_says_where_thop_misses_attention_matmuls():
    from recipes.plumbing.report import flops_check

    vit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2).eval()
    found = flops_check({"teacher": vit, "student": SmallNet()}, (1, 3, 32, 32))
    assert set(found) == {"teacher"}
    # per block q·kᵀ and attn·v: heads · N² · head_dim MACs each, N = 4 patches + the class token
    matmuls = 2 * 2 * 3 * 5 * 5 * 64
    assert found["teacher"]["thop"] == profile(vit, (1, 3, 32, 32)).flops
    assert found["teacher"]["thop_missed"] >= matmuls


def test_teacher_epochs_beside_a_loaded_teacher_is_refused_not_ignored(tmp_path, capsys):
    """--teacher-epochs given with a teacher that is loaded and not fine-tuned would train nothing: refused in one
    line before anything is written; left to the recipe (derived), it is no error."""
    from recipes import prune_then_distill
    from recipes.plumbing.errors import run_main

    _, plain, _ = _timm_files(tmp_path)
    out = tmp_path / "run"
    base = ["--dataset", "synthetic", "--image-size", "16", "--teacher-arch", "timm:test_resnet", "--teacher-weights",
            str(plain), "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        run_main(prune_then_distill.main, [*base, "--teacher-epochs", "3"])
    assert info.value.code == 2 and "--teacher-epochs is how long a teacher trains here" in capsys.readouterr().err
    assert not out.exists()
    from recipes.plumbing import external_teacher
    from recipes.plumbing.config import parse_config

    external_teacher.check_options(parse_config(prune_then_distill.PruneThenDistillConfig, base))  # derived: fine
    external_teacher.check_options(parse_config(prune_then_distill.PruneThenDistillConfig,
                                                [*base, "--new-head", "--teacher-epochs", "3"]))
