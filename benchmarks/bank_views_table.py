"""results/bank_views.md|json: how many views a bank of teacher outputs needs (issue 26, item 3).

Reads ``results/compare_bank_views_cifar10.json`` (``flowkd compare configs/bank_views_cifar10.toml --seeds 0 1 2
--results-dir results``): the proposed CIFAR-10 student taught by the auxiliary teacher run live, from banks of
K = 1, 4 and 16 views, and from its taps precomputed once on the un-augmented images. Each variant's difference
to the live teacher is taken seed by seed (the same seed: the same initialisation and batch order), so the
spread of the difference, not of the two rows, says whether a bank changes the student. ``--bank DIR`` records
what the bank cost (its ``log.jsonl``, written as each view is computed); without it, the cost recorded by an
earlier run of this script is kept.

    python benchmarks/bank_views_table.py [--bank ~/.cache/flowkd/banks/<fingerprint>]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import ROOT

from flowkd.bank import bank_costs
from flowkd.compare import provenance_line
from flowkd.io import atomic_write_json, atomic_write_text

SOURCE = "compare_bank_views_cifar10.json"
ROWS = [("live", "live: the auxiliary runs on every batch"), ("k1", "bank, K = 1 view"), ("k4", "bank, K = 4 views"),
        ("k16", "bank, K = 16 views"), ("features", "precomputed on un-augmented images (student not augmented)")]
COLS = ["legacy cos mAP", "legacy euc mAP", "legacy cos P@100", "cos mAP"]


def _pm(values: list[float], sign: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:{sign}.2f}"
    return f"{statistics.fmean(values):{sign}.2f} ± {statistics.stdev(values):.2f}"


def _bank_cost(bank: Path | None, previous: dict) -> dict:
    if bank is None:
        return previous.get("bank", {})
    lines = bank_costs(bank)
    views = sorted({c["view"] for c in lines})
    files = list(bank.glob("view-*/*.npy"))
    return {"folder": bank.name, "views": len(views), "seconds": round(sum(c["seconds"] for c in lines), 1),
            "seconds_per_view": round(sum(c["seconds"] for c in lines) / max(len(views), 1), 1),
            "images_per_s": round(sum(c["images"] for c in lines) / max(sum(c["seconds"] for c in lines), 1e-9)),
            "setting": lines[0]["setting"] if lines else "", "load_avg": [c["load_avg"] for c in lines][:1],
            "bytes": sum(p.stat().st_size for p in files),
            "bytes_per_view": round(sum(p.stat().st_size for p in files) / max(len(views), 1))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bank", type=Path, default=None, help="the auxiliary's bank folder (records what it cost)")
    args = ap.parse_args()
    res = ROOT / "results"
    doc = json.loads((res / SOURCE).read_text())
    out_json = res / "bank_views.json"
    previous = json.loads(out_json.read_text()) if out_json.exists() else {}
    models, seeds = doc["models"], doc["seeds"]
    live = models["live"]["legacy cos mAP"]["values"]
    rows, L = [], []
    L += ["# How many views does a bank need? The proposed CIFAR-10 student, live teacher vs banks of K views", "",
          "The very tiny student learns the auxiliary teacher's information flow (four pairs, critical period, no "
          "labels, 50 epochs, batch 128, augmentation, flowkd's default mode) from one auxiliary loaded from a file; "
          "only where the teacher's side comes from changes. A bank of K views serves image i in epoch e as its view "
          "e mod K (the student sees the pixels the teacher saw); the precomputed features are the teacher on the "
          "un-augmented images, so that student trains without augmentation. `legacy` = the reference evaluator's "
          "values. Δ = the variant minus the live teacher, seed by seed (same seed: same initialisation and batch "
          f"order), mean ± sample std over seeds {', '.join(map(str, seeds))}.", "",
          "| teacher's side | legacy cos mAP | legacy euc mAP | legacy P@100 | cos mAP | Δ legacy cos mAP vs live | per seed Δ |",
          "|---|---:|---:|---:|---:|---:|---|"]
    for name, what in ROWS:
        if name not in models:
            continue
        m = models[name]
        vals = m["legacy cos mAP"]["values"]
        deltas = [v - w for v, w in zip(vals, live)]
        rows.append({"model": name, "what": what, **{c: m[c] for c in COLS if c in m},
                     "delta_vs_live": {"values": deltas, "mean": statistics.fmean(deltas),
                                       "std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0}})
        d = "—" if name == "live" else _pm(deltas, "+")
        per = "—" if name == "live" else " / ".join(f"{x:+.2f}" for x in deltas)
        L.append(f"| {what} | {_pm(vals)} | {_pm(m['legacy euc mAP']['values'])} | "
                 f"{_pm(m['legacy cos P@100']['values'])} | {_pm(m['cos mAP']['values'])} | {d} | {per} |")
    by = {r["model"]: r for r in rows}
    L += ["", "## Reading", ""]
    for name in ("k1", "k4", "k16", "features"):
        if name not in by:
            continue
        d = by[name]["delta_vs_live"]
        n = len(d["values"])
        below = sum(x < 0 for x in d["values"])
        size = ("one seed: no spread to compare with" if n < 2 else
                f"the difference's own spread over the seeds is ±{d['std']:.2f}, "
                + ("smaller than the mean difference" if abs(d["mean"]) > d["std"]
                   else "as large as the mean difference or larger: no change measured"))
        L.append(f"- {by[name]['what']}: Δ {d['mean']:+.2f} legacy cos mAP, below live on {below} of {n} seeds; "
                 f"{size}.")
    cost = _bank_cost(args.bank, previous)
    if cost:
        L += ["", f"The auxiliary's bank ({cost['views']} views of 50,000 images, {cost['setting']}) took "
                  f"{cost['seconds']:.0f} s to compute ({cost['seconds_per_view']:.1f} s a view, "
                  f"{cost['images_per_s']:,} images/s, load average {cost['load_avg'][0] if cost['load_avg'] else '?'} "
                  f"at its first view) and {cost['bytes'] / 2**20:,.0f} MiB on disk "
                  f"({cost['bytes_per_view'] / 2**20:.0f} MiB a view: the four float16 taps the flow reads)."]
    notes = res / "bank_views_notes.md"  # how the runs were made, written by whoever ran them
    if notes.exists():
        L += ["", notes.read_text().strip()]
    L += ["", f"Made by `flowkd compare {doc['config']} --seeds {' '.join(map(str, seeds))}` on "
              f"{doc['machine'].get('cpu_threads')} CPU threads ({doc['machine'].get('torch')}), wall time "
              f"{doc['wall_s']:.0f} s; {provenance_line(doc)}. Regenerate: `python benchmarks/bank_views_table.py`."]
    atomic_write_text(res / "bank_views.md", "\n".join(L) + "\n")
    atomic_write_json(out_json, {"source": SOURCE, "seeds": seeds, "rows": rows, "bank": cost,
                                 "config": doc["config"], "overrides": doc.get("overrides", []),
                                 "mode": doc.get("mode"), "machine": doc["machine"], "wall_s": doc["wall_s"]})
    print("\n".join(L))


if __name__ == "__main__":
    main()
