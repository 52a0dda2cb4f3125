"""The teacher-output cache: cached logits equal the live teacher's on the very same views, top-k rebuilds the
distribution, the disk cache is keyed and reused, and training from it never runs the teacher."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from kd import Trainer, create_loss, total_loss
from kd.data import apply_crop_flip, make_loaders
from kd.teacher_cache import CachedBatchIterator, build_teacher_cache, load_or_build
from models import create_model


def _teacher(classes=10):
    torch.manual_seed(3)
    return create_model("wide_cnn", classes, widths=(8, 16), hidden=16).eval()


def _student():
    torch.manual_seed(4)
    return create_model("wide_cnn", 10, widths=(4, 8), hidden=8)


def test_cached_loss_equals_the_live_teacher_loss_on_the_same_views(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    teacher, student = _teacher(), _student()
    cache, reused = load_or_build(teacher, train, views=3, cache_dir=tmp_path, precision="fp32", progress=False)
    assert not reused and cache.views == 3 and cache.logits.dtype == torch.float16
    loss = create_loss("kd")
    for x, y, cached in CachedBatchIterator(cache, train):
        with torch.no_grad():
            live = teacher(x)  # the teacher run now on exactly the view the student gets
            s = student(x)
        torch.testing.assert_close(cached, live, rtol=0, atol=2e-3 * float(live.abs().max()))  # fp16 storage
        torch.testing.assert_close(total_loss(loss(s, cached, y)), total_loss(loss(s, live, y)), rtol=1e-3, atol=1e-4)


def test_a_batch_is_the_stored_view_of_each_image_with_its_logits(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    cache, _ = load_or_build(_teacher(), train, views=4, cache_dir=tmp_path, progress=False)
    batches = CachedBatchIterator(cache, train)
    labels = torch.cat([y for _, y, _ in batches])
    assert len(labels) == len(batches) * 32 == len(train) * 32  # whole batches, as the plain iterator gives
    # the x of a batch is the stored augmentation of the stored view: rebuild it from the cache's parameters
    state = batches.state_dict()
    x, _, t = next(iter(batches))
    batches.load_state_dict(state)
    gen = train.generator
    order = torch.randperm(train.num_samples, generator=gen)
    view = torch.randint(0, 4, (train.num_samples,), generator=gen)
    idx = order[:32]
    expected = train.normalize(apply_crop_flip(train.images[idx], 4, cache.augment[view[idx], idx].long()))
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(t, cache.logits[view[idx], idx].float())


def test_topk_cache_keeps_the_top_probabilities_and_the_total_mass(tiny):
    teacher = _teacher(classes=50)
    images = tiny.train.images[:16]
    full = build_teacher_cache(teacher, images, views=2, mean=(0.5,) * 3, std=(0.25,) * 3, topk=0, progress=False)
    top = build_teacher_cache(teacher, images, views=2, mean=(0.5,) * 3, std=(0.25,) * 3, topk=5, progress=False)
    assert full.logits is not None and top.logits is None and top.topk_values.shape == (2, 16, 5)
    assert top.nbytes < full.nbytes
    view, index = torch.tensor([0, 1, 1]), torch.tensor([0, 3, 15])
    p_full = F.softmax(full.logits_for(view, index), 1)
    p_top = F.softmax(top.logits_for(view, index), 1)
    torch.testing.assert_close(p_top.sum(1), torch.ones(3))
    kept = top.topk_indices[view, index]  # (3, 5)
    torch.testing.assert_close(p_top.gather(1, kept), p_full.gather(1, kept), rtol=0, atol=2e-3)
    rest = torch.ones_like(p_top, dtype=torch.bool).scatter_(1, kept, False)
    spread = p_top[rest].view(3, 45)
    torch.testing.assert_close(spread, spread[:, :1].expand(-1, 45))  # the remaining mass, evenly


def test_a_build_reports_each_finished_view_once_and_a_reuse_none(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    calls = []
    load_or_build(_teacher(), train, views=3, cache_dir=tmp_path, progress=False, on_view=lambda *a: calls.append(a))
    assert [(done, views) for done, views, _ in calls] == [(1, 3), (2, 3), (3, 3)]  # after the last batch of each
    seconds = [s for _, _, s in calls]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    calls.clear()
    _, reused = load_or_build(_teacher(), train, views=3, cache_dir=tmp_path, progress=False,
                              on_view=lambda *a: calls.append(a))
    assert reused and calls == []


def test_the_disk_cache_is_reused_and_keyed_by_teacher_views_and_data(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    teacher = _teacher()
    first, reused = load_or_build(teacher, train, views=2, cache_dir=tmp_path, progress=False)
    again, reused_again = load_or_build(teacher, train, views=2, cache_dir=tmp_path, progress=False)
    assert not reused and reused_again and again.key == first.key
    torch.testing.assert_close(again.logits, first.logits)
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob(".*.tmp"))
    more, reused_more = load_or_build(teacher, train, views=3, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        teacher.classifier.bias.add_(1.0)
    other, reused_other = load_or_build(teacher, train, views=2, cache_dir=tmp_path, progress=False)
    assert not reused_more and not reused_other and len({first.key, more.key, other.key}) == 3


def test_an_unwritable_cache_folder_only_costs_the_reuse(tiny, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache, reused = load_or_build(_teacher(), train, views=2, cache_dir=blocker / "sub", progress=False)
    assert not reused and cache.logits.shape == (2, len(tiny.train), 10)
    assert any("kept in memory" in str(w.message) for w in caught)


def test_training_from_the_cache_never_runs_the_teacher(tiny, tmp_path):
    train, test = make_loaders(tiny, 32, seed=0)
    teacher = _teacher()
    cache, _ = load_or_build(teacher, train, views=2, cache_dir=tmp_path, progress=False)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    student = _student()
    result = Trainer(student, None, create_loss("kd"), epochs=2, progress=False).fit(
        CachedBatchIterator(cache, train), test)
    assert not calls and len(result.history) == 2
    assert set(result.history[0].train_parts) == {"ce", "kd"} and result.history[0].train_parts["kd"] > 0


def test_a_cache_for_other_images_is_refused(tiny, synthetic, tmp_path):
    train, _ = make_loaders(tiny, 32, seed=0)
    other, _ = make_loaders(synthetic, 32, seed=0)
    cache, _ = load_or_build(_teacher(), train, views=1, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds 128 images but the training split has 512"):
        CachedBatchIterator(cache, other)
