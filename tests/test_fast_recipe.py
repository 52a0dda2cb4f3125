"""The fast recipe's pieces, each against a hand computation: weight EMA, whitening and dirac init, test-time
augmentation, parameter groups, the triangular schedule, alternating flips, the recipe presets."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd.data import load_dataset, make_loaders
from kd.data.batches import BatchIterator, apply_crop_flip
from kd.optim import make_optimizer, make_scheduler, param_groups, triangular
from kd.trainer import Trainer, evaluate
from kd.tta import tta_logits
from models import create_model, profile
from models.checkpoint import read_model_file
from models.init import dirac_init, image_patches, whiten_first_conv
from pruning.wide_config import build_wide, wide_config
from recipes.plumbing.config import RECIPES, KDConfig, RunConfig, parse_config
from recipes import train_teacher
from recipes.plumbing.training import make_loss
from toy_nets import ToyNet


_Toy = ToyNet


def _toy_batches(n: int = 4, b: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)) for _ in range(n)]


def test_ema_follows_its_formula(one_thread):
    """ema_t = d_t · ema_{t−1} + (1 − d_t) · θ_t with d_1 = 0 and d_t = min(decay, 1 − t^(−3/4)) afterwards."""
    model = _Toy()
    decay = 0.9
    trainer = Trainer(model, epochs=1, precision="fp32", progress=False, ema=decay,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    expected = None
    snapshots = []

    class Watch:
        main_only = False

        def on_step_end(self, tr, step, loss):
            snapshots.append({k: v.detach().clone() for k, v in tr.student.named_parameters()})

        def on_epoch_end(self, tr, record):
            pass

    trainer.callbacks = [Watch()]
    trainer.fit(_toy_batches())
    for t, theta in enumerate(snapshots, start=1):
        d = 0.0 if t == 1 else min(decay, 1 - (1 + (t - 1)) ** -0.75)
        expected = theta if expected is None else {k: d * expected[k] + (1 - d) * theta[k] for k in theta}
    for name, p in model.named_parameters():  # after fit the student holds the average
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.fc.weight.detach(), snapshots[-1]["fc.weight"])  # an average, not the last weights


def test_whitening_decorrelates_patches():
    """The first conv's outputs on the training patches have covariance ≈ I (eps small against the eigenvalues)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.3], [0.0, 0.5, 0.4], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(256, 3, 12, 12, generator=g))  # correlated channels
    images = F.avg_pool2d(images, 3, 1, 1)  # and correlated neighbours
    model = create_model("fast_cnn", 10)
    conv = whiten_first_conv(model, images, eps=1e-6)
    patches = image_patches(images, (2, 2))  # (M, 12)
    out = patches.double() @ conv.weight.view(24, -1).double().T  # (M, 24): the conv's outputs (bias 0)
    cov = out[:, :12].T @ out[:, :12] / out.shape[0]
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-2, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])  # the negated half
    assert not conv.weight.requires_grad and conv.bias.requires_grad


def test_whitening_keeps_the_rest_of_a_wide_first_conv():
    model = create_model("wide_cnn", 10, widths=(64, 32))
    before = model.features.conv1.conv.weight.detach().clone()
    conv = whiten_first_conv(model, torch.randn(32, 3, 8, 8))
    assert torch.equal(conv.weight[54:], before[54:])  # 2·3·3·3 = 54 filters whitened, the other 10 untouched
    assert not torch.equal(conv.weight[:54], before[:54])
    assert conv.weight.requires_grad  # not every filter was set: it keeps training


def test_dirac_init_makes_equal_width_convs_the_identity():
    model = create_model("wide_cnn", 10, widths=(8, 8, 16), pool_after=())
    assert dirac_init(model) == 2
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(model.features.conv2.conv(x), x)
    y = model.features.conv3.conv(x)  # 8 → 16: the first 8 outputs copy the input
    torch.testing.assert_close(y[:, :8], x)


def test_tta_of_a_flip_invariant_model_equals_plain_accuracy(one_thread):
    data = load_dataset("synthetic", image_size=16, limit_train=64, limit_test=64, seed=0)
    _, test = make_loaders(data, 32)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))  # a mirror changes nothing
    plain = evaluate(model, test).accuracy
    assert evaluate(model, test, tta="flip").accuracy == plain
    x = next(iter(test))[0]
    torch.testing.assert_close(tta_logits(model, x, "flip"), model(x))


def test_tta_flip_translate_averages_six_views():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    x = torch.randn(2, 3, 5, 5)
    m = lambda v: (model(v) + model(v.flip(-1))) / 2  # noqa: E731
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = m(x) / 2 + (m(p[..., :5, :5]) + m(p[..., 2:, 2:])) / 4
    torch.testing.assert_close(tta_logits(model, x, "flip-translate"), expected)


def test_no_weight_decay_reaches_batchnorm_parameters():
    model = create_model("fast_cnn", 10)
    groups = {g["name"]: g for g in param_groups([model], 1.5, 1e-3, decay_norm_and_bias=False, bn_bias_lr_scale=64,
                                                 bn_weight_lr_scale=0)}
    assert set(groups) == {"weights", "biases", "norm_biases"}  # BatchNorm scales frozen: not given to the optimizer
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(m.bias) for m in bn} == {id(p) for p in groups["norm_biases"]["params"]}
    assert groups["norm_biases"]["weight_decay"] == 0 and groups["norm_biases"]["lr"] == 1.5 * 64
    assert groups["biases"]["weight_decay"] == 0 and groups["weights"]["weight_decay"] == 1e-3
    opt = make_optimizer("sgd", param_groups([model], 1.5, 1e-3, decay_norm_and_bias=False), 1.5, 1e-3)
    # one SGD step from a zero gradient: decay alone would move a parameter; BatchNorm ones stay put
    before = {id(p): p.detach().clone() for m in bn for p in (m.weight, m.bias)}
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, before[id(p)]) for m in bn for p in (m.weight, m.bias))


def test_decay_on_scaled_groups_keeps_its_step():
    model = _Toy()
    groups = {g["name"]: g for g in param_groups([model], 0.1, 1e-2, bn_bias_lr_scale=4)}
    assert groups["norm_biases"]["lr"] == pytest.approx(0.4)
    assert groups["norm_biases"]["lr"] * groups["norm_biases"]["weight_decay"] == pytest.approx(0.1 * 1e-2)


def test_triangular_schedule():
    assert triangular(0, 100) == pytest.approx(0.2)
    assert triangular(23, 100) == pytest.approx(1.0)
    assert triangular(11, 100) == pytest.approx(0.2 + 0.8 * 11 / 23)
    assert triangular(100, 100) == pytest.approx(0.07)
    model = _Toy()
    opt = make_optimizer("sgd", param_groups([model], 2.0, 0.0, bn_bias_lr_scale=64), 2.0)
    sched = make_scheduler("triangular", opt, 100)
    for _ in range(23):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["weights"] == pytest.approx(2.0) and lrs["norm_biases"] == pytest.approx(128.0)


def test_alternating_flip_mirrors_every_image_every_other_epoch():
    n = 16
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.uint8).view(n, 3, 4, 4) % 251
    data = load_dataset("synthetic", image_size=4, limit_train=n, limit_test=4, seed=0).train
    data.images = images
    it = BatchIterator(data, n, train=True, mean=(0, 0, 0), std=(1, 1, 1), pad=1, flip="alternating", seed=3)

    seen = []
    for _ in range(3):
        state = it.generator.get_state()
        order = torch.randperm(n, generator=torch.Generator().set_state(state))
        x, _ = next(iter(it))  # one batch = the whole epoch
        # the flip bit of each image: does the centre crop row read mirrored?
        flipped = torch.zeros(n, dtype=torch.bool)
        for row, i in enumerate(order.tolist()):
            ref = images[i].float() / 255
            crop = x[row]
            flipped[i] = _matches_mirrored(crop, ref)
        seen.append(flipped)
    assert torch.equal(seen[1], ~seen[0]) and torch.equal(seen[2], seen[0])
    assert 0 < int(seen[0].sum()) < n  # a random bit per image, not all the same


def _matches_mirrored(crop: torch.Tensor, ref: torch.Tensor) -> bool:
    """Whether ``crop`` (C, H, W) is a shifted crop of the mirrored ``ref`` (zero-padded by 1) rather than of ``ref``."""
    pad = 1
    for oy in range(3):
        for ox in range(3):
            for mirrored in (False, True):
                src = F.pad(ref.flip(-1) if mirrored else ref, (pad,) * 4)[:, oy:oy + 4, ox:ox + 4]
                if torch.allclose(crop, src):
                    return mirrored
    raise AssertionError("the crop matches no shifted view")


def test_reflect_padding_crops_as_f_pad_reflect_and_zeros_as_f_pad():
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    params = torch.tensor([[0, 0, 0], [4, 4, 1], [2, 1, 0], [0, 4, 1], [3, 2, 0]])  # (oy, ox, flip), pad 2
    for mode, padded in (("reflect", F.pad(x.float(), (2, 2, 2, 2), mode="reflect")),
                         ("zeros", F.pad(x.float(), (2, 2, 2, 2)))):
        out = apply_crop_flip(x, 2, params, mode)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        for i, (oy, ox, flip) in enumerate(params.tolist()):
            want = padded[i, :, oy:oy + 6, ox:ox + 7]
            assert torch.equal(out[i].float(), want.flip(-1) if flip else want), (mode, i)
    with pytest.raises(ValueError, match="pad < the image size"):
        apply_crop_flip(x, 6, params, "reflect")


def test_fast_cnn_is_a_wide_cnn_that_rebuilds():
    model = create_model("fast_cnn", 10)
    c = profile(model, (1, 3, 32, 32))
    assert c.flops == 118_381_344  # whitening 2×2 conv + 3 blocks of 64/256/256, as airbench94
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    cfg = wide_config(model)
    assert cfg["stem"] == 24 and cfg["pool_first"] and cfg["activation"] == "gelu" and cfg["head_pool_mode"] == "max"
    rebuilt = build_wide(cfg)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_recipe_fills_unset_options_and_scales_the_rate():
    fast = parse_config(RunConfig, ["--recipe", "fast", "--batch-size", "512"])
    assert fast.lr == pytest.approx(RECIPES["fast"]["lr"] / 2) and fast.momentum == 0.85
    assert fast.schedule == "triangular" and fast.flip == "alternating" and fast.label_smoothing == 0.2
    given = parse_config(RunConfig, ["--recipe", "fast", "--lr", "0.4", "--ema", "0"])
    assert given.lr == 0.4 and given.ema == 0 and given.batch_size == 1024
    classic = parse_config(RunConfig, ["--recipe", "classic"])
    assert (classic.lr, classic.batch_size, classic.epochs, classic.schedule) == (0.05, 128, 30, "cosine")
    assert not math.isnan(classic.weight_decay)


def test_label_smoothing_reaches_every_loss():
    for argv, kind in ((["--alpha", "0"], "CrossEntropy"), (["--kd-loss", "dkd"], "DKDLoss"), ([], "DistillationLoss")):
        cfg = parse_config(KDConfig, ["--label-smoothing", "0.1", *argv])
        loss = make_loss(cfg)
        assert type(loss).__name__ == kind and loss.label_smoothing == 0.1


@pytest.mark.slow
def test_fast_recipe_trains_a_teacher_end_to_end(cifar10_dir, tmp_path):
    """``--recipe fast`` on real images: the whitening init, alternating flips, EMA and TTA all run, the report has
    both accuracies, config.json holds the resolved recipe, and the teacher beats chance (10 %) clearly."""
    out = tmp_path / "fast"
    argv = ["--dataset", "imagefolder", "--data-dir", str(cifar10_dir), "--arch", "fast_cnn", "--model-args",
            '{"widths": [16, 16, 32, 32, 32, 32]}', "--recipe", "fast", "--batch-size", "50", "--lr", "0.6", "--epochs", "6",
            "--limit-train", "600", "--limit-test", "300", "--out", str(out), "--no-progress"]
    report = train_teacher.main(argv)
    assert report.accuracy > 25.0 and report.tta_accuracy is not None and report.tta_accuracy > 25.0
    config = json.loads((out / "config.json").read_text())
    assert config["momentum"] == 0.85 and config["batch_size"] == 50 and config["flip"] == "alternating"
    assert config["init"] == "whiten-dirac" and config["ema"] == 0.0 and config["lookahead"] is True
    assert config["pad_mode"] == "reflect" and config["bn_momentum"] == 0.4 and config["stem_bias_epochs"] == 3
    arch_kwargs = read_model_file(out / "teacher.pt")["arch_kwargs"]  # the recipe's head, the given widths
    assert arch_kwargs["head_pool_mode"] == "max3" and arch_kwargs["classifier_bias"] is False
    assert arch_kwargs["widths"] == [16, 16, 32, 32, 32, 32]
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"]["teacher"]["tta_accuracy"] == report.tta_accuracy


def test_committed_teacher_is_checked_and_used_only_without_teacher(tmp_path, monkeypatch, capsys):
    from recipes.plumbing import teachers

    path = tmp_path / "t.pt"
    path.write_bytes(b"weights")
    good = teachers.CommittedTeacher("cifar10", path, hashlib.sha256(b"weights").hexdigest(), 91.0)
    monkeypatch.setitem(teachers.COMMITTED, "cifar10", good)
    cfg = parse_config(KDConfig, ["--dataset", "cifar10"])
    teachers.use_committed_teacher(cfg)
    assert cfg.teacher == (str(path),) and "committed cifar10 teacher" in capsys.readouterr().out
    for argv in (["--dataset", "cifar10", "--train-teacher"], ["--dataset", "cifar100"],
                 ["--dataset", "cifar10", "--teacher", "mine.pt"]):
        cfg = parse_config(KDConfig, argv)
        teachers.use_committed_teacher(cfg)
        assert cfg.teacher in (None, ("mine.pt",))
    path.write_bytes(b"weightz")  # same size, other bytes
    with pytest.raises(ValueError, match="sha256"):
        teachers.use_committed_teacher(parse_config(KDConfig, ["--dataset", "cifar10"]))
    path.unlink()
    with pytest.raises(FileNotFoundError, match="--train-teacher"):
        teachers.use_committed_teacher(parse_config(KDConfig, ["--dataset", "cifar10"]))


def test_options_that_need_images_in_memory_are_refused_before_any_work():
    from recipes.plumbing.option_checks import check_options

    for argv, match in ((["--recipe", "fast", "--data-mode", "stream"], "--flip alternating needs"),
                        (["--recipe", "fast", "--flip", "random", "--data-mode", "stream"], "--pad-mode reflect"),
                        (["--recipe", "fast", "--flip", "random", "--pad-mode", "zeros", "--data-mode", "stream"],
                         "--init whiten-dirac"),
                        (["--recipe", "fast", "--teacher-cache", "2"], "cannot serve --flip alternating"),
                        (["--flip", "random", "--pad-mode", "reflect", "--data-mode", "stream"],
                         "--pad-mode reflect needs"),
                        (["--recipe", "classic", "--pad-mode", "reflect", "--teacher-cache", "2"],
                         "cannot serve --pad-mode reflect")):
        with pytest.raises(ValueError, match=match):
            check_options(parse_config(KDConfig, argv))
    check_options(parse_config(KDConfig, ["--recipe", "fast", "--teacher-cache", "2", "--flip", "random",
                                          "--pad-mode", "zeros"]))


def test_prune_then_distill_takes_its_loss_from_the_recipe_unless_given():
    from recipes.prune_then_distill import PruneThenDistillConfig

    assert parse_config(PruneThenDistillConfig, ["--recipe", "classic"]).kd_loss == "kd-ls"
    assert parse_config(PruneThenDistillConfig, ["--recipe", "fast"]).kd_loss == "kd"
    assert parse_config(PruneThenDistillConfig, ["--recipe", "fast", "--kd-loss", "dkd"]).kd_loss == "dkd"
    assert parse_config(KDConfig, ["--recipe", "classic"]).kd_loss == "kd"  # distill_only keeps its own default


def test_momentum_zero_is_plain_sgd():
    opt = make_optimizer("sgd", _Toy().parameters(), 0.1, momentum=0.0)
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0.0


def test_resuming_a_run_from_before_the_recipes_sees_no_spurious_differences():
    from recipes.plumbing.config import config_differences

    earlier = json.loads(json.dumps(parse_config(RunConfig, ["--recipe", "classic"]).__dict__))
    for name in ("recipe", "momentum", "warmup", "ema", "tta", "pad", "flip", "init", "label_smoothing", "lookahead",
                 "bn_momentum", "stem_bias_epochs"):
        del earlier[name]  # a config.json written before these options existed (they were classic's)
    assert config_differences(earlier, parse_config(RunConfig, ["--recipe", "classic"])) == []


def test_auto_is_fast_on_the_full_cifar_sets_and_classic_elsewhere():
    from recipes.prune_then_distill import PruneThenDistillConfig

    lab = parse_config(PruneThenDistillConfig, [])  # the no-argument job
    assert (lab.dataset, lab.recipe, lab.epochs, lab.kd_loss, lab.batch_size) == ("cifar10-jpeg", "fast", 8, "kd", 1024)
    assert parse_config(RunConfig, []).epochs == 10  # a teacher trains the recipe's 10 epochs
    assert parse_config(RunConfig, ["--dataset", "imagefolder"]).recipe == "classic"
    assert parse_config(RunConfig, ["--limit-train", "5000"]).recipe == "classic"
    assert parse_config(PruneThenDistillConfig, ["--recipe", "classic"]).epochs == 30


def _kd_gain_module():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "kd_gain.py"
    spec = importlib.util.spec_from_file_location("kd_gain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kd_gain_delta_takes_each_loss_at_its_best_rate_and_draws_one_line_per_budget():
    import xml.etree.ElementTree as ET
    kd_gain = _kd_gain_module()
    cells = {("ce", 0.1): (80.0, 82.0), ("ce", 0.3): (84.0, 86.0), ("kd", 0.3): (86.0, 87.0), ("kd", 1.0): (10.0, 12.0)}
    records = [{"flops_target": f, "epochs": e, "loss": loss, "lr": lr, "accuracy": acc - (f == 4_000_000)}
               for f in (1_000_000, 4_000_000) for e in (2, 8) for (loss, lr), accs in cells.items() for acc in accs]
    found = kd_gain.deltas(records)
    best, delta = found[1_000_000, 2]
    assert best["ce"][:2] == (85.0, 0.3) and best["kd"][:2] == (86.5, 0.3)
    assert delta == pytest.approx(1.5) and found[4_000_000, 8][1] == pytest.approx(1.5)
    row = "| 1,000,000 | 2 | ce 85.00 ± 1.41 at 0.3 (2); kd 86.50 ± 0.71 at 0.3 (2) | +1.50 |"
    assert row in kd_gain.table(records)
    svg = ET.fromstring(kd_gain.plot_svg(records, "t"))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and all(len(p.get("points").split()) == 2 for p in lines)
    with pytest.raises(ValueError, match="nothing to plot"):
        kd_gain.plot_svg([r for r in records if r["loss"] == "ce"], "t")
