"""The bank of teacher views: what it stores equals the teacher on the same pixels, views are the live loader's
draws, a killed computation resumes, a bank that does not match is refused."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from flowkd.bank import BankTeacher, Entry, ViewBank, entry_for
from flowkd.data.arrays import ArrayDataset, Loader, view_count
from flowkd.errors import FlowKDError
from flowkd.losses.baselines import AttentionTransfer, HintonKD


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ArrayDataset(x, torch.arange(n) % 4, ["a", "b", "c", "d"])


def _teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4))


def _loader(data, seed=3, **kw):
    return Loader(data, 16, shuffle=True, augment=True, pad=2, seed=seed, with_index=True, **kw)


def _live(model, x, taps):
    """An independent reference: the teacher's outputs by hand (no hooks)."""
    conv = model[1](model[0](x))
    out = model(x)
    return {"1": conv.flatten(1), "4": out, "1@map": conv}[taps]


def test_view_table_with_k_epochs_serves_exactly_the_live_loaders_pixels():
    data = _data()
    live, bank = _loader(data), ViewBank(_teacher(), data, _loader(data), root="/nonexistent-unused")
    served = _loader(data, views=bank.view_table(3))
    for epoch in range(3):
        live.set_epoch(epoch), served.set_epoch(epoch)
        for a, b in zip(live, served):
            assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_views_are_one_byte_and_cover_every_crop_and_flip():
    assert view_count(4) == 162
    data = _data(n=4000)
    v = torch.cat([_loader(data, seed=s).epoch_views(0) for s in range(3)])
    assert v.dtype == torch.uint8 and set(v.tolist()) == set(range(view_count(2)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_stored_values_are_the_teachers_outputs_on_the_served_views(tmp_path, dtype):
    data, model = _data(), _teacher()
    bank = ViewBank(model, data, _loader(data), root=tmp_path, batch_size=7, log=lambda *_: None)
    e4, e1 = Entry("4", "", dtype), Entry("1", "", dtype)
    bank.ensure({e4: None, e1: None}, 2)
    teacher = BankTeacher(bank, {"4": e4, "1": e1}, 2)
    loader = _loader(data, views=bank.view_table(2))
    tol = dict(rtol=0, atol=1e-5) if dtype == "float32" else dict(rtol=2e-3, atol=2e-3)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, _, idx in loader:
            got = teacher.lookup(idx, bank.views(epoch % 2)[idx])
            with torch.no_grad():
                for tap in ("4", "1"):
                    torch.testing.assert_close(got[tap], _live(model, x, tap), **tol)


def test_attention_maps_are_stored_not_feature_maps_and_give_the_same_loss(tmp_path):
    data, model = _data(), _teacher()
    at = AttentionTransfer()
    entry, form = entry_for("1@map", at)
    bank = ViewBank(model, data, _loader(data), root=tmp_path, log=lambda *_: None)
    bank.ensure({entry: form}, 1)
    stored = bank.array(0, entry)
    assert stored.shape == (len(data), 1, 8, 8)  # one channel, not the teacher's 6
    x = next(iter(_loader(data, views=bank.view_table(1))))
    with torch.no_grad():
        t_map = _live(model, x[0], "1@map")
    s_map = torch.randn(len(x[0]), 5, 4, 4)
    from_bank = torch.from_numpy(np.asarray(stored[x[2].numpy()])).float()
    torch.testing.assert_close(at(from_bank, s_map), at(t_map, s_map), rtol=2e-3, atol=1e-6)
    assert entry_for("4", HintonKD())[0].dtype == "float32"


def test_a_killed_computation_resumes_where_it_stopped(tmp_path):
    data, model = _data(n=64), _teacher()
    entry = Entry("4", "", "float32")
    clean = ViewBank(model, data, _loader(data), root=tmp_path / "clean", batch_size=4, log=lambda *_: None)
    clean.ensure({entry: None}, 1)
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying(x):
        calls["n"] += 1
        if calls["n"] == 11:
            raise Killed
        return x

    killed = ViewBank(model, data, _loader(data), root=tmp_path / "k", batch_size=4, log=lambda *_: None)
    with pytest.raises(Killed):
        killed.ensure({entry: dying}, 1)
    assert not killed.has(0, entry)  # no whole file yet: only the partial one
    counted = {"n": 0}

    def counting(x):
        counted["n"] += 1
        return x

    again = ViewBank(model, data, _loader(data), root=tmp_path / "k", batch_size=4, log=lambda *_: None)
    again.ensure({entry: counting}, 1)
    assert counted["n"] == 16 - 8  # went on after the 8 batches it had saved
    np.testing.assert_allclose(again.array(0, entry), clean.array(0, entry), rtol=0, atol=1e-6)


def test_a_bank_that_does_not_match_is_refused_naming_the_difference(tmp_path):
    data, model = _data(), _teacher()
    bank = ViewBank(model, data, _loader(data), root=tmp_path, log=lambda *_: None)
    bank.ensure({Entry("4"): None}, 1)
    manifest = json.loads((bank.dir / "manifest.json").read_text())
    assert manifest["fingerprint"] == bank.dir.name
    with pytest.raises(FlowKDError, match=r"another views .*seed 4"):
        ViewBank(model, data, _loader(data, seed=4), root=bank.dir)
    other = _teacher()
    with torch.no_grad():
        other[0].weight.add_(1)
    with pytest.raises(FlowKDError, match="another teacher"):
        ViewBank(other, data, _loader(data), root=bank.dir)
    with pytest.raises(FlowKDError, match="another precision"):
        ViewBank(model, data, _loader(data), root=bank.dir, precision="bf16")
    # the same teacher, data and loader under the parent folder: the same bank, reused
    assert ViewBank(model, data, _loader(data), root=tmp_path).dir == bank.dir


def test_a_view_the_bank_does_not_hold_is_an_error(tmp_path):
    data, model = _data(), _teacher()
    bank = ViewBank(model, data, _loader(data), root=tmp_path, log=lambda *_: None)
    bank.ensure({Entry("4"): None}, 1)
    teacher = BankTeacher(bank, {"4": Entry("4")}, 1)
    idx = torch.arange(4)
    wrong = (bank.views(0)[idx].long() + 1) % view_count(2)
    with pytest.raises(FlowKDError, match="none of the bank's 1 views"):
        teacher.lookup(idx, wrong)
