"""Mixup / CutMix (kd.mixup over timm's Mixup): soft targets in every loss, α → 0 is no mixing, the teacher scores the
student's mixed batch, the resumable stream, and the refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd import Trainer
from kd.data import make_loaders
from kd.losses import LOSSES, create_loss, cross_entropy
from kd.mixup import MixedBatches, make_mixup
from models import create_model
from recipes.plumbing import option_checks
from recipes.plumbing.config import KDConfig


def _onehot_smoothed(y, k, eps):
    return F.one_hot(y, k).float() * (1 - eps) + eps / k


def test_soft_cross_entropy_matches_the_hand_formula_and_one_hot_equals_labels():
    s, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    soft = torch.rand(6, 5).softmax(1)
    hand = -(soft * s.log_softmax(1)).sum(1).mean()
    assert torch.allclose(cross_entropy(s, soft), hand)
    # a smoothed one-hot soft target is the label-smoothed cross-entropy of its labels (timm folds ε into the target)
    assert torch.allclose(cross_entropy(s, _onehot_smoothed(y, 5, 0.2)), cross_entropy(s, y, 0.2), atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_takes_one_hot_soft_targets_as_its_labels(name):
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    loss = create_loss(name)
    hard = loss(s, t, y)
    soft = loss(s, t, F.one_hot(y, 10).float())
    assert hard.keys() == soft.keys()
    assert all(torch.allclose(hard[k], soft[k], atol=1e-6) for k in hard)


def test_mixup_with_alpha_near_zero_equals_no_mixup(tiny):
    """λ ~ Beta(α, α) puts all its mass on 0 and 1 as α → 0: each mixed batch is the batch itself or its mirror
    (the same images and labels, in reverse order), so the mean loss equals the unmixed one."""
    train, _ = make_loaders(tiny, 32, seed=3)
    eps, k = 0.1, tiny.num_classes
    mixed = MixedBatches(train, make_mixup(k, mixup=1e-6, label_smoothing=eps), seed=5)
    train_again, _ = make_loaders(tiny, 32, seed=3)
    model = create_model("wide_cnn", k, widths=(8, 16), hidden=16).eval()
    for (xm, ym), (x, y) in zip(mixed, train_again):
        same = torch.equal(xm, x) and torch.allclose(ym, _onehot_smoothed(y, k, eps))
        mirror = torch.equal(xm, x.flip(0)) and torch.allclose(ym, _onehot_smoothed(y.flip(0), k, eps))
        assert same or mirror
        with torch.no_grad():
            assert torch.allclose(cross_entropy(model(xm), ym), cross_entropy(model(x), y, eps), atol=1e-5)


def test_mixup_mixes_images_and_labels_by_the_same_lambda(tiny):
    train, _ = make_loaders(tiny, 32, seed=3)
    mixed = MixedBatches(train, make_mixup(tiny.num_classes, mixup=1.0), seed=0)
    train_again, _ = make_loaders(tiny, 32, seed=3)
    (xm, ym), (x, y) = next(iter(mixed)), next(iter(train_again))
    i = int(torch.nonzero(y != y.flip(0))[0])  # an image whose mirror partner has another label
    lam = float(ym[i, y[i]])
    assert 0 < lam < 1
    assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    assert torch.allclose(ym, lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y.flip(0), 10).float())


class _SpyTeacher(nn.Module):
    """Records every batch it scores."""

    def __init__(self, k):
        super().__init__()
        self.head = nn.Linear(1, k)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.head(x.mean((1, 2, 3))[:, None])


def test_the_teacher_sees_the_students_mixed_batch(tiny):
    train, _ = make_loaders(tiny, 32, seed=3)
    mixed = MixedBatches(train, make_mixup(tiny.num_classes, mixup=0.4, cutmix=1.0), seed=1)
    student = create_model("wide_cnn", tiny.num_classes, widths=(8, 16), hidden=16)
    student_inputs = []
    student.register_forward_pre_hook(lambda m, args: student_inputs.append(args[0].detach().clone()))
    teacher = _SpyTeacher(tiny.num_classes)
    Trainer(student, teacher, create_loss("kd"), epochs=1, progress=False, precision="fp32").fit(mixed)
    assert len(teacher.seen) == len(student_inputs) == len(train)
    assert all(torch.equal(a, b) for a, b in zip(teacher.seen, student_inputs))
    originals = [x for x, _ in make_loaders(tiny, 32, seed=3)[0]]
    assert any(not torch.equal(a, b) for a, b in zip(teacher.seen, originals))  # the batches were mixed


def test_mixed_batches_resume_the_same_lambdas(tiny):
    train, _ = make_loaders(tiny, 32, seed=3)
    mixed = MixedBatches(train, make_mixup(tiny.num_classes, mixup=1.0), seed=2)
    list(mixed)  # one epoch
    state = mixed.state_dict()
    after = [y for _, y in mixed]
    other = MixedBatches(make_loaders(tiny, 32, seed=99)[0], make_mixup(tiny.num_classes, mixup=1.0), seed=7)
    other.load_state_dict(state)
    np.random.seed(123)  # the global stream does not matter
    assert all(torch.equal(a, b) for a, b in zip(after, [y for _, y in other]))


@pytest.mark.parametrize("options, words", [
    ({"mixup_prob": 0.5}, "--mixup-prob"),
    ({"mixup": 0.2, "mixup_switch_prob": 0.5}, "--mixup-switch-prob"),
    ({"mixup": 0.2, "batch_size": 33}, "even --batch-size"),
    ({"cutmix": 1.0, "teacher_cache": 2, "batch_size": 32}, "--teacher-cache"),
])
def test_mixup_option_refusals(options, words):
    cfg = KDConfig(**{"batch_size": 32, **options})
    with pytest.raises(ValueError, match=words):
        option_checks.check_options(cfg)


def _fit_mixed(out, tiny, stop_after=None, resume=False):
    from kd import Callback

    class StopAfter(Callback):
        def on_epoch_end(self, trainer, record):
            trainer.should_stop = stop_after is not None and record.epoch >= stop_after

    train, test = make_loaders(tiny, 32, seed=7)
    mixed = MixedBatches(train, make_mixup(tiny.num_classes, mixup=0.4, cutmix=1.0), seed=3)
    torch.manual_seed(11 if resume else 1)
    student = create_model("wide_cnn", tiny.num_classes, widths=(8, 16), hidden=16, dropout=0.0)
    torch.manual_seed(2)
    teacher = create_model("wide_cnn", tiny.num_classes, widths=(16, 16), hidden=16)
    Trainer(student, teacher, create_loss("kd"), epochs=3, out_dir=out, progress=False, precision="fp32",
            callbacks=[StopAfter()]).fit(mixed, test, resume=resume)
    return student


def test_a_resumed_mixed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, tiny):
    full = _fit_mixed(tmp_path / "full", tiny)
    np.random.seed(1)  # the global NumPy stream differs between the "processes"
    _fit_mixed(tmp_path / "cut", tiny, stop_after=1)
    np.random.seed(2)
    resumed = _fit_mixed(tmp_path / "cut", tiny, resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
