"""Collect CIFAR-10 run directories into results/cifar10.md|json, beside the paper's table (docs/method.md §5).

    python benchmarks/cifar10_table.py runs/cifar10 [runs/cifar10_paper ...] --note "..."

Each run's models are listed with the run's mode; paper numbers are matched by model role. Values are the
last epoch's (flowkd never picks a best epoch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import ROOT
from flowkd.io import atomic_write_json, atomic_write_text

# docs/method.md §5: cos mAP, euc mAP, P@100 (cosine, the reference evaluator's interpolated value)
PAPER = {
    "teacher": (90.47, 87.18, 92.26),
    "aux": (66.78, 62.12, 75.90),
    "student": (53.06, 49.20, 64.24),
    "baseline": (39.00, 35.30, 58.77),
}


def rows_of(run: Path) -> tuple[list[dict], dict]:
    res = json.loads((run / "results.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    stage_of = {s["model"]: s["name"] for s in cfg["stages"]}
    # the paper's numbers describe the ResNet-18-driven recipe only (it reports no HOG-driven run)
    teacher_arch = cfg["models"].get("teacher", {}).get("arch") or "preact_resnet18"
    paper = PAPER if teacher_arch == "preact_resnet18" else {}
    rows = []
    for name, m in res["models"].items():
        cos, euc = m["cosine"], m["euclidean"]
        stage = stage_of.get(name)
        rows.append({
            "run": run.name, "mode": cfg.get("mode", "default"), "model": name, "arch": f"{m['arch']}x{m['width']:g}",
            "cos_map": cos["map"], "euc_map": euc["map"], "p100": cos["precision_at"].get("100"),
            "legacy_cos_map": cos["legacy"]["map"], "legacy_euc_map": euc["legacy"]["map"],
            "legacy_p100": cos["legacy"]["precision_at"].get("100"), "head_acc": m.get("head_acc"),
            "ncm_acc": m["ncm_acc"], "stage": stage,
            "stage_wall_s": res["stages"].get(stage, {}).get("wall_s"), "epochs": res["stages"].get(stage, {}).get("epochs"),
            "peak_gpu_mib": res["stages"].get(stage, {}).get("peak_gpu_mib"),
            "paper": paper.get(name),
        })
    return rows, {"run": run.name, "machine": res["machine"], "data": res["data"], "total_wall_s": res["total_wall_s"],
                  "eval_wall_s": res["eval_wall_s"], "stages": res["stages"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--note", default="")
    ap.add_argument("--name", default="cifar10")
    args = ap.parse_args()
    rows, runs = [], []
    for r in args.runs:
        rr, info = rows_of(Path(r))
        rows += rr
        runs.append(info)

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    lines = ["# CIFAR-10 retrieval (test queries vs train database), last epoch", "", args.note, "",
             "| run | mode | model | arch | cos mAP | euc mAP | P@100 | legacy cos mAP | legacy P@100 | head acc | "
             "paper cos / euc / P@100 | stage | epochs | stage wall s | stage peak GPU MiB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        paper = " / ".join(f"{v:.2f}" for v in r["paper"]) if r["paper"] else "—"
        lines.append(f"| {r['run']} | {r['mode']} | {r['model']} | {r['arch']} | {f(r['cos_map'])} | {f(r['euc_map'])} | "
                     f"{f(r['p100'])} | {f(r['legacy_cos_map'])} | {f(r['legacy_p100'])} | {f(r['head_acc'])} | {paper} | "
                     f"{r['stage'] or 'loaded'} | {r['epochs'] or '—'} | {f(r['stage_wall_s'])} | "
                     f"{'—' if r['peak_gpu_mib'] is None else round(r['peak_gpu_mib'])} |")
    lines += ["", "| run | machine | data (train / test) | total wall s | evaluation wall s |", "|---|---|---|---:|---:|"]
    for i in runs:
        m = i["machine"]
        lines.append(f"| {i['run']} | {m.get('gpu') or m['device']}, {m['cpu_threads']} threads, torch {m['torch']} | "
                     f"{i['data']['train']} / {i['data']['test']} | {i['total_wall_s']:.0f} | {i['eval_wall_s']:.0f} |")
    doc = {"note": args.note, "rows": rows, "runs": runs}
    atomic_write_json(ROOT / "results" / f"{args.name}.json", doc)
    atomic_write_text(ROOT / "results" / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
