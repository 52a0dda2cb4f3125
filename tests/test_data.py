import math
import urllib.error

import pytest
import torch
from PIL import Image

from kd.data import (BatchIterator, DataUnavailableError, ImageTensors, balanced_indices, channel_stats,
                     load_dataset, make_loaders, random_crop_flip)
from kd.data import sources
from kd.data.batches import apply_cutout, draw_cutout
from recipes.plumbing import option_checks
from recipes.plumbing.config import KDConfig


def _all_crops(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every pad-crop of one (C, H, W) image, mirrored and not."""
    h, w = img.shape[1:]
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    crops = [padded[:, y:y + h, x:x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return crops + [c.flip(2) for c in crops]


def test_random_crop_flip_gives_a_shifted_or_mirrored_copy_of_each_image():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img, aug in zip(x, out):
        assert any(torch.equal(aug, c) for c in _all_crops(img, 2))
    assert not torch.equal(out, x)  # with 6 images some offset or flip is drawn


def test_training_batches_keep_labels_and_cover_the_split_once(synthetic):
    it = BatchIterator(synthetic.train, 64, train=True, mean=synthetic.mean, std=synthetic.std, seed=1)
    xs, ys = zip(*it)
    assert len(xs) == len(it) == 512 // 64
    assert all(x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 for x in xs)
    assert all(y.dtype == torch.int64 for y in ys)
    assert torch.equal(torch.cat(ys).sort().values, synthetic.train.labels.sort().values)


def test_augmented_batch_matches_its_labels_images():
    images = torch.arange(4).view(4, 1, 1, 1).expand(4, 3, 8, 8).to(torch.uint8) * 50 + 10  # image i is flat 10+50i
    data = ImageTensors(images, torch.tensor([0, 1, 2, 3]), ["a", "b", "c", "d"])
    it = BatchIterator(data, 4, train=True, mean=(0, 0, 0), std=(1, 1, 1), seed=3)
    x, y = next(iter(it))
    centre = (x[:, 0, 4, 4] * 255).round().long()  # the centre pixel survives any 4-pixel shift
    assert torch.equal(centre, 10 + 50 * y)


def test_eval_batches_are_in_order_unaugmented_and_normalised(synthetic):
    it = BatchIterator(synthetic.test, 100, train=False, mean=synthetic.mean, std=synthetic.std)
    xs, ys = zip(*it)
    assert [len(y) for y in ys] == [100, 100, 56]  # the last partial batch is kept for evaluation
    x = torch.cat(xs)
    mean, std = torch.tensor(synthetic.mean).view(1, 3, 1, 1), torch.tensor(synthetic.std).view(1, 3, 1, 1)
    torch.testing.assert_close((x * std + mean) * 255, synthetic.test.images.float(), atol=1e-3, rtol=0)
    assert torch.equal(torch.cat(ys), synthetic.test.labels)


def test_iterator_state_replays_the_same_epoch(synthetic):
    it = BatchIterator(synthetic.train, 128, train=True, mean=synthetic.mean, std=synthetic.std, seed=5)
    state = it.state_dict()
    first = [x for x, _ in it]
    it.load_state_dict(state)
    again = [x for x, _ in it]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_cutout_blanks_the_square_at_each_corner_by_hand():
    x = torch.ones(3, 2, 8, 8)
    out = apply_cutout(x, 3, torch.tensor([[0, 0], [5, 3], [2, 6]]))  # the last square is cut by the image's edge
    expected = torch.ones(3, 8, 8)
    expected[0, 0:3, 0:3] = 0
    expected[1, 5:8, 3:6] = 0
    expected[2, 2:5, 6:8] = 0
    assert torch.equal(out, expected[:, None].expand(3, 2, 8, 8))
    corners = draw_cutout(1000, 3, 8, 6, torch.Generator().manual_seed(0))
    assert corners[:, 0].min() == 0 and corners[:, 0].max() == 5  # uniform over 0..H-size: always inside
    assert corners[:, 1].min() == 0 and corners[:, 1].max() == 3


def test_cutout_batch_is_the_plain_batch_with_one_mean_coloured_square(synthetic):
    options = {"train": True, "mean": synthetic.mean, "std": synthetic.std, "seed": 4, "pad": 2}
    plain = next(iter(BatchIterator(synthetic.train, 64, **options)))[0]
    cut = next(iter(BatchIterator(synthetic.train, 64, cutout=5, **options)))[0]  # crop drawn first: same crops
    differs = (cut != plain).any(1)  # (B, H, W)
    assert (cut == 0).all(1).flatten(1).sum(1).eq(25).all()  # one 5×5 square per image at 0, the mean colour
    assert torch.equal(differs, differs & (cut == 0).all(1))  # only inside it
    with pytest.raises(ValueError, match="cutout must be in"):
        BatchIterator(synthetic.train, 64, cutout=33, **options)


def test_cutout_refusals(synthetic):
    with pytest.raises(ValueError, match="--teacher-cache"):
        option_checks.check_options(KDConfig(cutout=8, teacher_cache=2, batch_size=32))
    assert make_loaders(synthetic, 32, cutout=8)[0].cutout == 8


def test_balanced_subset_counts():
    labels = torch.arange(10).repeat_interleave(50)
    idx = balanced_indices(labels, 37, seed=0)
    counts = torch.bincount(labels[idx], minlength=10)
    assert counts.sum() == 37 and counts.max() - counts.min() == 1
    assert torch.equal(idx, balanced_indices(labels, 37, seed=0))


def test_synthetic_is_deterministic_and_balanced():
    a = load_dataset("synthetic", limit_train=100, limit_test=50, seed=3)
    b = load_dataset("synthetic", limit_train=100, limit_test=50, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.bincount(a.train.labels).tolist() == [10] * 10


def _write(path, size, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = 128 if mode == "L" else (200, 30, 30, 255)[: len(mode)]
    Image.new(mode, size, colour).save(path)


def test_imagefolder_odd_sizes_grayscale_and_class_names(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    names = ["Äpfel und Birnen", "_x", "zebra crossing"]
    for i, name in enumerate(names):
        _write(root / "train" / name / "a.jpg", (17 + i, 23), "RGB")
        _write(root / "train" / name / "b.png", (40, 9), "L")  # grayscale
        _write(root / "train" / name / "c.png", (5, 5), "RGBA")
        _write(root / "val" / name / "d.jpg", (64, 48), "L")
    (root / "train" / names[0] / "notes.txt").write_text("not an image")
    data = load_dataset("imagefolder", root, image_size=16, cache_dir=tmp_path / "cache")
    assert data.classes == sorted(names)
    assert data.train.images.shape == (9, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (3, 3, 16, 16)
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    gray = data.test.images[0].float()
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])  # grey became equal RGB channels

    def no_decode(*args):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(sources, "_decode", no_decode)
    again = load_dataset("imagefolder", root, image_size=16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.train.images, data.train.images)


def test_imagefolder_limit_decodes_a_balanced_subset_of_real_images(cifar10_dir, tmp_path):
    data = load_dataset("imagefolder", cifar10_dir, limit_train=50, limit_test=20, cache_dir=tmp_path)
    assert data.train.images.shape == (50, 3, 32, 32)
    assert torch.bincount(data.train.labels).tolist() == [5] * 10
    assert data.classes[0] == "airplane" and len(data.classes) == 10


def test_missing_imagefolder_and_unknown_dataset_errors(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataUnavailableError, match="no images"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(ValueError, match="cifar10, cifar100, imagefolder, synthetic"):
        load_dataset("mnist")


def test_offline_cifar_error_shows_the_imagefolder_form(monkeypatch, tmp_path):
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "CIFAR100", offline)
    with pytest.raises(DataUnavailableError, match="--dataset imagefolder --data-dir DIR"):
        load_dataset("cifar100", tmp_path)


def test_channel_stats_by_hand_and_in_chunks():
    """Mean and unbiased std per channel of uint8 images in [0, 1] units, the same whatever the chunk size."""
    images = torch.tensor([[[[0, 255]], [[51, 51]], [[0, 0]]],
                           [[[255, 255]], [[102, 0]], [[0, 255]]]], dtype=torch.uint8)  # (2, 3, 1, 2)
    mean, std = channel_stats(images)
    by_hand = [[0, 1, 1, 1], [0.2, 0.2, 0.4, 0.0], [0, 0, 0, 1]]  # each channel's 4 pixels / 255
    for c, values in enumerate(by_hand):
        m = sum(values) / 4
        assert mean[c] == pytest.approx(m, abs=1e-12)
        assert std[c] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in values) / 3), abs=1e-12)
    big = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole, chunked = channel_stats(big), channel_stats(big, chunk_elements=1000)
    assert whole[0] == pytest.approx(chunked[0], abs=1e-12) and whole[1] == pytest.approx(chunked[1], abs=1e-12)
    flat = big.double().div(255).transpose(0, 1).reshape(3, -1)
    assert list(whole[0]) == pytest.approx(flat.mean(1).tolist(), abs=1e-12)
    assert list(whole[1]) == pytest.approx(flat.std(1).tolist(), abs=1e-12)
