"""Retrieval evaluation: flowkd vs a brute-force evaluator in the style of the reference code, same run.

The baseline follows the reference evaluator: queries in batches of 128, a full distance matrix per batch
(scikit-learn's pairwise_distances), a NumPy argsort of every row, precision/recall arrays, the interpolation,
and the 11 recall levels. Both must give the same mAP (standard and legacy).

    python benchmarks/bench_retrieval.py                          # 10k x 50k, 128-d features (synthetic)
    python benchmarks/bench_retrieval.py --features run/feats.pt  # real features {"q","ql","db","dl"}
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import machine, timed, write

from flowkd.retrieval import evaluate


def reference_style(q, ql, db, dl, metric="cosine", batch=128):
    from sklearn.metrics import pairwise_distances

    levels = np.arange(0, 1.1, 0.1)
    aps, leg_aps = [], []
    for s in range(0, len(q), batch):
        d = pairwise_distances(q[s:s + batch], db, metric=metric)
        order = np.argsort(d, axis=1, kind="stable")
        rel = (dl[order] == ql[s:s + batch, None])
        hits = np.cumsum(rel, axis=1)
        prec = hits / np.arange(1, db.shape[0] + 1)
        rec = hits / hits[:, -1:]
        legacy = prec.copy()
        b = prec.shape[0]  # the reference's interpolation loop ran over the batch dimension's length
        for j in range(b - 2, -1, -1):
            legacy[:, j] = np.maximum(legacy[:, j], legacy[:, j + 1])
        interp = np.flip(np.maximum.accumulate(np.flip(prec, 1), axis=1), 1)
        for i in range(prec.shape[0]):
            idx = [int(np.argmin(np.abs(rec[i] - lv))) for lv in levels]
            aps.append(interp[i, idx].mean())
            leg_aps.append(legacy[i, idx].mean())
    return 100 * float(np.mean(aps)), 100 * float(np.mean(leg_aps))


def synthetic(nq, nd, dim, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    ql, dl = torch.arange(nq) % classes, torch.arange(nd) % classes
    q = torch.relu(centers[ql] + 1.5 * torch.randn(nq, dim, generator=g))
    db = torch.relu(centers[dl] + 1.5 * torch.randn(nd, dim, generator=g))
    return q, ql, db, dl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--database", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--features", default="")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.features:
        f = torch.load(args.features, weights_only=True)
        q, ql, db, dl = f["q"], f["ql"], f["db"], f["dl"]
    else:
        q, ql, db, dl = synthetic(args.queries, args.database, args.dim, 10)
    rows, doc = [], {"machine": machine(dev), "queries": len(q), "database": len(db), "dim": q.shape[1], "runs": {}}
    for metric in ("cosine", "euclidean"):
        qd, dbd = q.to(dev), db.to(dev)
        t_f, r = timed(lambda: evaluate(qd, ql, dbd, dl, metric=metric, k=(100,), legacy=True), dev,
                       repeat=3 if dev.type == "cuda" else 1)  # on a GPU: best of 3 (the first loads kernels)
        entry = {"flowkd_s": round(t_f, 3), "map": r["map"], "legacy_map": r["legacy"]["map"]}
        if dev.type == "cuda":  # the same evaluator on this machine's CPU: the device speed-up, and the same mAP
            t_c, rc = timed(lambda: evaluate(q, ql, db, dl, metric=metric, k=(100,), legacy=True), torch.device("cpu"))
            entry |= {"flowkd_cpu_s": round(t_c, 3), "cpu_threads": torch.get_num_threads(),
                      "same_map_as_cpu": abs(rc["map"] - r["map"]) < 1e-4 and abs(rc["legacy"]["map"] - r["legacy"]["map"]) < 1e-4}
        if not args.skip_baseline:
            t_b, (m, lm) = timed(lambda: reference_style(q.numpy(), ql.numpy(), db.numpy(), dl.numpy(), metric), torch.device("cpu"))
            entry |= {"baseline_s": round(t_b, 3), "baseline_map": m, "baseline_legacy_map": lm,
                      "speedup": round(t_b / t_f, 2), "same_map": abs(m - r["map"]) < 1e-4 and abs(lm - r["legacy"]["map"]) < 1e-4}
        doc["runs"][metric] = entry
        rows.append(f"| {metric} | {entry.get('baseline_s', '—')} | {entry['flowkd_s']} | {entry.get('speedup', '—')} | "
                    f"{entry['map']:.4f} | {entry.get('baseline_map', float('nan')):.4f} | {entry['legacy_map']:.4f} | {entry.get('same_map', '—')} |")
    m = doc["machine"]
    table = "\n".join([f"# Retrieval evaluation, {len(q)} queries x {len(db)} database, {q.shape[1]}-d", "",
                       f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {m['cpu_threads']} CPU threads", "",
                       "| metric | reference-style s | flowkd s | speed-up | flowkd mAP | reference mAP | flowkd legacy mAP | same to 1e-4 |",
                       "|---|---:|---:|---:|---:|---:|---:|---|", *rows]) + "\n"
    if dev.type == "cuda":
        table += "\n" + "\n".join(f"{k}: flowkd on this machine's CPU ({e['cpu_threads']} threads) {e['flowkd_cpu_s']} s; "
                                   f"same mAP as on the GPU: {e['same_map_as_cpu']}" for k, e in doc["runs"].items()) + "\n"
    write("retrieval" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
