"""Retrieval metrics against a naive per-query implementation written here."""

import numpy as np
import pytest
import torch

from flowkd import FlowKDError
from flowkd.retrieval import evaluate

LEVELS = [i / 10 for i in range(11)]


def naive(q, ql, db, dl, metric, ks, legacy_batch=128):
    q, db = np.asarray(q, np.float64), np.asarray(db, np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    aps, leg_aps, pks, leg_pks, curves = [], [], [], [], []
    nq = len(q)
    for i in range(nq):
        if metric == "cosine":
            dist = [-float(q[i] @ db[j]) for j in range(len(db))]
        else:
            dist = [float(((q[i] - db[j]) ** 2).sum()) for j in range(len(db))]
        order = sorted(range(len(db)), key=lambda j: (dist[j], j))  # ties: lower index first
        rel = [dl[j] == ql[i] for j in order]
        R = sum(rel)
        if R == 0:
            continue
        hits, prec, rec = 0, [], []
        for n, r in enumerate(rel):
            hits += r
            prec.append(hits / (n + 1))
            rec.append(hits / R)
        interp = [max(prec[n:]) for n in range(len(prec))]
        b = min(legacy_batch, nq - (i // legacy_batch) * legacy_batch)  # size of this query's reference batch
        leg = [max(prec[n:b]) if n < b - 1 else prec[n] for n in range(len(prec))]
        idx = [min(range(len(rec)), key=lambda n: (abs(rec[n] - lv), n)) for lv in LEVELS]
        curves.append([interp[j] for j in idx])
        aps.append(np.mean([interp[j] for j in idx]))
        leg_aps.append(np.mean([leg[j] for j in idx]))
        pks.append([prec[k - 1] for k in ks])
        leg_pks.append([leg[k - 1] for k in ks])
    return (100 * np.mean(aps), 100 * np.mean(leg_aps), 100 * np.mean(pks, 0), 100 * np.mean(leg_pks, 0),
            100 * np.mean(curves, 0))


def data(nq=300, nd=400, dim=6, classes=4, seed=0, integer=False):
    g = torch.Generator().manual_seed(seed)
    ql, dl = torch.randint(0, classes, (nq,), generator=g), torch.randint(0, classes, (nd,), generator=g)
    if integer:  # many exact ties
        q, db = torch.randint(-2, 3, (nq, dim), generator=g).float(), torch.randint(-2, 3, (nd, dim), generator=g).float()
    else:
        q, db = torch.randn(nq, dim, generator=g), torch.randn(nd, dim, generator=g)
    q[:, 0] += ql.float()  # some class structure
    db[:, 0] += dl.float()
    return q, ql, db, dl


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("integer", [False, True])
def test_matches_naive(metric, integer):
    if integer and metric == "cosine":
        pytest.skip("exact cosine ties are not exact in floating point")
    q, ql, db, dl = data(integer=integer)
    ks = (1, 10, 100)
    m, lm, pk, lpk, curve = naive(q.numpy(), ql.tolist(), db.numpy(), dl.tolist(), metric, ks)
    r = evaluate(q, ql, db, dl, metric=metric, k=ks, legacy=True)
    assert r["map"] == pytest.approx(m, abs=1e-9)
    assert [r["precision_at"][k] for k in ks] == pytest.approx(list(pk), abs=1e-9)
    assert r["pr_curve"]["precision"] == pytest.approx(list(curve), abs=1e-9)
    assert r["legacy"]["map"] == pytest.approx(lm, abs=1e-9)
    assert [r["legacy"]["precision_at"][k] for k in ks] == pytest.approx(list(lpk), abs=1e-9)
    assert r["legacy"]["map"] < r["map"]  # the legacy interpolation skips ranks >= B - 1


def test_independent_of_batch_size():
    q, ql, db, dl = data()
    results = [evaluate(q, ql, db, dl, k=(5, 50), batch_size=b, legacy=True) for b in (1, 7, 128, 1000)]
    for r in results[1:]:
        assert r["map"] == results[0]["map"]
        assert r["precision_at"] == results[0]["precision_at"]
        assert r["legacy"] == results[0]["legacy"]


def test_legacy_depends_on_reference_batch():
    q, ql, db, dl = data()
    a = evaluate(q, ql, db, dl, legacy=True, legacy_batch=128)
    b = evaluate(q, ql, db, dl, legacy=True, legacy_batch=32)
    assert a["map"] == b["map"] and a["legacy"]["map"] != b["legacy"]["map"]
    m, lm, *_ = naive(q.numpy(), ql.tolist(), db.numpy(), dl.tolist(), "cosine", (1,), legacy_batch=32)
    assert b["legacy"]["map"] == pytest.approx(lm, abs=1e-9)


def test_perfect_and_known_values():
    # two well-separated classes: every ranking is perfect
    db = torch.tensor([[1.0, 0], [1.1, 0], [0, 1.0], [0, 1.2]])
    dl = torch.tensor([0, 0, 1, 1])
    r = evaluate(db, dl, db, dl, metric="euclidean", k=(1, 2, 4))
    assert r["map"] == pytest.approx(100.0)
    assert r["precision_at"] == {1: 100.0, 2: 100.0, 4: 50.0}
    # one query, relevant items at ranks 2 and 4 of 4
    q, ql = torch.tensor([[0.0]]), torch.tensor([1])
    d, lab = torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([0, 1, 0, 1])
    r = evaluate(q, ql, d, lab, metric="euclidean", k=(1, 2, 4))
    # precision 0, 1/2, 1/3, 1/2; interpolated 1/2 everywhere; recall 0,.5,.5,1
    assert r["map"] == pytest.approx(50.0)
    assert r["precision_at"] == pytest.approx({1: 0.0, 2: 50.0, 4: 50.0})


def test_queries_without_relevant_items_are_skipped_and_counted():
    q, ql, db, dl = data(nq=20)
    ql[0] = 9  # no database item of class 9
    r = evaluate(q, ql, db, dl)
    assert r["n_queries_without_relevant"] == 1
    r2 = evaluate(q[1:], ql[1:], db, dl)
    assert r["map"] == pytest.approx(r2["map"], abs=1e-12)


def test_errors():
    q, ql, db, dl = data(nq=5, nd=10)
    with pytest.raises(FlowKDError, match="unknown retrieval metric"):
        evaluate(q, ql, db, dl, metric="manhattan", k=(1,))
    with pytest.raises(FlowKDError, match="dims"):
        evaluate(q[:, :3], ql, db, dl, k=(1,))
    with pytest.raises(FlowKDError, match="precision@k"):
        evaluate(q, ql, db, dl, k=(11,))
    with pytest.raises(FlowKDError, match="no query has a relevant item"):
        evaluate(q, torch.full_like(ql, 7), db, dl, k=(1,))
