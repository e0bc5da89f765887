"""Retrieval metrics against a naive per-query implementation written here."""

import numpy as np
import pytest
import torch

from flowkd import FlowKDError
from flowkd.retrieval import evaluate

LEVELS = [i / 10 for i in range(11)]
# the reference evaluator's recall levels are np.arange(0, 1.01, 0.1): 0.1 * i, not i / 10 (they differ at
# i = 3, 6, 7: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001)
REF_LEVELS = [0.1 * i for i in range(11)]


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
        leg_idx = [min(range(len(rec)), key=lambda n: (abs(rec[n] - lv), n)) for lv in REF_LEVELS]
        curves.append([interp[j] for j in idx])
        aps.append(np.mean([interp[j] for j in idx]))
        leg_aps.append(np.mean([leg[j] for j in leg_idx]))
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


def reference_evaluator(q, ql, db, dl, metric, ks, levels, batch=128):
    """The reference evaluator's computation, step by step in numpy (independent of flowkd's code): queries in
    batches of ``batch``; per batch, precision at every rank, then a running maximum from the right over
    the columns ``batch - 2`` down to 0 only (its loop runs over the number of rows, not of ranks); recall at
    every rank; each level read at the first rank whose recall is nearest it (argmin); the batch's mean AP
    and mean precision curve weighted by its size. The ranking: float64 distances, stable sort."""
    q, db, ql, dl = np.asarray(q, np.float64), np.asarray(db, np.float64), np.asarray(ql), np.asarray(dl)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        db = db / np.linalg.norm(db, axis=1, keepdims=True)
        dist = -(q @ db.T)
    else:
        dist = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    n = len(db)
    per_class = np.bincount(dl)
    map_sum, curve_sum = 0.0, np.zeros(n)
    for start in range(0, len(q), batch):
        d, lab = dist[start:start + batch], ql[start:start + batch]
        rel = (dl[np.argsort(d, axis=1, kind="stable")] == lab[:, None]).astype(np.int64)
        prec = np.cumsum(rel, axis=1) / np.arange(1, n + 1)
        for col in range(len(prec) - 2, -1, -1):
            prec[:, col] = np.maximum(prec[:, col], prec[:, col + 1])
        rec = np.cumsum(rel, axis=1) / per_class[lab][:, None].astype(np.float64)
        at_levels = np.stack([prec[np.arange(len(prec)), np.argmin(np.abs(rec - lv), axis=1)] for lv in levels], 1)
        map_sum += at_levels.mean(1).mean() * len(prec)
        curve_sum += prec.mean(0) * len(prec)
    return 100 * map_sum / len(q), [100 * curve_sum[k - 1] / len(q) for k in ks]


def circle_data(per_class, nq, seed):
    """Points on the unit circle with distinct, well-separated distances (database at angles j * delta, queries
    at k * delta + delta / 3), so float32 and float64 rank them alike; ``per_class`` items of each of 10
    classes, shuffled around the circle."""
    rng = np.random.default_rng(seed)
    n = 10 * per_class
    delta = 2 * np.pi / n
    dl = rng.permutation(np.repeat(np.arange(10), per_class))
    k = rng.integers(0, n, nq)
    ql = np.where(rng.random(nq) < 0.7, dl[k], rng.integers(0, 10, nq))  # mostly the class of the nearest item
    ang_db, ang_q = np.arange(n) * delta, k * delta + delta / 3
    db = np.stack([np.cos(ang_db), np.sin(ang_db)], 1)
    q = np.stack([np.cos(ang_q), np.sin(ang_q)], 1)
    return q, ql, db, dl


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("per_class", [15, 25])  # R = 5 (mod 10): recall levels 0.3 and 0.7 fall between two hits
def test_legacy_is_the_reference_evaluator_in_the_tie_case(metric, per_class):
    q, ql, db, dl = circle_data(per_class, nq=300, seed=per_class)  # 2 full reference batches and one of 44
    d = -(q @ db.T) if metric == "cosine" else ((q[:, None] - db[None]) ** 2).sum(-1)
    assert np.diff(np.sort(d, 1), axis=1).min() > 1e-5  # no near-ties: the ranking is unambiguous in float32
    ks = (1, 10, 50, 100)
    want_map, want_pk = reference_evaluator(q, ql, db, dl, metric, ks, np.arange(0, 1.01, 0.1))
    r = evaluate(torch.from_numpy(q).float(), torch.from_numpy(ql), torch.from_numpy(db).float(),
                 torch.from_numpy(dl), metric=metric, k=ks, legacy=True)
    assert r["legacy"]["map"] == pytest.approx(want_map, rel=0, abs=1e-12)
    assert [r["legacy"]["precision_at"][k] for k in ks] == pytest.approx(want_pk, rel=0, abs=1e-12)
    # the case matters: levels i / 10 give another value on these data (flowkd's standard levels)
    old_map, _ = reference_evaluator(q, ql, db, dl, metric, ks, [i / 10 for i in range(11)])
    assert abs(old_map - want_map) > 1e-3


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


def test_cpu_ranking_is_the_stable_order_of_the_distances():
    # ties (kept in database order), negative distances and -0.0 == +0.0: every hit's rank equals the one a
    # stable argsort of the float distances gives
    import numpy as np

    from flowkd.retrieval import _hit_positions_cpu

    g = torch.Generator().manual_seed(2)
    dist = (torch.randint(-6, 7, (9, 300), generator=g).float() / 4)
    dist[0, :50] = -0.0
    dist[1] = torch.randn(300, generator=g)
    dl = torch.randint(0, 3, (300,), generator=g)
    lb = torch.randint(0, 3, (9,), generator=g)
    relevant = torch.bincount(dl, minlength=3)[lb]
    got = _hit_positions_cpu(dist, dl, lb, relevant)
    for i in range(9):
        order = np.argsort(dist[i].numpy() + np.float32(0.0), kind="stable")
        want = np.flatnonzero(dl.numpy()[order] == lb[i].item()) + 1
        assert got[i, :len(want)].tolist() == want.tolist()
        assert (got[i, len(want):] == 301).all()
