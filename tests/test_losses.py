"""Distillation losses: each against a hand computation of its paper's formula, their identities and invariances,
and the registry's contract (names, arguments, parts, teacher, dtype)."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from kd import (LOSSES, DistillationLoss, DistillLoss, HintLoss, TrainState, create_loss, register_loss, soft_target_kl,
                total_loss)
from kd.losses import DISTLoss, DKDLoss, LogitStandardizedKDLoss
from models import create_model

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
T = torch.tensor([[1.0, 1.5, -0.5], [2.0, -1.0, 0.0]])
Y = torch.tensor([0, 2])

# B = 3, K = 4: the non-target part of DKD and both DIST relations need more than two classes / samples
S4 = torch.tensor([[1.2, -0.3, 0.8, 2.0], [0.0, 1.5, -1.0, 0.4], [-0.7, 0.2, 2.5, 1.1]])
T4 = torch.tensor([[3.0, -1.0, 0.5, 1.0], [-0.5, 2.5, 0.0, 1.5], [0.3, -1.2, 4.0, 0.2]])
Y4 = torch.tensor([3, 1, 2])

EXPECTED_PARTS = {"ce": {"ce"}, "kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"},
                  "kd-ls": {"ce", "kd"}}


def _close(actual: torch.Tensor, expected: float, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------- hand computations, plain Python


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    """KL(p ‖ q) = Σ_k p_k log(p_k / q_k)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def _hand_ce(s, y, smoothing=0.0):
    """mean_b [(1 − ε)(−log p_y) + ε · mean_k(−log p_k)], p = softmax(s_b)."""
    total = 0.0
    for row, label in zip(s.tolist(), y.tolist()):
        log_p = [math.log(p) for p in _softmax(row)]
        total += -(1 - smoothing) * log_p[label] - smoothing * _mean(log_p)
    return total / len(y)


def _hand_kd(s, t, temp):
    """T² · mean_b KL(softmax(t_b/T) ‖ softmax(s_b/T))."""
    return temp**2 * _mean(_kl(_softmax([v / temp for v in trow]), _softmax([v / temp for v in srow]))
                           for srow, trow in zip(s.tolist(), t.tolist()))


def _hand_dkd(s, t, y, temp):
    """Zhao et al. 2022: TCKD on b = [p_y, 1 − p_y], NCKD on p̂_k = p_k / (1 − p_y) for k ≠ y; each T² · mean_b KL."""
    tckd, nckd = [], []
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax([v / temp for v in srow]), _softmax([v / temp for v in trow])
        tckd.append(_kl([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]]))
        ns = [p / (1 - ps[label]) for k, p in enumerate(ps) if k != label]
        nt = [p / (1 - pt[label]) for k, p in enumerate(pt) if k != label]
        nckd.append(_kl(nt, ns))
    return temp**2 * _mean(tckd), temp**2 * _mean(nckd)


def _pearson(u, v, eps=1e-8):
    """Σ(u − ū)(v − v̄) / (‖u − ū‖ ‖v − v̄‖ + eps), eps as documented in DISTLoss."""
    mu, mv = _mean(u), _mean(v)
    du, dv = [a - mu for a in u], [b - mv for b in v]
    norm = math.sqrt(sum(a * a for a in du)) * math.sqrt(sum(b * b for b in dv))
    return sum(a * b for a, b in zip(du, dv)) / (norm + eps)


def _hand_dist(s, t, tau):
    """Huang et al. 2022: τ²(1 − mean over rows of ρ), τ²(1 − mean over columns of ρ), on softmax(·/τ)."""
    ps = [_softmax([v / tau for v in row]) for row in s.tolist()]
    pt = [_softmax([v / tau for v in row]) for row in t.tolist()]
    inter = 1 - _mean(_pearson(a, b) for a, b in zip(ps, pt))
    intra = 1 - _mean(_pearson(a, b) for a, b in zip(zip(*ps), zip(*pt)))
    return tau**2 * inter, tau**2 * intra


def _zscore(row, eps=1e-7):
    """(z − mean) / (std + eps), std with divisor K − 1 (as documented in LogitStandardizedKDLoss)."""
    m = _mean(row)
    sd = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))
    return [(v - m) / (sd + eps) for v in row]


def _hand_kd_ls(s, t, temp):
    """Sun et al. 2024: T² · mean_b KL(softmax(Z(t_b)/T) ‖ softmax(Z(s_b)/T))."""
    return temp**2 * _mean(_kl(_softmax([v / temp for v in _zscore(trow)]),
                               _softmax([v / temp for v in _zscore(srow)]))
                           for srow, trow in zip(s.tolist(), t.tolist()))


# --------------------------------------------------------------------------------------------------- ce and kd


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_a_hand_computation(smoothing):
    parts = create_loss("ce", label_smoothing=smoothing)(S4, None, Y4)
    assert set(parts) == {"ce"}
    _close(parts["ce"], _hand_ce(S4, Y4, smoothing))


@pytest.mark.parametrize("temp,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 1.0), (8.0, 0.1)])
def test_kd_matches_a_hand_computation(temp, alpha):
    for s, t, y in ((S, T, Y), (S4, T4, Y4)):
        parts = DistillationLoss(temperature=temp, alpha=alpha)(s, t, y)
        assert set(parts) == {"ce", "kd"}
        _close(parts["kd"], alpha * _hand_kd(s, t, temp))
        _close(parts["ce"], (1 - alpha) * _hand_ce(s, y))
        _close(total_loss(parts), alpha * _hand_kd(s, t, temp) + (1 - alpha) * _hand_ce(s, y))


def test_kd_keeps_its_positional_signature():
    loss = DistillationLoss(2.0, 0.25)
    assert (loss.temperature, loss.alpha, loss.label_smoothing) == (2.0, 0.25, 0.0)


def test_kl_part_is_zero_when_student_equals_teacher():
    assert DistillationLoss(alpha=1.0)(T, T.clone(), Y)["kd"].item() == pytest.approx(0.0, abs=1e-7)


def test_t_squared_factor():
    for temp in (1.0, 2.0, 4.0):
        plain_kl = F.kl_div(F.log_softmax(S / temp, 1), F.softmax(T / temp, 1), reduction="batchmean")
        assert soft_target_kl(S, T, temp).item() == pytest.approx(temp**2 * plain_kl.item(), rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    loss = DistillationLoss(alpha=0.0)
    assert not loss.needs_teacher
    for teacher in (None, T):
        parts = loss(S, teacher, Y)
        assert set(parts) == {"ce"}
        assert parts["ce"].item() == pytest.approx(F.cross_entropy(S, Y).item(), rel=1e-6)
    smoothed = DistillationLoss(alpha=0.0, label_smoothing=0.1)(S, None, Y)["ce"]
    assert smoothed.item() == pytest.approx(F.cross_entropy(S, Y, label_smoothing=0.1).item(), rel=1e-6)


def test_gradient_flows_to_student_logits_only():
    s, t = S.clone().requires_grad_(), T.clone().requires_grad_()
    total_loss(DistillationLoss()(s, t, Y)).backward()  # the teacher's logits are constants even when they need grad
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": -0.1}, {"alpha": 1.1},
                                    {"label_smoothing": 1.0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DistillationLoss(**kwargs)


def test_distillation_without_teacher_logits_raises():
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationLoss(alpha=0.5)(S, None, Y)


# --------------------------------------------------------------------------------------------------------- dkd


@pytest.mark.parametrize("temp,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 0.5, 0.5), (2.0, 2.0, 3.0)])
def test_dkd_matches_a_hand_computation(temp, alpha, beta):
    loss = create_loss("dkd", alpha=alpha, beta=beta, temperature=temp, ce_weight=0.5)
    parts = loss(S4, T4, Y4)  # no state: fully warmed up
    tckd, nckd = _hand_dkd(S4, T4, Y4, temp)
    assert set(parts) == {"ce", "tckd", "nckd"}
    _close(parts["tckd"], alpha * tckd)
    _close(parts["nckd"], beta * nckd)
    _close(parts["ce"], 0.5 * _hand_ce(S4, Y4))


def test_dkd_defaults_are_the_cifar_setting():
    loss = create_loss("dkd")
    assert (loss.alpha, loss.beta, loss.temperature, loss.warmup, loss.ce_weight) == (1.0, 8.0, 4.0, 20.0, 1.0)


@pytest.mark.parametrize("epoch,factor", [(1, 0.05), (10, 0.5), (20, 1.0), (40, 1.0)])
def test_dkd_warmup_factor(epoch, factor):
    loss = DKDLoss(warmup=20)
    full = loss(S4, T4, Y4)
    parts = loss(S4, T4, Y4, TrainState(epoch=epoch, epochs=40, step=123, steps_per_epoch=7))
    tckd, nckd = _hand_dkd(S4, T4, Y4, 4.0)
    _close(parts["tckd"], factor * 1.0 * tckd)
    _close(parts["nckd"], factor * 8.0 * nckd)
    torch.testing.assert_close(parts["ce"], full["ce"])  # the warm-up is on the distillation terms only
    assert loss.warmup_factor(TrainState(epoch, 40, 0)) == pytest.approx(factor)
    assert DKDLoss(warmup=0).warmup_factor(TrainState(1, 40, 0)) == 1.0


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_terms_decompose_classical_kd(temp):
    """Zhao et al. eq. 1, per sample: KL(p^t ‖ p^s) = TCKD + (1 − p^t_y) · NCKD (both sides carry T²)."""
    torch.manual_seed(1)
    s, t, y = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3, torch.randint(0, 5, (6,))
    dkd = DKDLoss(alpha=1.0, beta=1.0, temperature=temp, warmup=0, ce_weight=0.0)
    for i in range(len(y)):
        row_s, row_t, row_y = s[i:i + 1], t[i:i + 1], y[i:i + 1]
        parts = dkd(row_s, row_t, row_y)
        p_target = _softmax([v / temp for v in row_t[0].tolist()])[row_y.item()]
        kd = soft_target_kl(row_s, row_t, temp)
        torch.testing.assert_close(kd, parts["tckd"] + (1 - p_target) * parts["nckd"], rtol=1e-5, atol=1e-6)
        _close(kd, _hand_kd(row_s, row_t, temp))


def test_dkd_stays_finite_when_the_target_probability_rounds_to_one():
    s = torch.tensor([[60.0, -40.0, -45.0], [0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[80.0, -50.0, -30.0], [1.0, 0.0, -1.0]])
    parts = DKDLoss(temperature=1.0)(s, t, torch.tensor([0, 2]))
    total_loss(parts).backward()
    assert all(torch.isfinite(v) for v in parts.values()) and torch.isfinite(s.grad).all()


# -------------------------------------------------------------------------------------------------------- dist


@pytest.mark.parametrize("tau,beta,gamma", [(4.0, 2.0, 2.0), (1.0, 1.0, 3.0)])
def test_dist_matches_a_hand_computation(tau, beta, gamma):
    parts = create_loss("dist", beta=beta, gamma=gamma, tau=tau, ce_weight=0.7)(S4, T4, Y4)
    inter, intra = _hand_dist(S4, T4, tau)
    assert set(parts) == {"ce", "inter", "intra"}
    _close(parts["inter"], beta * inter, rtol=1e-4, atol=1e-5)
    _close(parts["intra"], gamma * intra, rtol=1e-4, atol=1e-5)
    _close(parts["ce"], 0.7 * _hand_ce(S4, Y4))


def test_dist_defaults_are_the_cifar_setting():
    loss = create_loss("dist")
    assert (loss.beta, loss.gamma, loss.tau, loss.ce_weight) == (2.0, 2.0, 4.0, 1.0)


def test_dist_is_unchanged_by_a_constant_added_to_a_row_of_logits():
    shift_s, shift_t = torch.tensor([[5.0], [-3.0], [0.5]]), torch.tensor([[-2.0], [10.0], [1.0]])
    loss = DISTLoss()
    for name, value in loss(S4 + shift_s, T4 + shift_t, Y4).items():
        torch.testing.assert_close(value, loss(S4, T4, Y4)[name], rtol=1e-5, atol=1e-5)


def test_dist_is_zero_for_an_affine_match_of_the_teacher_probabilities_but_not_scale_invariant():
    """Y^s = a·Y^t + (1 − a)/K has Pearson correlation 1 with Y^t along rows and columns: both relations vanish,
    though the KL of classical KD does not. Rescaling the logits changes the softmax, so DIST is not invariant to it."""
    tau, a, k = 4.0, 0.4, T4.shape[1]
    s = tau * torch.log(a * F.softmax(T4 / tau, dim=1) + (1 - a) / k)  # softmax(s/τ) is exactly that mix
    parts = DISTLoss(tau=tau)(s, T4, Y4)
    assert parts["inter"].item() == pytest.approx(0.0, abs=1e-4)
    assert parts["intra"].item() == pytest.approx(0.0, abs=1e-4)
    assert soft_target_kl(s, T4, tau).item() > 1e-2
    scaled = DISTLoss(tau=tau)(3.0 * s, T4, Y4)
    assert scaled["inter"].item() > 1e-2 and scaled["intra"].item() > 1e-2


# ------------------------------------------------------------------------------------------------------- kd-ls


@pytest.mark.parametrize("temp,kd_weight,ce_weight", [(2.0, 9.0, 1.0), (3.0, 1.0, 0.1)])
def test_kd_ls_matches_a_hand_computation(temp, kd_weight, ce_weight):
    for s, t, y in ((S, T, Y), (S4, T4, Y4)):
        parts = create_loss("kd-ls", temperature=temp, kd_weight=kd_weight, ce_weight=ce_weight)(s, t, y)
        assert set(parts) == {"ce", "kd"}
        _close(parts["kd"], kd_weight * _hand_kd_ls(s, t, temp))
        _close(parts["ce"], ce_weight * _hand_ce(s, y))


def test_kd_ls_defaults_are_the_cifar_setting():
    loss = create_loss("kd-ls")
    assert (loss.temperature, loss.kd_weight, loss.ce_weight) == (2.0, 9.0, 1.0)


def test_kd_ls_is_unchanged_by_shifting_or_positively_rescaling_rows_of_logits():
    scale, shift = torch.tensor([[0.5], [3.0], [7.0]]), torch.tensor([[-2.0], [7.0], [0.3]])
    loss = LogitStandardizedKDLoss()
    reference = loss(S4, T4, Y4)["kd"]
    for s, t in ((scale * S4 + shift, T4), (S4, scale.flip(0) * T4 - shift), (scale * S4, scale * T4 + shift)):
        torch.testing.assert_close(loss(s, t, Y4)["kd"], reference, rtol=1e-5, atol=1e-6)
    # plain KD is not: the student must then match the teacher's logit scale, which is what the z-score removes
    assert abs(soft_target_kl(3.0 * S4, T4, 2.0) - soft_target_kl(S4, T4, 2.0)) > 1e-2


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_holds_the_documented_losses():
    assert set(EXPECTED_PARTS) <= set(LOSSES)
    assert all(issubclass(cls, DistillLoss) for cls in LOSSES.values())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_gives_finite_fp32_parts_with_student_gradients(name):
    loss = create_loss(name)
    s, t = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    parts = loss(s, t, y, TrainState(epoch=3, epochs=10, step=20, steps_per_epoch=10))
    assert isinstance(loss, DistillLoss) and parts
    if name in EXPECTED_PARTS:
        assert set(parts) == EXPECTED_PARTS[name]
    for part, value in parts.items():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value), part
    total_loss(parts).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bf16_logits_give_fp32_parts(name):
    loss = create_loss(name)
    s, t = (S4 * 1.5).bfloat16(), T4.bfloat16()
    parts = loss(s, t, Y4)
    reference = loss(s.float(), t.float(), Y4)
    for part, value in parts.items():
        assert value.dtype == torch.float32, part
        torch.testing.assert_close(value, reference[part])


@pytest.mark.parametrize("name,needs", [("ce", False), ("kd", True), ("dkd", True), ("dist", True), ("kd-ls", True)])
def test_needs_teacher(name, needs):
    assert create_loss(name).needs_teacher is needs


@pytest.mark.parametrize("name,kwargs", [("kd", {"alpha": 0.0}), ("dkd", {"alpha": 0.0, "beta": 0.0}),
                                         ("dist", {"beta": 0.0, "gamma": 0.0}), ("kd-ls", {"kd_weight": 0.0})])
def test_zero_distillation_weights_need_no_teacher(name, kwargs):
    loss = create_loss(name, **kwargs)
    assert not loss.needs_teacher
    assert set(loss(S4, None, Y4)) == {"ce"}


@pytest.mark.parametrize("name", [n for n in sorted(LOSSES) if create_loss(n).needs_teacher])
def test_a_loss_that_needs_a_teacher_refuses_none(name):
    with pytest.raises(ValueError, match="needs teacher logits"):
        create_loss(name)(S4, None, Y4)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("known losses: " + ", ".join(sorted(LOSSES)))):
        create_loss("fitnet")


def test_unknown_argument_names_the_key_and_the_accepted_ones():
    with pytest.raises(ValueError) as err:
        create_loss("dkd", temprature=2.0)
    message = str(err.value)
    assert "'temprature'" in message
    assert all(key in message for key in ("alpha", "beta", "temperature", "warmup", "ce_weight", "label_smoothing"))
    with pytest.raises(ValueError, match="'alpha'"):
        create_loss("ce", alpha=0.5)


@pytest.mark.parametrize("name,kwargs,shown", [
    ("ce", {"label_smoothing": 1.0}, "1.0"),
    ("kd", {"temperature": 0.0}, "0.0"),
    ("kd", {"alpha": 1.5}, "1.5"),
    ("dkd", {"temperature": -1.0}, "-1.0"),
    ("dkd", {"beta": -8.0}, "-8.0"),
    ("dkd", {"warmup": -5}, "-5"),
    ("dkd", {"ce_weight": float("nan")}, "nan"),
    ("dist", {"tau": 0}, "0"),
    ("dist", {"gamma": -2.0}, "-2.0"),
    ("kd-ls", {"temperature": -2.0}, "-2.0"),
    ("kd-ls", {"kd_weight": -9.0}, "-9.0"),
    ("kd-ls", {"eps": "small"}, "'small'"),
])
def test_bad_values_raise_naming_the_value(name, kwargs, shown):
    (key,) = kwargs
    with pytest.raises(ValueError, match=re.escape(key) + ".*" + re.escape(shown)):
        create_loss(name, **kwargs)


@pytest.mark.parametrize("s,t,y", [(S4[0], T4[0], Y4[:1]), (S4, T4[:, :3], Y4), (S4, T4, Y4[:2]),
                                   (S4[:, :1], T4[:, :1], Y4)])
def test_bad_shapes_raise(s, t, y):
    with pytest.raises(ValueError, match="shape"):
        create_loss("kd")(s, t, y)


def test_register_loss_adds_a_loss_in_one_line():
    name = "test-scaled-ce"
    assert name not in LOSSES
    try:
        @register_loss(name)
        class ScaledCE(DistillLoss):
            def __init__(self, weight: float = 2.0) -> None:
                super().__init__()
                self.weight = weight

            @property
            def needs_teacher(self) -> bool:
                return False

            def _parts(self, s, t, y, state):
                return {"ce": self.weight * F.cross_entropy(s, y)}

        parts = create_loss(name, weight=3.0)(S4, None, Y4)
        _close(parts["ce"], 3.0 * _hand_ce(S4, Y4))
        with pytest.raises(ValueError, match="'scale'.*weight"):
            create_loss(name, scale=1.0)
        with pytest.raises(ValueError, match="registered twice"):
            register_loss(name)(ScaledCE)
    finally:
        LOSSES.pop(name, None)
    with pytest.raises(TypeError):
        register_loss("not-a-loss")(torch.nn.MSELoss)
    assert "not-a-loss" not in LOSSES


def test_total_loss_is_the_sum_of_the_parts():
    parts = {"a": torch.tensor(1.5), "b": torch.tensor(-0.25), "c": torch.tensor(2.0)}
    _close(total_loss(parts), 3.25)
    with pytest.raises(ValueError):
        total_loss({})


@pytest.mark.parametrize("kwargs", [{"epoch": 0, "epochs": 10, "step": 0}, {"epoch": 1, "epochs": 0, "step": 0},
                                    {"epoch": 1, "epochs": 10, "step": -1},
                                    {"epoch": 1, "epochs": 10, "step": 0, "steps_per_epoch": 0}])
def test_train_state_rejects_impossible_positions(kwargs):
    with pytest.raises(ValueError):
        TrainState(**kwargs)


# ------------------------------------------------------------------------------------------------------- hints


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
