"""Retrieval evaluation as in the paper (METHOD.md §5): rank a database for every query, score the ranking.

For each query: rank the database by distance (cosine or Euclidean; ties broken by database index),
precision p(n) and recall r(n) at every rank n, interpolated precision p_i(n) = max_{n' >= n} p(n'),
and average precision = mean of p_i at the 11 recall levels 0, 0.1, ..., 1 (each read at the first
rank whose recall is nearest the level). mAP is the mean over queries, in %. Queries are processed in
batches bounded in memory; the result does not depend on the batch size.

``legacy=True`` also gives the reference evaluator's numbers: it ran queries in batches of 128 and its
interpolation (a running maximum from the right) covered only the first ``B - 1`` ranks of a batch of B
queries, using precision within those first B ranks; elsewhere it kept the raw precision. That makes
its values depend on the batch size and sit slightly below the standard mAP; its P@k is the
interpolated precision at rank k under the same limit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import FlowKDError

__all__ = ["evaluate", "LEVELS"]

LEVELS = torch.tensor([i / 10 for i in range(11)], dtype=torch.float64)


def _rev_cummax(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(torch.cummax(torch.flip(x, [1]), 1).values, [1])


def _level_index(hits: torch.Tensor, relevant: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """For each query and recall level, the first rank whose recall is nearest the level (B, L).

    Recall is hits / R in float64 and "nearest" is |recall - level| with the earlier rank winning a
    tie, exactly as an argmin over all ranks would pick it.
    """
    rec = hits.double() / relevant[:, None].double()
    target = levels[None, :].expand(rec.shape[0], -1).contiguous()
    n = rec.shape[1]
    up = torch.searchsorted(rec, target, side="left").clamp_max(n - 1)
    dn = (up - 1).clamp_min(0)
    r_up, r_dn = rec.gather(1, up), rec.gather(1, dn)
    take_dn = (up > 0) & ((target - r_dn).abs() <= (r_up - target).abs())
    first_dn = torch.searchsorted(rec, r_dn, side="left")
    return torch.where(take_dn, first_dn, up)


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
        budget = 2**26 if device.type == "cuda" else 2**22
        batch_size = max(1, min(q.shape[0], budget // n))
    levels = LEVELS.to(device)
    ranks = torch.arange(1, n + 1, device=device, dtype=torch.float64)
    # per-query values, reduced once at the end so the result does not depend on the batch size
    curves, pks, leg_curves, leg_pks = [], [], [], []
    kidx = torch.tensor([x - 1 for x in ks], device=device)
    n_valid = 0
    for start in range(0, q.shape[0], batch_size):
        qb, lb = q[start:start + batch_size], ql[start:start + batch_size]
        if metric == "cosine":
            dist = -(qb @ db.T)
        else:
            dist = db_sq[None, :] - 2.0 * (qb @ db.T)
        order = torch.sort(dist, dim=1, stable=True).indices
        del dist
        rel = dl[order] == lb[:, None]
        del order
        hits = rel.cumsum(1, dtype=torch.int32)
        del rel
        relevant = counts[lb]
        keep = relevant > 0
        if not bool(keep.all()):
            hits, relevant, lb = hits[keep], relevant[keep], lb[keep]
            qpos = torch.arange(start, start + len(keep), device=device)[keep]
        else:
            qpos = torch.arange(start, start + len(keep), device=device)
        if hits.shape[0] == 0:
            continue
        prec = hits.double() / ranks
        interp = _rev_cummax(prec)
        idx = _level_index(hits, relevant, levels)
        at_levels = interp.gather(1, idx)
        curves.append(at_levels)
        pks.append(prec[:, kidx])
        n_valid += hits.shape[0]
        if legacy:
            # reference batches of ``legacy_batch`` queries; a batch of B interpolates only ranks < B - 1,
            # with the running maximum taken within the first B ranks
            bsize = torch.clamp(q.shape[0] - (qpos // legacy_batch) * legacy_batch, max=legacy_batch)
            width = min(legacy_batch, n)
            head = prec[:, :width].clone()
            col = torch.arange(width, device=device)
            head[col[None, :] >= bsize[:, None]] = float("-inf")
            head = _rev_cummax(head)
            leg = prec.clone()
            mask = col[None, :] < (bsize[:, None] - 1)
            leg[:, :width] = torch.where(mask, head, prec[:, :width])
            leg_curves.append(leg.gather(1, idx))
            leg_pks.append(leg[:, kidx])
    if n_valid == 0:
        raise FlowKDError("no query has a relevant item in the database (do the label sets overlap?)")
    curve = torch.cat(curves)
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
