import math

import pytest
import torch
import torch.nn.functional as F

from kd import DistillationLoss, HintLoss, soft_target_kl
from models import create_model

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
T = torch.tensor([[1.0, 1.5, -0.5], [2.0, -1.0, 0.0]])
Y = torch.tensor([0, 2])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _hand_loss(s, t, y, temp, alpha):
    """alpha · T² · mean_b Σ_k p_t log(p_t / p_s) + (1 − alpha) · mean_b (−log softmax(s)_y), in plain Python."""
    kl, ce = 0.0, 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax([v / temp for v in srow]), _softmax([v / temp for v in trow])
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
        ce += -math.log(_softmax(srow)[label])
    n = len(y)
    return alpha * temp**2 * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("temp,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 1.0), (8.0, 0.1)])
def test_loss_matches_a_hand_computation(temp, alpha):
    loss = DistillationLoss(temperature=temp, alpha=alpha)(S, T, Y)
    assert loss.item() == pytest.approx(_hand_loss(S, T, Y, temp, alpha), rel=1e-5)


def test_kl_part_is_zero_when_student_equals_teacher():
    assert DistillationLoss(alpha=1.0)(T, T.clone(), Y).item() == pytest.approx(0.0, abs=1e-7)


def test_t_squared_factor():
    for temp in (1.0, 2.0, 4.0):
        plain_kl = F.kl_div(F.log_softmax(S / temp, 1), F.softmax(T / temp, 1), reduction="batchmean")
        assert soft_target_kl(S, T, temp).item() == pytest.approx(temp**2 * plain_kl.item(), rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    loss = DistillationLoss(alpha=0.0)
    assert loss(S, None, Y).item() == pytest.approx(F.cross_entropy(S, Y).item(), rel=1e-6)
    assert loss(S, T, Y).item() == pytest.approx(F.cross_entropy(S, Y).item(), rel=1e-6)
    smoothed = DistillationLoss(alpha=0.0, label_smoothing=0.1)(S, None, Y)
    assert smoothed.item() == pytest.approx(F.cross_entropy(S, Y, label_smoothing=0.1).item(), rel=1e-6)


def test_gradient_flows_to_student_logits_only():
    s, t = S.clone().requires_grad_(), T.clone().requires_grad_()
    DistillationLoss()(s, t.detach(), Y).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": -0.1}, {"alpha": 1.1},
                                    {"label_smoothing": 1.0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DistillationLoss(**kwargs)


def test_distillation_without_teacher_logits_raises():
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationLoss(alpha=0.5)(S, None, Y)


def test_hint_loss_kept_channel_init_is_the_inverse_selection():
    teacher = create_model("wide_cnn", 10, widths=(8, 6)).eval()
    student = create_model("wide_cnn", 10, widths=(3, 6)).eval()
    kept = [5, 0, 2]  # student channel j is teacher channel kept[j]
    with torch.no_grad():  # make the student's conv1 the kept teacher filters, so its features are a selection
        student.features.conv1.conv.weight.copy_(teacher.features.conv1.conv.weight[kept])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(student.features.conv1.bn, name).copy_(getattr(teacher.features.conv1.bn, name)[kept])
    hint = HintLoss(student, teacher, "features.conv1", "features.conv1", kept_channels=kept)
    x = torch.randn(2, 3, 16, 16)
    student(x), teacher(x)
    mapped = hint.regressor(hint._student_hook.output)
    torch.testing.assert_close(mapped[:, kept], teacher.features.conv1(x)[:, kept])
    assert mapped[:, [1, 3, 4, 6, 7]].abs().sum() == 0
    hint.remove()
    assert not student.features.conv1._forward_hooks and not teacher.features.conv1._forward_hooks


def test_hint_loss_needs_both_forward_passes():
    model = create_model("wide_cnn", 10, widths=(4, 4))
    hint = HintLoss(model, create_model("wide_cnn", 10, widths=(4, 8)), "features.conv2", "features.conv2")
    with pytest.raises(RuntimeError):
        hint()
    with pytest.raises(ValueError, match="not in the model"):
        HintLoss(model, model, "features.conv9", "features.conv1")
