"""Retrieval evaluation as in the paper (docs/method.md §5): rank a database for every query, score the ranking.

For each query: rank the database by distance (cosine or Euclidean; ties broken by database index),
precision p(n) and recall r(n) at every rank n, interpolated precision p_i(n) = max_{n' >= n} p(n'),
and average precision = mean of p_i at the 11 recall levels 0, 0.1, ..., 1 (each read at the first
rank whose recall is nearest the level). mAP is the mean over queries, in %. Queries are processed in
batches bounded in memory; the result does not depend on the batch size.

``legacy=True`` also gives the reference evaluator's numbers: it ran queries in batches of 128 and its
interpolation (a running maximum from the right) covered only the first ``B - 1`` ranks of a batch of B
queries, using precision within those first B ranks; elsewhere it kept the raw precision. That makes
its values depend on the batch size and sit slightly below the standard mAP; its P@k is the
interpolated precision at rank k under the same limit. Its recall levels are the reference's floats,
``np.arange(0, 1.01, 0.1)`` (``LEGACY_LEVELS``: 0.30000000000000004, 0.6000000000000001, 0.7000000000000001
where the standard levels are 0.3, 0.6, 0.7), and it reads each level at the first rank whose recall is
nearest it, as the standard mAP does: with R = 5 (mod 10) relevant items, recall levels 0.3 and 0.7 lie
exactly halfway between two hit counts in exact arithmetic, and the reference's slightly larger floats pick
the later hit where the standard levels pick the earlier one.

How it is computed: after ranking, everything is derived from the ranks of the relevant items alone
(``P[b, m]`` = rank of the (m+1)-th hit of query b): precision only rises at a hit, so the interpolated
precision at any rank is the running maximum of hit precisions from the right, and every rank a recall
level can select is a hit's rank (or rank 1). On the CPU the ranking itself is an exact stable sort of the
distances' order-preserving int32 bit patterns (torch's integer sort), row by row, rows split over threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FlowKDError

__all__ = ["evaluate", "LEVELS", "LEGACY_LEVELS"]

LEVELS = torch.tensor([i / 10 for i in range(11)], dtype=torch.float64)
# the reference evaluator's recall levels, float for float (passalis/pkth nn/retrieval_evaluation.py,
# ``Database.recall_levels``): 0.1 * i, so 0.30000000000000004, 0.6000000000000001, 0.7000000000000001
LEGACY_LEVELS = torch.from_numpy(np.arange(0, 1.01, 0.1)).to(torch.float64)


def _rev_cummax(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(torch.cummax(torch.flip(x, [1]), 1).values, [1])


def _order_keys(dist: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order is the float order of ``dist`` (+0.0 and -0.0 equal)."""
    bits = (dist + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@contextmanager
def _intra_op_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _hit_positions_cpu(dist: torch.Tensor, dl: torch.Tensor, lb: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """What ``_hit_positions(_relevance(...))`` gives, row by row: each row's int32 keys sorted stably (torch's
    integer sort; ties keep the database order) and the ranks of the relevant items read off."""
    b, n = dist.shape
    pos = torch.full((b, int(relevant.max())), n + 1, dtype=torch.long)
    for i in range(b):
        order = torch.sort(_order_keys(dist[i]), stable=True).indices
        hit = torch.nonzero(dl[order] == lb[i]).squeeze(1)
        pos[i, :len(hit)] = hit + 1
    return pos


def _relevance(dist: torch.Tensor, dl: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """Boolean relevance of each rank (B, N): rows sorted stably by distance."""
    order = torch.sort(dist, dim=1, stable=True).indices
    return dl[order] == lb[:, None]


def _hit_positions(rel: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(B, Rmax) int64: the 1-based rank of each hit, padded with N + 1."""
    b, n = rel.shape
    rmax = int(relevant.max())
    rows, cols = rel.nonzero(as_tuple=True)
    start = torch.cumsum(relevant, 0) - relevant
    slot = torch.arange(len(rows), device=rel.device) - start[rows]
    pos = torch.full((b, rmax), n + 1, dtype=torch.long, device=rel.device)
    pos[rows, slot] = cols + 1
    return pos


def _level_hits(relevant: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """For each query and level: the hit count m at the selected rank.

    The selected rank is the first one whose recall (hits / R, float64) is nearest the level, an earlier
    rank winning a tie; it is the rank of the m-th hit, or rank 1 when m = 0.
    """
    r = relevant[:, None].double()
    lv = levels[None, :]
    m = torch.ceil(lv * r).clamp(0, None)
    m = torch.where(((m - 1) / r >= lv) & (m >= 1), m - 1, m)  # exact float semantics: smallest m, m/R >= l
    m = torch.where(m / r < lv, m + 1, m).clamp(max=r.expand_as(m))
    take_dn = (m >= 1) & (((m - 1) / r - lv).abs() <= (m / r - lv).abs())
    return torch.where(take_dn, m - 1, m).long()


def evaluate(
    queries,
    query_labels,
    database,
    database_labels,
    metric: str = "cosine",
    k=(1, 10, 100),
    *,
    batch_size: int | None = None,
    device=None,
    legacy: bool = False,
    legacy_batch: int = 128,
) -> dict:
    """Retrieval scores of ``queries`` (Q x D) against ``database`` (N x D) by class label.

    Returns ``{"map", "precision_at": {k: %}, "pr_curve": {"recall", "precision"}, "n_queries", ...}``
    and, with ``legacy=True``, ``"legacy": {"map", "precision_at"}``.
    """
    if metric not in ("cosine", "euclidean"):
        raise FlowKDError(f"unknown retrieval metric {metric!r}; valid: cosine, euclidean")
    q = torch.as_tensor(queries)
    device = torch.device(device) if device is not None else q.device
    q = q.to(device, torch.float32).flatten(1)
    db = torch.as_tensor(database).to(device, torch.float32).flatten(1)
    ql = torch.as_tensor(query_labels).to(device).long()
    dl = torch.as_tensor(database_labels).to(device).long()
    if q.shape[0] == 0 or db.shape[0] == 0:
        raise FlowKDError("retrieval needs at least one query and one database item")
    if q.shape[1] != db.shape[1]:
        raise FlowKDError(f"queries have {q.shape[1]} dims but the database has {db.shape[1]}")
    if ql.shape[0] != q.shape[0] or dl.shape[0] != db.shape[0]:
        raise FlowKDError("retrieval labels must have one entry per query / database row")
    n = db.shape[0]
    ks = [int(x) for x in k]
    if any(x < 1 or x > n for x in ks):
        raise FlowKDError(f"precision@k needs 1 <= k <= {n} (database size), got {ks}")
    if metric == "cosine":
        q, db = F.normalize(q, dim=1), F.normalize(db, dim=1)
    else:
        db_sq = (db * db).sum(1)
    n_cls = int(max(ql.max(), dl.max())) + 1
    counts = torch.bincount(dl, minlength=n_cls)
    if batch_size is None:
        budget = 2**27 if device.type == "cuda" else 2**23
        batch_size = max(1, min(q.shape[0], budget // n))
    levels = LEVELS.to(device)
    legacy_levels = LEGACY_LEVELS.to(device)
    kt = torch.tensor(ks, device=device)
    # per-query values, reduced once at the end so the result does not depend on the batch size
    curves, pks, leg_curves, leg_pks = [], [], [], []
    qpos_all = torch.arange(q.shape[0], device=device)
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    dl_small = dl.to(torch.uint8 if n_cls <= 256 else torch.int32)  # the labels each CPU row gathers, narrow

    def score(pos, relevant, qpos):
        """Per-query values from the ranks of the hits (row by row, so any split of the rows gives the same):
        the curve at the recall levels, P@k, and the legacy curve and P@k (None without ``legacy``)."""
        rmax = pos.shape[1]
        j = torch.arange(1, rmax + 1, device=device, dtype=torch.float64)
        valid = j[None, :] <= relevant[:, None]
        prec_hit = torch.where(valid, j[None, :] / pos.double(), torch.zeros((), dtype=torch.float64, device=device))
        interp_hit = _rev_cummax(prec_hit)  # interpolated precision at the rank of each hit
        m = _level_hits(relevant, levels)
        at_levels = interp_hit.gather(1, (m - 1).clamp_min(0))  # m = 0 selects rank 1: the max over all hits
        hits_at_k = torch.searchsorted(pos, kt[None, :].expand(len(pos), -1).contiguous(), right=True)
        pk = hits_at_k.double() / kt[None, :].double()
        if not legacy:
            return at_levels, pk, None, None
        # reference batches of ``legacy_batch`` queries; a batch of B interpolates only ranks < B - 1,
        # with the running maximum taken within the first B ranks
        bsize = torch.clamp(q.shape[0] - (qpos // legacy_batch) * legacy_batch, max=legacy_batch)
        ml = _level_hits(relevant, legacy_levels)  # the reference's float levels (see the module docstring)
        sel = torch.where(ml >= 1, pos.gather(1, (ml - 1).clamp_min(0)), torch.ones_like(ml)) - 1  # 0-based rank
        ranks0 = torch.cat([sel, (kt - 1)[None, :].expand(len(sel), -1)], 1)  # levels, then each k
        h = min(rmax, legacy_batch)
        hp, hprec = pos[:, None, :h], prec_hit[:, None, :h]
        hits_n = torch.searchsorted(pos, (ranks0 + 1).contiguous(), right=True)  # hits within ranks 1..n+1
        raw = hits_n.double() / (ranks0 + 1).double()
        in_win = (hp >= (ranks0 + 1)[:, :, None]) & (hp <= bsize[:, None, None])
        win = torch.where(in_win, hprec, torch.zeros((), dtype=torch.float64, device=device)).amax(2)
        val = torch.where(ranks0 < (bsize[:, None] - 1), torch.maximum(raw, win), raw)
        return at_levels, pk, val[:, : len(legacy_levels)], val[:, len(levels):]

    for start in range(0, q.shape[0], batch_size):
        qb, lb = q[start:start + batch_size], ql[start:start + batch_size]
        qpos = qpos_all[start:start + batch_size]
        relevant = counts[lb]
        keep = relevant > 0
        if not bool(keep.all()):
            qb, lb, qpos, relevant = qb[keep], lb[keep], qpos[keep], relevant[keep]
        if len(qb) == 0:
            continue
        dist = -(qb @ db.T) if metric == "cosine" else db_sq[None, :] - 2.0 * (qb @ db.T)
        if device.type == "cpu":  # rows ranked and scored in worker threads of one intra-op thread each
            step = -(-len(qb) // threads)
            parts = [(dist[s:s + step], lb[s:s + step], relevant[s:s + step], qpos[s:s + step])
                     for s in range(0, len(qb), step)]
            with _intra_op_threads(1), ThreadPoolExecutor(threads) as pool:
                scored = list(pool.map(lambda a: score(_hit_positions_cpu(a[0], dl_small, a[1], a[2]), *a[2:]), parts))
        else:
            scored = [score(_hit_positions(_relevance(dist, dl, lb), relevant), relevant, qpos)]
        del dist
        for c, p, lc, lp in scored:
            curves.append(c)
            pks.append(p)
            if legacy:
                leg_curves.append(lc)
                leg_pks.append(lp)
    if not curves:
        raise FlowKDError("no query has a relevant item in the database (do the label sets overlap?)")
    curve = torch.cat(curves)
    n_valid = curve.shape[0]
    pk = torch.cat(pks).mean(0) * 100
    out = {
        "metric": metric,
        "map": float(curve.mean(1).mean() * 100),
        "precision_at": {x: float(v) for x, v in zip(ks, pk)},
        "pr_curve": {"recall": [round(float(v), 2) for v in LEVELS], "precision": [float(v) for v in curve.mean(0) * 100]},
        "n_queries": int(q.shape[0]),
        "n_queries_without_relevant": int(q.shape[0] - n_valid),
        "n_database": n,
    }
    if legacy:
        leg_pk = torch.cat(leg_pks).mean(0) * 100
        out["legacy"] = {
            "map": float(torch.cat(leg_curves).mean(1).mean() * 100),
            "precision_at": {x: float(v) for x, v in zip(ks, leg_pk)},
            "batch": legacy_batch,
        }
    return out
