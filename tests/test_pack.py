"""The image pack (kd.data.pack, benchmarks/jpeg_pack.py) and the data set that ships in one (cifar10-jpeg)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kd.data
from kd.data.pack import SHIPPED, PackError, load_pack_split, read_pack, unpack, write_pack

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "jpeg_pack.py"


@pytest.fixture
def packed(tmp_path, cifar10_dir) -> Path:
    dst = tmp_path / "c10.npz"
    summary = write_pack(cifar10_dir, dst)
    assert summary["files"] == 601 and summary["headers"] >= 1  # 600 images and the README
    return dst


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    """A copy of the pack ``src`` with some arrays replaced (``index`` given as a dict)."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        arrays[key] = np.frombuffer(json.dumps(value).encode(), np.uint8) if key == "index" else value
    np.savez(dst, **arrays)
    return dst


def test_unpack_gives_back_every_file_byte_for_byte_and_the_pack_is_smaller(packed, tmp_path, cifar10_dir):
    unpack(packed, tmp_path / "out")
    assert _files(tmp_path / "out") == _files(cifar10_dir)
    assert packed.stat().st_size < sum(len(b) for b in _files(cifar10_dir).values())


def test_images_decoded_straight_from_the_pack_equal_the_folders(packed, tmp_path, cifar10_dir):
    folder = kd.data.load_dataset("imagefolder", cifar10_dir, cache_dir=tmp_path / "a", progress=False)
    train = load_pack_split(packed, "train", cache_dir=tmp_path / "b", progress=False)
    test = load_pack_split(packed, "test", cache_dir=tmp_path / "b", classes=train.classes, progress=False)
    assert train.classes == folder.classes
    assert torch.equal(train.images, folder.train.images) and torch.equal(train.labels, folder.train.labels)
    assert torch.equal(test.images, folder.test.images) and torch.equal(test.labels, folder.test.labels)
    again = load_pack_split(packed, "train", cache_dir=tmp_path / "b", progress=False)  # from the cache
    assert torch.equal(again.images, train.images)


def test_a_damaged_pack_writes_nothing(packed, tmp_path):
    with np.load(packed) as z:
        blob = z["blob"].copy()
    blob[len(blob) // 2] ^= 0xFF
    bad = _rewrite(packed, tmp_path / "bad.npz", blob=blob)
    with pytest.raises(PackError, match="damaged"):
        unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("path", ["../escaped.jpg", "/tmp/escaped.jpg", "train/../../escaped.jpg", "C:/x.jpg"])
def test_a_path_outside_the_target_is_refused(packed, tmp_path, path):
    with np.load(packed) as z:
        index = json.loads(z["index"].tobytes())
    index["paths"][0] = path
    bad = _rewrite(packed, tmp_path / "bad.npz", index=index)
    (tmp_path / "deep").mkdir()
    with pytest.raises(PackError, match="outside its folder"):
        unpack(bad, tmp_path / "deep" / "out")
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "deep" / "out").exists()


def test_a_non_empty_target_is_refused_unless_replaced(packed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(PackError, match="not empty"):
        unpack(packed, out)
    assert _files(out) == {"mine.txt": b"keep"}
    unpack(packed, out, replace=True)
    assert "mine.txt" not in _files(out) and len(_files(out)) == 601


def test_pack_refuses_a_missing_folder_and_a_name_without_npz(tmp_path, cifar10_dir):
    with pytest.raises(PackError, match="not a folder"):
        write_pack(tmp_path / "missing", tmp_path / "x.npz")
    with pytest.raises(PackError, match="must end in .npz"):
        write_pack(cifar10_dir, tmp_path / "x.pack")
    with pytest.raises(PackError, match="does not exist"):
        write_pack(cifar10_dir, tmp_path / "nowhere" / "x.npz")
    assert list(tmp_path.iterdir()) == []


def _script_main():
    spec = importlib.util.spec_from_file_location("jpeg_pack", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_script_ends_bad_files_in_one_line(packed, tmp_path, capsys):
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    incomplete = tmp_path / "other.npz"
    np.savez(incomplete, index=np.zeros(3, np.uint8))
    cases = [("unpack", str(truncated), str(tmp_path / "o1")), ("unpack", str(incomplete), str(tmp_path / "o2")),
             ("unpack", str(tmp_path), str(tmp_path / "o3")), ("unpack", str(packed), str(tmp_path / "no" / "o4")),
             ("pack", str(tmp_path / "missing"), str(tmp_path / "p.npz")), ("check", str(truncated))]
    main = _script_main()
    for args in cases:
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)
    with pytest.raises(SystemExit) as exit_:
        main(["unpack", str(packed)])  # no destination
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: unpack needs a destination")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c10.npz", "cut.npz", "other.npz"]


def test_the_shipped_pack_is_the_recorded_cifar10_copy(tmp_path):
    path, digest = SHIPPED["cifar10-jpeg"]
    pack = read_pack(path)
    assert len(pack) == 60_000 and pack.sha256 == digest
    data = kd.data.load_dataset("cifar10-jpeg", limit_train=100, limit_test=50, cache_dir=tmp_path, progress=False)
    assert data.train.images.shape == (100, 3, 32, 32) and len(data.test) == 50 and data.num_classes == 10
    assert data.classes[0] == "airplane" and torch.bincount(data.train.labels).tolist() == [10] * 10
    with pytest.raises(ValueError, match="reads no --data-dir"):
        kd.data.load_dataset("cifar10-jpeg", tmp_path, cache_dir=tmp_path)
