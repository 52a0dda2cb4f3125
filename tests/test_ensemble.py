"""Several teachers as one (kd.ensemble): the mean of the members' logits, the mirrored view, and the teacher cache
storing exactly that mean."""
import torch
from torch import nn

from kd.data import apply_crop_flip, make_loaders
from kd.ensemble import TeacherEnsemble, ensemble_members
from kd.teacher_cache import load_or_build
from models import create_model


def _teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("wide_cnn", 10, widths=(8, 16), hidden=16).eval()


class LeftColumn(nn.Module):
    """Logits (B, C) = the mean of each channel's leftmost pixel column: a teacher that tells an image from its
    mirror."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0].mean(-1)


def test_an_ensemble_of_one_teacher_is_that_teacher():
    teacher, x = _teacher(1), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(TeacherEnsemble([teacher])(x), teacher(x))
    assert ensemble_members(teacher) == [teacher]


def test_the_ensemble_is_the_mean_of_the_members_logits():
    a, b, c, x = _teacher(1), _teacher(2), _teacher(3), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        got = TeacherEnsemble([a, b, c])(x)
        torch.testing.assert_close(got, (a(x) + b(x) + c(x)) / 3)
    assert not torch.allclose(a(x), b(x))  # the members differ, so the mean is not any one of them


def test_a_mirrored_teacher_view_is_the_teacher_on_the_mirrored_image():
    x = torch.randn(2, 3, 8, 8)
    left, right = x[..., 0].mean(-1), x[..., -1].mean(-1)  # (B, C): the mirror's left column is x's right one
    torch.testing.assert_close(TeacherEnsemble([LeftColumn()], mirror=True)(x), (left + right) / 2)
    torch.testing.assert_close(TeacherEnsemble([LeftColumn()])(x), left)


def test_the_cached_logits_are_the_mean_of_the_teachers_logits_on_each_stored_view(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    a, b = _teacher(1), _teacher(2)
    for mirror in (False, True):
        cache, _ = load_or_build(TeacherEnsemble([a, b], mirror=mirror), train, views=2, cache_dir=tmp_path,
                                 precision="fp32", progress=False)
        for k in range(2):  # rebuild each stored view of the first 32 images and score it with each teacher by hand
            x = train.normalize(apply_crop_flip(train.images[:32], train.pad, cache.augment[k, :32].long()))
            views = (x, torch.flip(x, dims=[3])) if mirror else (x,)
            with torch.no_grad():
                expected = sum(t(v) for t in (a, b) for v in views) / (2 * len(views))
            torch.testing.assert_close(cache.logits[k, :32].float(), expected, rtol=0,
                                       atol=2e-3 * float(expected.abs().max()))  # fp16 storage


def test_the_mirrored_and_the_plain_ensemble_are_cached_apart(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    members = [_teacher(1), _teacher(2)]
    plain, _ = load_or_build(TeacherEnsemble(members), train, views=1, cache_dir=tmp_path, progress=False)
    mirrored, reused = load_or_build(TeacherEnsemble(members, mirror=True), train, views=1, cache_dir=tmp_path,
                                     progress=False)
    assert not reused and plain.key != mirrored.key
