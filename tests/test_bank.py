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
    return Loader(data, 16, shuffle=True, augment=True, pad=2, seed=seed, **kw)


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
            assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and torch.equal(a.view, b.view)


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
        for b in loader:
            x, idx = b.x, b.index
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
    b = next(iter(_loader(data, views=bank.view_table(1))))
    with torch.no_grad():
        t_map = _live(model, b.x, "1@map")
    s_map = torch.randn(len(b.x), 5, 4, 4)
    from_bank = torch.from_numpy(np.asarray(stored[b.index.numpy()])).float()
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
    (cost,) = again.costs()  # what the view cost is kept with the bank: the resumed part, after 32 images
    assert cost["view"] == 0 and cost["images"] == 64 - 32 and cost["resumed_at"] == 32 and cost["seconds"] >= 0
    assert cost["bytes"] == again.path(0, entry).stat().st_size
    assert [c["images"] for c in clean.costs()] == [64]


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


# ---- training from a bank ----------------------------------------------------------------------------------

class _Recording:
    """Wraps a teacher and keeps what it answered, batch by batch."""

    def __init__(self, teacher):
        self.teacher, self.taps, self.seen = teacher, teacher.taps, []

    def __call__(self, batch):
        out = self.teacher(batch)
        self.seen.append({k: v.detach().clone() for k, v in out.items()})
        return out

    def close(self):
        self.teacher.close()


def _student():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4))


def test_training_from_a_bank_of_as_many_views_as_epochs_equals_training_with_the_live_teacher(tmp_path):
    from flowkd.flow import InformationFlowLoss
    from flowkd.loop import train
    from flowkd.steps import DistillStep
    from flowkd.teachers import as_teacher

    data, model, epochs = _data(n=48), _teacher(), 3
    pairs = [("1", "1"), ("4", "4")]
    bank = ViewBank(model, data, _loader(data), root=tmp_path, batch_size=5, log=lambda *_: None)
    flow = InformationFlowLoss(pairs)
    entries = {t: entry_for(t, loss)[0] for (t, _), loss in zip(pairs, flow.pair_losses)}
    entries = {t: Entry(e.tap, e.form, "float32") for t, e in entries.items()}  # exactness: no float16 rounding
    bank.ensure({e: None for e in entries.values()}, epochs)

    runs = {}
    for how in ("live", "bank"):
        student = _student()
        if how == "live":
            teacher, loader = as_teacher(model, ["1", "4"]), _loader(data)
        else:
            teacher, loader = BankTeacher(bank, entries, epochs), _loader(data, views=bank.view_table(epochs))
        teacher = _Recording(teacher)
        with DistillStep(student, teacher, InformationFlowLoss(pairs)) as step:
            records = train(student, loader, step, epochs=[epochs], lr=[1e-2], show_progress=False)
        runs[how] = (student, teacher.seen, records)
    (s_live, seen_live, rec_live), (s_bank, seen_bank, rec_bank) = runs["live"], runs["bank"]
    assert len(seen_live) == len(seen_bank) == epochs * 3
    for a, b in zip(seen_live, seen_bank):  # the same teacher outputs, batch by batch
        for tap in a:
            torch.testing.assert_close(b[tap], a[tap].float(), rtol=1e-5, atol=1e-5)
    for p, q in zip(s_live.parameters(), s_bank.parameters()):  # and the same student
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert abs(rec_live[-1]["loss"] - rec_bank[-1]["loss"]) < 1e-4


CONFIG = """
seed = 0
progress = false
[data]
name = "digits"
batch_size = 64
augment = true
[models.teacher]
arch = "digits_cnn"
views = 2
bank = "{bank}"
bank_precision = "fp32"
[models.student]
arch = "digits_cnn"
width = 0.5
[[stages]]
name = "teacher"
kind = "supervised"
model = "teacher"
epochs = [0]
[[stages]]
name = "student"
kind = "distill"
model = "student"
teacher = "teacher"
pairs = [["pool1", "pool1"], ["fc1_relu", "fc1_relu"]]
epochs = [3]
[eval]
cost = "none"
"""


def test_a_pipeline_trains_from_a_bank_and_a_second_run_reuses_it(tmp_path, capsys):
    from flowkd.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(bank=tmp_path / "banks"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r1")]) == 0
    first = capsys.readouterr().out
    assert "bank view 2/2" in first
    info = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert info["stages"]["student"]["teacher_views"] == 2
    assert main(["run", str(cfg), "--out", str(tmp_path / "r2"), "--set", "stages.student.epochs=[2]"]) == 0
    second = capsys.readouterr().out
    assert "bank view" not in second  # another run of the same teacher and data: the same bank, nothing computed
    assert len(list((tmp_path / "banks").iterdir())) == 1
