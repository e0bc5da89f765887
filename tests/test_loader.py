"""ArrayDataset validation, and the Loader: order, normalisation, shuffling, epoch replay, augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowkd.data import ArrayDataset, Loader
from flowkd.data.arrays import epoch_generator, random_crop_flip
from flowkd.errors import FlowKDError


def make_data(n=10, c=2, h=3, w=4, n_classes=None, seed=0, **kw) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    n_classes = n_classes or n
    labels = torch.arange(n) % n_classes
    return ArrayDataset(images, labels, [f"c{i}" for i in range(n_classes)], **kw)


def indexed_data(n=20, c=1, h=2, w=2) -> ArrayDataset:
    """Image i is filled with the value i and has label i: every batch says which samples it holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, c, h, w).contiguous()
    return ArrayDataset(images, torch.arange(n), [str(i) for i in range(n)], mean=(0.0,) * c, std=(1.0,) * c)


def manual_normalize(img_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    out = torch.empty(img_uint8.shape, dtype=torch.float32)
    for ch in range(img_uint8.shape[1]):
        out[:, ch] = (img_uint8[:, ch].double() / 255.0 - mean[ch]) / std[ch]
    return out


# --- ArrayDataset --------------------------------------------------------------------------------------

def test_dataset_validation_errors():
    ok = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(FlowKDError, match=r"mine: images must be uint8 \(N, C, H, W\), got torch.float32"):
        ArrayDataset(ok.float(), torch.zeros(3), ["a"], name="mine")
    with pytest.raises(FlowKDError, match=r"images must be uint8 \(N, C, H, W\).*\(3, 2, 2\)"):
        ArrayDataset(ok[:, 0], torch.zeros(3), ["a"])
    with pytest.raises(FlowKDError, match=r"the dataset is empty"):
        ArrayDataset(ok[:0], torch.zeros(0), ["a"])
    with pytest.raises(FlowKDError, match=r"3 images but labels of shape \(2,\)"):
        ArrayDataset(ok, torch.zeros(2), ["a"])
    with pytest.raises(FlowKDError, match=r"3 images but labels of shape \(3, 1\)"):
        ArrayDataset(ok, torch.zeros(3, 1), ["a"])
    with pytest.raises(FlowKDError, match=r"label 2 is out of range for 2 classes"):
        ArrayDataset(ok, torch.tensor([0, 2, 1]), ["a", "b"])
    with pytest.raises(FlowKDError, match=r"label -1 is out of range for 2 classes"):
        ArrayDataset(ok, torch.tensor([0, -1, 1]), ["a", "b"])
    with pytest.raises(FlowKDError, match=r"mean/std need 1 values"):
        ArrayDataset(ok, torch.zeros(3), ["a"], mean=(0.5, 0.5), std=(0.2, 0.2))


def test_dataset_from_numpy_and_default_stats():
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (6, 3, 2, 2), dtype=np.uint8)
    images[:, 2] = 7  # a constant channel: std clamped
    data = ArrayDataset(images, np.array([0, 1, 0, 1, 0, 1], dtype=np.int32), ["a", "b"])
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert len(data) == 6 and data.shape == (3, 2, 2) and data.num_classes == 2
    x = images.astype(np.float64) / 255.0
    for ch in range(3):
        vals = x[:, ch].ravel()
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
        assert data.mean[ch] == pytest.approx(m, abs=1e-6)
        assert data.std[ch] == pytest.approx(max(s, 1e-3), abs=1e-6)
    assert data.std[2] == pytest.approx(1e-3)


def test_subset_keeps_stats():
    data = make_data(n=8, n_classes=4)
    sub = data.subset([5, 1])
    assert torch.equal(sub.images, data.images[[5, 1]]) and sub.labels.tolist() == [1, 1]
    assert tuple(sub.mean) == tuple(data.mean) and tuple(sub.std) == tuple(data.std)


# --- Loader: plain order ---------------------------------------------------------------------------

def test_loader_in_order_with_normalisation():
    mean, std = (0.4, 0.6), (0.2, 0.3)
    data = make_data(n=10, mean=mean, std=std)
    loader = Loader(data, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b.y) for b in batches] == [4, 4, 2]
    x = torch.cat([b.x for b in batches])
    y = torch.cat([b.y for b in batches])
    assert x.dtype == torch.float32 and x.shape == (10, 2, 3, 4)
    assert y.tolist() == list(range(10))
    torch.testing.assert_close(x, manual_normalize(data.images, mean, std), rtol=1e-6, atol=1e-6)
    # a pixel by hand
    v = int(data.images[7, 1, 2, 3])
    assert x[7, 1, 2, 3].item() == pytest.approx((v / 255.0 - 0.6) / 0.3, abs=1e-5)
    # iterating again gives the same thing
    x2 = torch.cat([b.x for b in loader])
    torch.testing.assert_close(x, x2, rtol=0, atol=0)


@pytest.mark.parametrize("n,bs,drop,expected", [
    (10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, True, [4, 4]), (8, 4, False, [4, 4]),
    (3, 5, False, [3]), (3, 5, True, []), (1, 1, False, [1]),
])
def test_drop_last_and_len(n, bs, drop, expected):
    data = make_data(n=n)
    for shuffle in (False, True):
        loader = Loader(data, batch_size=bs, drop_last=drop, shuffle=shuffle)
        assert len(loader) == len(expected)
        assert [len(b.y) for b in loader] == expected


def test_bad_batch_size():
    with pytest.raises(FlowKDError, match="batch size must be positive, got 0"):
        Loader(make_data(), batch_size=0)


# --- Loader: shuffling and epochs ---------------------------------------------------------------------

def _epoch_labels(loader) -> list[int]:
    out = []
    for x, y in ((b.x, b.y) for b in loader):
        # the image still matches its label after gathering (value i <-> label i, mean 0, std 1)
        torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255.0)
        out += y.tolist()
    return out


def test_shuffle_is_a_permutation_each_epoch():
    data = indexed_data(n=20)
    loader = Loader(data, batch_size=6, shuffle=True, seed=5)
    orders = []
    for e in range(4):
        loader.set_epoch(e)
        order = _epoch_labels(loader)
        assert sorted(order) == list(range(20))
        orders.append(order)
    assert orders[0] != list(range(20))
    assert len({tuple(o) for o in orders}) == 4  # epochs differ


def test_set_epoch_is_reproducible():
    data = indexed_data(n=20)
    a = Loader(data, batch_size=7, shuffle=True, seed=11)
    b = Loader(data, batch_size=7, shuffle=True, seed=11)
    for e in (0, 1, 2):
        a.set_epoch(e)
        _epoch_labels(a)
    a.set_epoch(3)
    b.set_epoch(3)  # b jumps straight to epoch 3
    assert _epoch_labels(a) == _epoch_labels(b)
    assert _epoch_labels(a) == _epoch_labels(a)  # replaying the same epoch
    b.set_epoch(4)
    assert _epoch_labels(a) != _epoch_labels(b)
    c = Loader(data, batch_size=7, shuffle=True, seed=12)
    c.set_epoch(3)
    assert _epoch_labels(a) != _epoch_labels(c)  # the seed matters
    fresh = Loader(data, batch_size=7, shuffle=True, seed=11)
    a.set_epoch(0)
    assert _epoch_labels(fresh) == _epoch_labels(a)  # no set_epoch: epoch 0


def test_shuffle_with_drop_last_drops_different_samples():
    data = indexed_data(n=10)
    loader = Loader(data, batch_size=4, shuffle=True, drop_last=True, seed=0)
    seen = set()
    for e in range(6):
        loader.set_epoch(e)
        order = _epoch_labels(loader)
        assert len(order) == 8 and len(set(order)) == 8
        seen |= set(order)
    assert seen == set(range(10))


# --- augmentation --------------------------------------------------------------------------------------

def naive_crop_flip(x: torch.Tensor, pad: int, seed_gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per-sample loop: zero-pad, crop at (oy, ox), flip when the draw says so (same draw order as the library)."""
    n, c, h, w = x.shape
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=seed_gen).tolist()
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=seed_gen).tolist()
    else:
        oy = ox = [0] * n
    flips = (torch.rand(n, generator=seed_gen) < 0.5).tolist() if flip else [False] * n
    out = torch.zeros_like(x)
    for i in range(n):
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    src_r = oy[i] + r - pad          # row in the unpadded image
                    cc = (w - 1 - col) if flips[i] else col
                    src_c = ox[i] + cc - pad
                    if 0 <= src_r < h and 0 <= src_c < w:
                        out[i, ch, r, col] = x[i, ch, src_r, src_c]
    return out, oy, ox, flips


@pytest.mark.parametrize("pad", [4, 1])
def test_random_crop_flip_matches_a_naive_loop(pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (12, 2, 6, 9), generator=g, dtype=torch.uint8)  # non-square, no zeros
    got = random_crop_flip(x, pad, torch.Generator().manual_seed(123))
    ref, oy, ox, flips = naive_crop_flip(x, pad, torch.Generator().manual_seed(123))
    assert any(flips) and not all(flips)  # both branches exercised
    assert len(set(oy)) > 1 and len(set(ox)) > 1
    assert max(oy + ox) <= 2 * pad and min(oy + ox) >= 0
    assert got.shape == x.shape and got.dtype == torch.uint8
    assert torch.equal(got, ref)
    # the crop is zero exactly where it falls in the padding
    for i in range(12):
        zero_rows = sum(1 for r in range(6) if not 0 <= oy[i] + r - pad < 6)
        zero_cols = sum(1 for col in range(9) if not 0 <= ox[i] + col - pad < 9)
        n_zero = 2 * (zero_rows * 9 + zero_cols * 6 - zero_rows * zero_cols)
        assert int((got[i] == 0).sum()) == n_zero


def test_random_crop_flip_centre_crop_and_no_flip_is_identity():
    x = torch.randint(1, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(random_crop_flip(x, 0, torch.Generator().manual_seed(0), flip=False), x)
    # pad 0, flip only: each sample is either itself or its mirror image
    got = random_crop_flip(x, 0, torch.Generator().manual_seed(9))
    flips = (torch.rand(5, generator=torch.Generator().manual_seed(9)) < 0.5).tolist()
    for i in range(5):
        want = x[i][:, :, [3, 2, 1, 0]] if flips[i] else x[i]
        assert torch.equal(got[i], want)


def test_loader_augmentation_replays_the_epoch_draws():
    data = make_data(n=7, c=2, h=5, w=6, mean=(0.5, 0.25), std=(0.25, 0.5))
    loader = Loader(data, batch_size=3, shuffle=True, augment=True, pad=4, seed=3)
    loader.set_epoch(2)
    batches = list(loader)
    # by hand: one generator per (seed, epoch): the order first, then each batch's crops and flips in turn
    gen = epoch_generator(3, 2)
    order = torch.randperm(7, generator=gen)
    for i, (x, y) in enumerate((b.x, b.y) for b in batches):
        idx = order[i * 3:(i + 1) * 3]
        ref, *_ = naive_crop_flip(data.images[idx], 4, gen)
        assert y.tolist() == data.labels[idx].tolist()
        torch.testing.assert_close(x, manual_normalize(ref, (0.5, 0.25), (0.25, 0.5)), rtol=1e-6, atol=1e-6)
    # padded pixels are zeros before normalisation: (0 - mean) / std after it
    assert torch.isclose(torch.cat([b.x[:, 0] for b in batches]), torch.tensor(-2.0)).any()
    again = list(loader)
    for b1, b2 in zip(batches, again):
        assert torch.equal(b1.x, b2.x)
    loader.set_epoch(3)
    assert not all(torch.equal(a.x, b.x) for a, b in zip(batches, loader))


def test_epoch_generator_depends_on_seed_and_epoch():
    draws = {(s, e): torch.rand(4, generator=epoch_generator(s, e)).tolist() for s in (0, 1) for e in (0, 1)}
    assert draws[(0, 0)] == torch.rand(4, generator=epoch_generator(0, 0)).tolist()
    assert len({tuple(v) for v in draws.values()}) == 4


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 1)])
@pytest.mark.parametrize("shuffle, augment, drop_last", [(True, True, False), (False, False, True), (True, False, False)])
def test_chunked_batches_equal_batches_made_one_at_a_time(world, rank, shuffle, augment, drop_last):
    data = make_data(n=23, c=3, h=4, w=5)
    kw = dict(batch_size=4, shuffle=shuffle, augment=augment, pad=2, seed=5, drop_last=drop_last,
              channels_last=True, world=world, rank=rank)
    one = Loader(data, chunk_bytes=0, **kw)            # one batch per chunk
    chunked = Loader(data, chunk_bytes=3 * 4 * 60 * 4, **kw)  # three batches per chunk: a partial last chunk
    for loader in (one, chunked):
        loader.set_epoch(1)
    a, b = list(one), list(chunked)
    assert len(a) == len(b) == len(one)
    for (x1, y1, i1), (x2, y2, i2) in (((p.x, p.y, p.index), (q.x, q.y, q.index)) for p, q in zip(a, b)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
        assert x2.is_contiguous(memory_format=torch.channels_last)
    # every sample of the epoch exactly once over the ranks' shares (world 1: the whole epoch)
    if world == 1 and not drop_last:
        assert sorted(torch.cat([q.index for q in b]).tolist()) == list(range(23))
