"""Readers for CIFAR pickles, STL-10 binaries and image folders: exact round trips, the cache, every error."""

from __future__ import annotations

import os
import pickle
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowkd.data import imagefolder
from flowkd.data.readers import NORMALIZATION, load_dataset, read_cifar, read_image_folder, read_stl10
from flowkd.errors import FlowKDError

Image = pytest.importorskip("PIL.Image")


def one_line_error(excinfo, *fragments):
    """The error is one line and names every fragment (paths, modes, sizes)."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert str(f) in msg, f"{f!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------ CIFAR


def py2_pickle(obj, path: Path) -> None:
    """Pickle like the CIFAR release (protocol 2, numpy arrays referencing numpy.core.multiarray)."""
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def fake_cifar10(root: Path, sizes=(3, 2), n_test=2, sub="cifar-10-batches-py", seed=0):
    rng = np.random.default_rng(seed)
    base = root / sub if sub else root
    base.mkdir(parents=True, exist_ok=True)
    names = [f"class{i}".encode() for i in range(10)]
    py2_pickle({b"num_cases_per_batch": 3, b"label_names": names, b"num_vis": 3072}, base / "batches.meta")
    out = {}
    for i, n in enumerate(sizes, 1):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        py2_pickle({b"batch_label": b"training batch", b"labels": labels, b"data": data,
                    b"filenames": [b"x.png"] * n}, base / f"data_batch_{i}")
        out[f"data_batch_{i}"] = (data, labels)
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n_test)]
    py2_pickle({b"batch_label": b"testing batch", b"labels": labels, b"data": data}, base / "test_batch")
    out["test_batch"] = (data, labels)
    return base, out


@pytest.mark.parametrize("sub", ["cifar-10-batches-py", ""])
def test_cifar10_round_trip(tmp_path, sub):
    base, raw = fake_cifar10(tmp_path, sub=sub)
    train = read_cifar(tmp_path, "train")
    data = np.concatenate([raw["data_batch_1"][0], raw["data_batch_2"][0]])
    labels = raw["data_batch_1"][1] + raw["data_batch_2"][1]
    assert train.images.shape == (5, 3, 32, 32) and train.images.dtype == torch.uint8
    # row layout: 1024 red values, then green, then blue, each row-major 32x32
    assert int(train.images[3, 1, 2, 7]) == int(data[3, 1024 + 2 * 32 + 7])
    assert np.array_equal(train.images.numpy(), data.reshape(5, 3, 32, 32))
    assert train.labels.tolist() == labels and train.labels.dtype == torch.int64
    assert train.classes == [f"class{i}" for i in range(10)]
    assert tuple(train.mean) == NORMALIZATION["cifar10"][0] and tuple(train.std) == NORMALIZATION["cifar10"][1]
    test = read_cifar(tmp_path, "test")
    assert np.array_equal(test.images.numpy(), raw["test_batch"][0].reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == raw["test_batch"][1]


def test_cifar100_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    names = [f"fine{i}".encode() for i in range(100)]
    py2_pickle({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, base / "meta")
    raw = {}
    for split, n in (("train", 4), ("test", 3)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [99, 0, 57, 3][:n]
        py2_pickle({b"data": data, b"fine_labels": fine, b"coarse_labels": [19] * n}, base / split)
        raw[split] = (data, fine)
    for split in ("train", "test"):
        ds = read_cifar(tmp_path, split, "cifar100")
        assert np.array_equal(ds.images.numpy(), raw[split][0].reshape(-1, 3, 32, 32))
        assert ds.labels.tolist() == raw[split][1]  # the fine labels, not the coarse ones
        assert ds.classes == [f"fine{i}" for i in range(100)]
        assert tuple(ds.mean) == NORMALIZATION["cifar100"][0] and tuple(ds.std) == NORMALIZATION["cifar100"][1]


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path / "nope")
    one_line_error(e, "data path not found", tmp_path / "nope")
    base, _ = fake_cifar10(tmp_path, sizes=(2, 2, 2))
    (base / "data_batch_2").unlink()
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path, "train")
    one_line_error(e, base / "data_batch_2")
    (base / "batches.meta").unlink()
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path, "test")
    one_line_error(e, base / "batches.meta")
    with pytest.raises(FlowKDError, match="valid: cifar10, cifar100"):
        read_cifar(tmp_path, "train", "cifar1000")
    with pytest.raises(FlowKDError, match="unknown split 'val'"):
        read_cifar(tmp_path, "val")


def test_cifar_bad_pickles(tmp_path):
    base, _ = fake_cifar10(tmp_path)
    (base / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path, "test")
    one_line_error(e, base / "test_batch")

    class Evil:  # a pickle that would run code: os.mkdir(marker)
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path, "test")
    one_line_error(e, base / "test_batch", "refusing")
    assert not (tmp_path / "pwned").exists()

    py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, base / "test_batch")
    with pytest.raises(FlowKDError) as e:
        read_cifar(tmp_path, "test")
    one_line_error(e, base / "test_batch", "3072")


# ----------------------------------------------------------------------------------------------- STL-10


def fake_stl10(root: Path, n_train=3, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (base / "class_names.txt").write_text("\n".join(names) + "\n")
    raw = {}
    for split, n, lo in (("train", n_train, 0), ("test", n_test, 100)):
        images = rng.integers(lo, lo + 100, (n, 3, 96, 96), dtype=np.uint8)  # train darker than test
        labels = rng.integers(1, 11, n).astype(np.uint8)
        labels[0] = 10
        # on disk each image is column-major: the (3, 96, 96) block holds image[c].T
        (base / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (base / f"{split}_y.bin").write_bytes(labels.tobytes())
        raw[split] = (images, labels)
    return base, names, raw


def test_stl10_round_trip(tmp_path):
    base, names, raw = fake_stl10(tmp_path)
    for split in ("train", "test"):
        ds = read_stl10(tmp_path, split)
        images, labels = raw[split]
        assert ds.images.shape == (len(images), 3, 96, 96)
        # row 5, column 70 of channel 1 is byte 1*96*96 + 70*96 + 5 of the image's block (column-major)
        block = (base / f"{split}_X.bin").read_bytes()[: 3 * 96 * 96]
        assert int(ds.images[0, 1, 5, 70]) == block[96 * 96 + 70 * 96 + 5] == int(images[0, 1, 5, 70])
        assert np.array_equal(ds.images.numpy(), images)
        assert ds.labels.tolist() == [int(v) - 1 for v in labels] and int(ds.labels[0]) == 9
        assert ds.classes == names


def test_stl10_errors(tmp_path):
    base, _, _ = fake_stl10(tmp_path)
    with open(base / "train_X.bin", "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(FlowKDError) as e:
        read_stl10(tmp_path, "train")
    one_line_error(e, base / "train_X.bin")
    (base / "test_y.bin").write_bytes(bytes([1]))  # 1 label for 2 images
    with pytest.raises(FlowKDError) as e:
        read_stl10(tmp_path, "test")
    one_line_error(e, base / "test_y.bin")
    (base / "class_names.txt").unlink()
    with pytest.raises(FlowKDError) as e:
        read_stl10(tmp_path, "test")
    one_line_error(e, "class_names.txt")


# ----------------------------------------------------------------------------------------- image folder

W, H = 8, 6  # not square, so a swapped H/W shows


def write_image(path: Path, array: np.ndarray, mode: str = "RGB", **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(array, mode if mode != "RGB" else None).save(path, fmt, **save)


def rgb(rng, lo=0, hi=256):
    return rng.integers(lo, hi, (H, W, 3), dtype=np.uint8)


def make_folder(root: Path, split: str = "train", seed: int = 0, lo: int = 0, hi: int = 256):
    """Three classes created out of order, PNG and JPG files with mixed-case extensions, plus files to ignore."""
    rng = np.random.default_rng(seed)
    files = {
        "zebra": ["2.png", "10.PNG", "1.jpg"],
        "ant": ["b.jpeg", "a.png"],
        "mole": ["x.JPG", "c.png"],
    }
    for cls, names in files.items():
        for name in names:
            write_image(root / split / cls / name, rgb(rng, lo, hi), quality=95)
        (root / split / cls / "notes.txt").write_text("not an image")
        (root / split / cls / ".hidden.png").write_bytes(b"junk")
    (root / split / ".cache_like").mkdir()
    return root / split


def expected(split_dir: Path):
    """What the reader should return, from PIL's own decode of each file, in sorted order."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels, paths = [], [], []
    for i, c in enumerate(classes):
        for p in sorted((split_dir / c).iterdir(), key=lambda p: p.name):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg") and not p.name.startswith("."):
                with Image.open(p) as im:
                    a = np.asarray(im)
                images.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
                labels.append(i)
                paths.append(p)
    return classes, np.stack(images), labels, paths


@pytest.mark.parametrize("workers", [1, 2])
def test_image_folder_round_trip(tmp_path, workers):
    split_dir = make_folder(tmp_path)
    ds = read_image_folder(tmp_path, "train", workers=workers)
    classes, images, labels, paths = expected(split_dir)
    assert ds.classes == ["ant", "mole", "zebra"] == classes
    assert [p.name for p in paths] == ["a.png", "b.jpeg", "c.png", "x.JPG", "1.jpg", "10.PNG", "2.png"]
    assert ds.images.shape == (7, 3, H, W) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images.numpy(), images)
    assert ds.labels.tolist() == labels == [0, 0, 1, 1, 2, 2, 2]
    # PNG pixels are exact: compare with the array written for zebra/10.PNG (written second, from seed 0)
    rng = np.random.default_rng(0)
    written_2, written_10 = rgb(rng), rgb(rng)  # zebra/2.png, zebra/10.PNG: the first two drawn
    assert np.array_equal(ds.images[5].numpy(), written_10.transpose(2, 0, 1))
    assert np.array_equal(ds.images[6].numpy(), written_2.transpose(2, 0, 1))
    assert ds.meta["source"] == str(tmp_path) and ds.meta["cached"] is False
    assert len(ds.meta["hash"]) == 32 and ds.meta["hash"] in Path(ds.meta["cache"]).name
    assert Path(ds.meta["cache"]).parent == tmp_path / ".flowkd-cache" and Path(ds.meta["cache"]).is_file()
    assert [p.suffix for p in (tmp_path / ".flowkd-cache").iterdir()] == [".npz"]  # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(ds.meta["cache"]).st_mode) == 0o666 & ~umask  # readable by whoever shares the data
    # mean/std computed from the data when not given
    assert np.allclose(ds.mean, (images / 255.0).mean((0, 2, 3)), atol=1e-5)


def test_image_folder_grayscale(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (H, W), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        write_image(tmp_path / "test" / ("one" if i < 2 else "two") / f"{i}.png", a, "L")
    ds = read_image_folder(tmp_path, "test", workers=1, mean=[0.5], std=[0.25])
    assert ds.images.shape == (3, 1, H, W)
    assert np.array_equal(ds.images[:, 0].numpy(), np.stack(arrays))
    assert ds.labels.tolist() == [0, 0, 1] and tuple(ds.mean) == (0.5,) and tuple(ds.std) == (0.25,)


def test_image_folder_cache_hit_skips_decoding(tmp_path, monkeypatch):
    make_folder(tmp_path)
    cache = tmp_path / "elsewhere"
    first = read_image_folder(tmp_path, "train", cache_dir=cache, workers=1)
    assert first.meta["cached"] is False and Path(first.meta["cache"]).parent == cache
    assert not (tmp_path / ".flowkd-cache").exists()

    def no_decoding(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(imagefolder, "_decode_images", no_decoding)
    monkeypatch.setattr(imagefolder, "_decode_chunk", no_decoding)
    again = read_image_folder(tmp_path, "train", cache_dir=cache, workers=1)
    assert again.meta["cached"] is True and again.meta["hash"] == first.meta["hash"]
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.classes == first.classes and again.images.dtype == torch.uint8


def test_image_folder_cache_invalidation(tmp_path):
    split_dir = make_folder(tmp_path)
    # stored (uncompressed) PNG: new pixels give a file of the same length, so only the bytes tell them apart
    write_image(split_dir / "ant" / "a.png", np.full((H, W, 3), 200, np.uint8), compress_level=0)
    size = (split_dir / "ant" / "a.png").stat().st_size
    base = read_image_folder(tmp_path, "train", workers=1)
    seen = {base.meta["hash"]}

    def reread():
        ds = read_image_folder(tmp_path, "train", workers=1)
        assert ds.meta["cached"] is False and ds.meta["hash"] not in seen, "a changed folder hit the old cache"
        seen.add(ds.meta["hash"])
        assert read_image_folder(tmp_path, "train", workers=1).meta["cached"] is True
        return ds

    changed = np.full((H, W, 3), 7, np.uint8)  # same path and file length, new pixels in ant/a.png
    write_image(split_dir / "ant" / "a.png", changed, compress_level=0)
    assert (split_dir / "ant" / "a.png").stat().st_size == size
    ds = reread()
    assert (ds.images[0] == 7).all() and (base.images[0] == 200).all()

    write_image(split_dir / "mole" / "d.png", changed)  # added
    ds = reread()
    assert len(ds) == 8 and ds.labels.tolist().count(1) == 3

    (split_dir / "zebra" / "2.png").unlink()  # removed
    assert len(reread()) == 7

    (split_dir / "zebra" / "10.PNG").rename(split_dir / "zebra" / "11.PNG")  # renamed: same bytes
    reread()


def test_image_folder_cache_write_is_atomic(tmp_path, monkeypatch):
    make_folder(tmp_path)
    real_savez = np.savez

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(imagefolder.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        read_image_folder(tmp_path, "train", workers=1)
    cache = tmp_path / ".flowkd-cache"
    assert not list(cache.glob("*.npz"))  # nothing half-written under a name that would be read back

    def disk_full(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imagefolder.np, "savez", disk_full)
    with pytest.warns(UserWarning, match="could not write the image cache"):
        ds = read_image_folder(tmp_path, "train", workers=1)
    assert ds.meta["cached"] is False and ds.meta["cache"] is None and not list(cache.iterdir())

    monkeypatch.setattr(imagefolder.np, "savez", real_savez)
    ds = read_image_folder(tmp_path, "train", workers=1)
    Path(ds.meta["cache"]).write_bytes(b"garbage")  # a damaged cache is ignored and rewritten
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        again = read_image_folder(tmp_path, "train", workers=1)
    assert again.meta["cached"] is False and torch.equal(again.images, ds.images)
    assert read_image_folder(tmp_path, "train", workers=1).meta["cached"] is True


def test_image_folder_missing_paths(tmp_path):
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path / "absent", "train")
    one_line_error(e, "data path not found", tmp_path / "absent")
    (tmp_path / "train").mkdir()
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "test")
    one_line_error(e, "split not found", tmp_path / "test")
    with pytest.raises(FlowKDError) as e:  # no class folders: no images at all
        read_image_folder(tmp_path, "train")
    one_line_error(e, "no images", tmp_path / "train")
    write_image(tmp_path / "train" / "a" / "0.png", rgb(np.random.default_rng(0)))
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train")
    one_line_error(e, "empty class folder", tmp_path / "train" / "b")
    with pytest.raises(FlowKDError, match="workers must be at least 1"):
        read_image_folder(tmp_path, "train", workers=0)


@pytest.mark.parametrize("workers", [1, 2])
def test_image_folder_inconsistent_images(tmp_path, workers):
    rng = np.random.default_rng(0)
    split_dir = make_folder(tmp_path)  # first image: ant/a.png, RGB 8x6
    first = split_dir / "ant" / "a.png"
    bad = split_dir / "zebra" / "2.png"  # the last file, so with workers=2 it is decoded in another process

    write_image(bad, rng.integers(0, 256, (H + 1, W, 3), dtype=np.uint8))
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=workers)
    one_line_error(e, bad, f"{W}x{H + 1}", f"{W}x{H}", first)

    write_image(bad, rng.integers(0, 256, (H, W), dtype=np.uint8), "L")
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=workers)
    one_line_error(e, bad, "'L'", "'RGB'", first)

    write_image(bad, rng.integers(0, 256, (H, W, 4), dtype=np.uint8), "RGBA")
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=workers)
    one_line_error(e, bad, "'RGBA'")

    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=workers)
    one_line_error(e, "cannot decode", bad)

    truncated = split_dir / "mole" / "x.JPG"  # a valid header, the entropy-coded data cut short
    write_image(bad, rgb(rng))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=workers)
    one_line_error(e, "cannot decode", truncated)
    assert not (tmp_path / ".flowkd-cache").exists()  # nothing cached from a failed decode


def test_image_folder_bad_first_image(tmp_path):
    rng = np.random.default_rng(0)
    first = tmp_path / "train" / "a" / "0.png"
    write_image(first, rng.integers(0, 256, (H, W), dtype=np.uint8), "P")
    write_image(tmp_path / "train" / "a" / "1.png", rgb(rng))
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=1)
    one_line_error(e, first, "'P'")
    first.write_bytes(b"garbage")
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=1)
    one_line_error(e, "cannot decode", first)


def test_image_folder_needs_pillow_to_decode(tmp_path, monkeypatch):
    make_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now raises ImportError
    with pytest.raises(FlowKDError) as e:
        read_image_folder(tmp_path, "train", workers=1)
    one_line_error(e, "reading image folders needs Pillow: pip install 'flowkd[images]'")


# ------------------------------------------------------------------------------------------ load_dataset


def test_load_dataset_imagefolder_applies_train_stats_to_test(tmp_path):
    make_folder(tmp_path, "train", seed=1, lo=0, hi=100)  # dark
    make_folder(tmp_path, "test", seed=2, lo=150, hi=256)  # bright
    train, test = load_dataset("imagefolder", tmp_path, workers=1)
    train_mean = (train.images.double() / 255).mean((0, 2, 3))
    test_mean = (test.images.double() / 255).mean((0, 2, 3))
    assert np.allclose(train.mean, train_mean.numpy(), atol=1e-5)
    assert tuple(test.mean) == tuple(train.mean) and tuple(test.std) == tuple(train.std)
    assert (test_mean > train_mean + 0.3).all()  # so the test split's own stats would differ
    x = test.normalize(test.images[:1])
    m, s = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    assert torch.allclose(x, (test.images[:1].float() / 255 - m) / s)
    assert train.classes == test.classes == ["ant", "mole", "zebra"]


def test_load_dataset_fixed_constants(tmp_path):
    make_folder(tmp_path / "jpg", "train")
    make_folder(tmp_path / "jpg", "test", seed=5)
    train, test = load_dataset("cifar10_jpg", tmp_path / "jpg", workers=1, cache_dir=tmp_path / "c")
    for ds in (train, test):
        assert (tuple(ds.mean), tuple(ds.std)) == NORMALIZATION["cifar10"]
    assert train.name == "cifar10_jpg/train" and test.name == "cifar10_jpg/test"
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2
    fake_cifar10(tmp_path / "pk")
    train, test = load_dataset("cifar10", tmp_path / "pk")
    assert len(train) == 5 and len(test) == 2 and (tuple(test.mean), tuple(test.std)) == NORMALIZATION["cifar10"]


def test_load_dataset_stl10_uses_train_stats(tmp_path):
    fake_stl10(tmp_path)
    train, test = load_dataset("stl10", tmp_path)
    assert tuple(test.mean) == tuple(train.mean)
    assert np.allclose(train.mean, (train.images.double() / 255).mean((0, 2, 3)).numpy(), atol=1e-5)
    assert not np.allclose(test.mean, (test.images.double() / 255).mean((0, 2, 3)).numpy(), atol=0.1)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FlowKDError) as e:
        load_dataset("imagenet", tmp_path)
    msg = one_line_error(e, "imagenet")
    for name in ("cifar10", "cifar100", "stl10", "imagefolder", "cifar10_jpg"):
        assert name in msg
    with pytest.raises(FlowKDError) as e:
        load_dataset("cifar10", tmp_path / "missing")
    one_line_error(e, f"data path not found: {tmp_path / 'missing'}")
    with pytest.raises(FlowKDError, match="no option"):
        load_dataset("cifar10", tmp_path, workers=2)
    make_folder(tmp_path, "train")
    write_image(tmp_path / "test" / "other" / "0.png", rgb(np.random.default_rng(0)))
    with pytest.raises(FlowKDError) as e:  # a test split with other classes would mislabel everything
        load_dataset("imagefolder", tmp_path, workers=1)
    one_line_error(e, "other", "classes")
