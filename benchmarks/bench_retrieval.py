"""Retrieval evaluation: flowkd now vs today's flowkd (the baseline commit's retrieval.py, loaded from git) side by
side in rotated rounds, results checked identical, and optionally vs a brute-force evaluator in the style of
the reference code. The arithmetic limit: the query x database distance products alone, timed in the same
rounds (the ranking that follows is a sort of every row, not arithmetic).

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
import torch.nn.functional as F
import time

from _common import BASELINE, baseline, machine, paired_ratio, side_by_side, timed, write

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
    ap.add_argument("--skip-baseline", action="store_true", help="skip the reference-style evaluator (about 50 s a metric)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if args.features:
        f = torch.load(args.features, weights_only=True)
        q, ql, db, dl = f["q"], f["ql"], f["db"], f["dl"]
    else:
        q, ql, db, dl = synthetic(args.queries, args.database, args.dim, 10)
    ap_rounds = args.rounds
    wall = time.perf_counter()
    today = baseline("retrieval.py", "retrieval").evaluate
    rows, doc = [], {"machine": machine(dev), "queries": len(q), "database": len(db), "dim": q.shape[1], "runs": {},
                     "baseline_commit": BASELINE, "rounds": ap_rounds, "threads": torch.get_num_threads()}
    for metric in ("cosine", "euclidean"):
        qd, dbd = q.to(dev), db.to(dev)
        out = {}

        def now():
            out["now"] = evaluate(qd, ql, dbd, dl, metric=metric, k=(100,), legacy=True)

        def before():
            out["today"] = today(qd, ql, dbd, dl, metric=metric, k=(100,), legacy=True)

        def products():
            x, y = (F.normalize(qd, dim=1), F.normalize(dbd, dim=1)) if metric == "cosine" else (qd, dbd)
            step = max(1, 2**23 // len(y))
            for s0 in range(0, len(x), step):
                x[s0:s0 + step] @ y.T

        times = side_by_side({"today": before, "now": now, "products": products}, ap_rounds)
        r = out["now"]
        entry = {"flowkd_s": round(times["now"]["median_s"], 3), "today_s": round(times["today"]["median_s"], 3),
                 "products_s": round(times["products"]["median_s"], 3),
                 "speedup_vs_today": round(paired_ratio(times["today"]["rounds_s"], times["now"]["rounds_s"]), 3),
                 "identical_to_today": out["now"] == out["today"], "map": r["map"], "legacy_map": r["legacy"]["map"],
                 "rounds_s": {k: v["rounds_s"] for k, v in times.items()}}
        if not args.skip_baseline:
            t_b, (m, lm) = timed(lambda: reference_style(q.numpy(), ql.numpy(), db.numpy(), dl.numpy(), metric), torch.device("cpu"))
            entry |= {"baseline_s": round(t_b, 3), "baseline_map": m, "baseline_legacy_map": lm,
                      "speedup": round(t_b / entry["flowkd_s"], 2),
                      "same_map": abs(m - r["map"]) < 1e-4 and abs(lm - r["legacy"]["map"]) < 1e-4}
        doc["runs"][metric] = entry
        rows.append(f"| {metric} | {entry['today_s']} | {entry['flowkd_s']} | {entry['speedup_vs_today']:.2f}x | "
                    f"{entry['identical_to_today']} | {entry['products_s']} | {entry['flowkd_s'] / entry['products_s']:.1f}x | "
                    f"{entry['map']:.4f} | {entry['legacy_map']:.4f} | {entry.get('baseline_s', '—')} | {entry.get('same_map', '—')} |")
    m = doc["machine"]
    doc["wall_s"] = round(time.perf_counter() - wall, 1)
    doc["command"] = "python benchmarks/bench_retrieval.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    macs = len(q) * len(db) * q.shape[1]
    table = "\n".join([f"# Retrieval evaluation, {len(q)} queries x {len(db)} database, {q.shape[1]}-d", "",
                       f"machine: {m.get('gpu') or m['device']}, torch {m['torch']}, {doc['threads']} CPU threads, load average "
                       f"{m['loadavg']} (shared cores); medians of {ap_rounds} rounds, order rotated; speed-up: median of "
                       f"per-round ratios against today's code (commit {BASELINE}); wall {doc['wall_s']} s", "",
                       "| metric | today s | now s | speed-up | identical results | distance products alone s | now / products | mAP | legacy mAP | reference-style s | reference same to 1e-4 |",
                       "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|", *rows, "",
                       f"The arithmetic: {macs / 1e9:.0f} G multiply-adds of distance products (timed alone above: the floor "
                       "of any exact evaluator); the rest is the ranking, a stable sort of every query's "
                       f"{len(db)} distances, and the scores read off the ranks of the relevant items."]) + "\n"
    write("retrieval" + ("" if dev.type == "cpu" else "_" + dev.type), doc, table)


if __name__ == "__main__":
    main()
