"""Real images the ecosystem's way: timm's transforms keep the aspect ratio and take a network's own normalisation,
the 32-px evaluation images are the same on both paths, splits are chosen by name, and budgets follow the image."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import pruning
from kd.data import DataUnavailableError, load_dataset, make_loaders, resolve_policy, use_timm_transforms
from kd.data.transforms import TransformedImages
from models import create_model
from recipes import prune_then_distill, train_teacher
from recipes.plumbing import option_checks
from recipes.plumbing.config import RunConfig, apply_recipe
from recipes.plumbing.errors import run_main
from recipes.plumbing.run import input_network, load_data

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SIZES = [(40, 30), (600, 200), (200, 600), (97, 64)]  # (width, height): landscape, wide, portrait, odd


def _pattern(width: int, height: int) -> Image.Image:
    """Blue outside the centred square of side min(W, H), green inside it, red in the square's top-right quarter:
    a centre crop that keeps the aspect ratio shows green with red top-right and no blue; a squashed image would
    show blue at its sides (or top and bottom)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(GREEN, (left, top, left + side, top + side))
    img.paste(RED, (left + side // 2, top, left + side, top + side // 2))
    return img


def _mixed_folder(root: Path, val: str = "test") -> Path:
    for split in ("train", val):
        for c, cls in enumerate(("a", "b")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(SIZES):
                _pattern(w, h).save(folder / f"{i}.png" if (i + c) % 2 else folder / f"{i}.jpg", quality=95)
    return root


def test_evaluation_keeps_the_aspect_ratio_of_mixed_size_images(tmp_path):
    data = load_dataset("imagefolder", _mixed_folder(tmp_path), image_size=64, transforms="timm")
    data.mean, data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # batches then hold the pixels / 255
    _, test = make_loaders(data, 4, workers=0)
    x = torch.cat([b for b, _ in test]) * 255  # (8, 3, 64, 64)
    assert x.shape == (2 * len(SIZES), 3, 64, 64)
    inner = x[:, :, 4:-4, 4:-4]  # away from the resampled edges of the crop
    assert inner[:, 2].max() < 60  # no blue: what lies outside the centred square is cropped away
    top_right, top_left = x[:, :, 6:26, 38:58], x[:, :, 6:26, 6:26]
    bottom = x[:, :, 38:58, 6:58]
    assert (top_right[:, 0] > 200).all() and (top_right[:, 1] < 60).all()  # red where the pattern put it
    assert (top_left[:, 1] > 200).all() and (bottom[:, 1] > 200).all()  # green elsewhere
    assert (top_left[:, 0] < 60).all()


def test_the_tensor_path_squashes_what_the_timm_path_crops(tmp_path):
    """The control: the squashed image of a 600 x 200 pattern shows blue at both sides."""
    data = load_dataset("imagefolder", _mixed_folder(tmp_path), image_size=64, transforms="tensor")
    wide = data.test.images[1].float()  # (3, 64, 64) of the 600 x 200 image
    assert wide[2, 32, :8].mean() > 200 and wide[2, 32, -8:].mean() > 200


def test_32_px_evaluation_images_are_the_same_on_both_paths(cifar10_dir):
    tensor = load_dataset("imagefolder", cifar10_dir, limit_test=60, transforms="tensor")
    timm = load_dataset("imagefolder", cifar10_dir, limit_test=60, transforms="timm")
    assert timm.policy is not None and tensor.policy is None
    assert torch.allclose(torch.tensor(timm.mean), torch.tensor(tensor.mean), atol=1e-6)
    (_, a), (_, b) = make_loaders(tensor, 30), make_loaders(timm, 30, workers=0)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.allclose(xa, xb, atol=1e-5)


def test_a_pretrained_networks_mean_and_std_reach_the_normalisation():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = apply_recipe(RunConfig(dataset="synthetic", image_size=40, transforms="timm", limit_train=16,
                                 limit_test=8, batch_size=8))
    cfg.arch, cfg.model_args = "timm:resnet10t", "{}"  # as train_teacher's config names a timm network
    network = input_network(cfg, None)
    assert network.pretrained_cfg["mean"] == IMAGENET_DEFAULT_MEAN
    data = load_data(cfg, network)
    assert data.policy.mean == IMAGENET_DEFAULT_MEAN and data.policy.std == IMAGENET_DEFAULT_STD
    assert data.policy.interpolation == "bicubic" and data.policy.crop_pct == network.pretrained_cfg["crop_pct"]
    _, test = make_loaders(data, 8, workers=0)
    x, _ = next(iter(test))
    pixels = torch.stack([TransformedImages(data.test, data.policy.eval_transform())[i] for i in range(8)])
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    assert torch.allclose(x, (pixels.float() / 255 - mean) / std, atol=1e-5)


def test_without_a_timm_network_the_policy_is_the_stated_default():
    policy = resolve_policy(create_model("wide_cnn", 10), 64, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (policy.mean, policy.std, policy.interpolation, policy.crop_pct) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6),
                                                                               "bilinear", 1.0)
    with pytest.raises(ValueError, match="--aa"):
        resolve_policy(None, 64, (0.5,) * 3, (0.2,) * 3, auto_augment="no-such-policy")


def test_auto_takes_timm_for_image_folders_off_32_px_only():
    assert use_timm_transforms("auto", 64, None, "imagefolder")
    assert not use_timm_transforms("auto", 32, None, "imagefolder")
    assert not use_timm_transforms("auto", 64, None, "cifar10")
    assert use_timm_transforms("auto", 32, create_model("timm:resnet10t", 10), "imagefolder")
    assert use_timm_transforms("timm", 32) and not use_timm_transforms("tensor", 64)


# ---------------------------------------------------------------------------------------------------------- splits


def test_splits_default_to_test_then_val_and_can_be_named(tmp_path):
    root = _mixed_folder(tmp_path / "d", val="val")
    assert load_dataset("imagefolder", root, image_size=16).splits == ("train", "val")
    (root / "test").symlink_to(root / "val", target_is_directory=True)
    assert load_dataset("imagefolder", root, image_size=16).splits == ("train", "test")
    named = load_dataset("imagefolder", root, image_size=16, train_split="val", val_split="train")
    assert named.splits == ("val", "train")
    with pytest.raises(DataUnavailableError, match="--val-split holdout"):
        load_dataset("imagefolder", root, image_size=16, val_split="holdout")


def _fail(recipe, argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(recipe.main, argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_split_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    root, out = _mixed_folder(tmp_path / "d"), tmp_path / "out"
    line = _fail(train_teacher, ["--dataset", "imagefolder", "--data-dir", str(root), "--val-split", "val",
                                 "--out", str(out), "--no-progress"], capsys)
    assert "--val-split val" in line and "no val/ folder" in line
    assert not out.exists() or not any(p.name != ".lock" for p in out.iterdir())


# ---------------------------------------------------------------------------------------------------------- budgets


def test_a_96_px_run_with_no_target_is_refused_not_pruned_to_the_labs_flops(tmp_path, capsys):
    root, out = _mixed_folder(tmp_path / "d"), tmp_path / "out"
    line = _fail(prune_then_distill, ["--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "96",
                                      "--out", str(out), "--no-progress"], capsys)
    assert "--target-flops" in line and "--budget FRACTION" in line and "31,269,888" in line
    assert not out.exists()


@pytest.mark.parametrize("options, words", [
    ({"transforms": "tensor", "aa": "rand-m9-mstd0.5"}, "--aa"),
    ({"transforms": "timm", "pad": 8}, "--pad"),
    ({"transforms": "timm", "data_mode": "memory"}, "--data-mode memory"),
    ({"transforms": "timm", "scale": (0.9, 0.1)}, "--scale"),
])
def test_transform_option_refusals(options, words):
    cfg = apply_recipe(RunConfig(dataset="imagefolder", **options))
    with pytest.raises(ValueError, match=words):
        option_checks.check_transforms(cfg, use_timm_transforms(cfg.transforms, cfg.image_size))


def test_split_options_are_refused_for_data_sets_with_their_own_splits():
    with pytest.raises(ValueError, match="--val-split"):
        option_checks.check_options(RunConfig(dataset="cifar10", val_split="val"))


def test_gutted_layers_names_layers_that_lost_over_95_percent():
    model = create_model("wide_cnn", 10, widths=(64, 64), hidden=16)
    res = pruning.prune(model, torch.zeros(1, 3, 16, 16), ratio=0.97, recalibrate_bn=False)
    gutted = res.gutted_layers(0.95)
    assert gutted and all(after < 0.05 * before for before, after in gutted.values())
    assert set(gutted) <= set(res.pruned_layers())
    assert not pruning.prune(model, torch.zeros(1, 3, 16, 16), ratio=0.5, recalibrate_bn=False).gutted_layers()


@pytest.mark.slow
def test_a_48_px_folder_run_with_a_relative_budget_records_its_transforms(tmp_path, capsys):
    root, out = _mixed_folder(tmp_path / "d", val="val"), tmp_path / "out"
    tiny = '{"widths": [8, 8, 8, 8], "hidden": 16}'
    result = prune_then_distill.main(["--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "48",
                                      "--budget", "0.5", "--teacher-model-args", tiny, "--teacher-epochs", "1",
                                      "--epochs", "1", "--batch-size", "4", "--mixup", "0.2", "--workers", "0",
                                      "--no-latency", "--no-progress", "--out", str(out)])
    said = capsys.readouterr().out
    assert "splits: train/ for training, val/ for evaluation" in said and "transforms: timm, 48 px" in said
    teacher, student = result.reports[0], result.reports[-1]
    assert student.flops <= 0.5 * teacher.flops
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["transforms"] == "timm" and report["data"]["splits"] == ["train", "val"]
    assert report["data"]["crop_pct"] == 1.0 and "CenterCrop(size=(48, 48))" in report["data"]["eval_transform"]


def test_budget_is_an_alternative_target_and_32_px_keeps_the_labs_flops():
    cfg = prune_then_distill.PruneThenDistillConfig(budget=0.25, target_flops=1000)
    with pytest.raises(ValueError, match="--target-flops and --budget are alternative targets"):
        prune_then_distill._check_target(cfg)
    lab = prune_then_distill.PruneThenDistillConfig()
    prune_then_distill._check_target(lab)
    assert lab.target_flops == prune_then_distill.LAB_TARGET_FLOPS


def test_a_costly_wide_cnn_teacher_is_warned_about_in_one_line(capsys):
    from types import SimpleNamespace

    from recipes.plumbing.config import KDConfig

    data = SimpleNamespace(input_size=(1, 3, 96, 96), num_classes=10)
    option_checks._warn_costly_teacher(KDConfig(), data, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "wide_cnn teacher costs" in lines[0] and "96-px" in lines[0]
    option_checks._warn_costly_teacher(KDConfig(), SimpleNamespace(input_size=(1, 3, 32, 32), num_classes=10), None)
    assert capsys.readouterr().out == ""
