"""Collect CIFAR-10 run directories into results/cifar10.md|json, beside the paper's table (docs/method.md §5).

    python benchmarks/cifar10_table.py runs/cifar10 [runs/cifar10_paper ...] --note "..."
    python benchmarks/cifar10_table.py --from-json --name cifar10     # re-render from the committed JSON

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


def f(x):
    return "—" if x is None else f"{x:.2f}"


def render(doc: dict) -> str:
    """The table of ``doc`` (``{"note", "rows", "runs"[, "teacher_eval"]}``): the legacy values (the reference
    evaluator's) beside the paper's figures, which are legacy values too; flowkd's standard values after them."""
    gpu = any(r.get("peak_gpu_mib") is not None for r in doc["rows"])
    lines = ["# CIFAR-10 retrieval (test queries vs train database), last epoch", "", doc["note"], "",
             "Columns: `legacy` = the reference evaluator's values, the ones to read beside the paper's (which are "
             "the reference evaluator's); then flowkd's standard values. mode = the students' training mode "
             "(`default` or `paper`).", "",
             "| run | mode | model | arch | legacy cos mAP | legacy euc mAP | legacy P@100 | paper cos / euc / P@100 | "
             "cos mAP | euc mAP | P@100 | head acc | stage | epochs | stage wall s |" + (" stage peak GPU MiB |" if gpu else ""),
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|" + ("---:|" if gpu else "")]
    for r in doc["rows"]:
        paper = " / ".join(f"{v:.2f}" for v in r["paper"]) if r["paper"] else "—"
        lines.append(f"| {r['run']} | {r['mode']} | {r['model']} | {r['arch']} | {f(r['legacy_cos_map'])} | "
                     f"{f(r['legacy_euc_map'])} | {f(r['legacy_p100'])} | {paper} | {f(r['cos_map'])} | {f(r['euc_map'])} | "
                     f"{f(r['p100'])} | {f(r['head_acc'])} | {r['stage'] or 'loaded'} | {r['epochs'] or '—'} | "
                     f"{f(r['stage_wall_s'])} |"
                     + (f" {'—' if r.get('peak_gpu_mib') is None else round(r['peak_gpu_mib'])} |" if gpu else ""))
    lines += ["", "| run | machine | data (train / test) | total wall s | evaluation wall s |", "|---|---|---|---:|---:|"]
    for i in doc["runs"]:
        m = i["machine"]
        lines.append(f"| {i['run']} | {m.get('gpu') or m['device']}, {m['cpu_threads']} threads, torch {m['torch']} | "
                     f"{i['data']['train']} / {i['data']['test']} | {i['total_wall_s']:.0f} | {i['eval_wall_s']:.0f} |")
    if doc.get("teacher_eval"):
        e = json.loads((ROOT / doc["teacher_eval"]).read_text())
        c, u = e["cosine"], e["euclidean"]
        lines += ["", f"The teacher's own evaluation (`{doc['teacher_eval']}`, `flowkd eval`, "
                      f"{c['n_queries']:,} queries / {c['n_database']:,} images, {e.get('machine', 'CPU')}, "
                      f"{e['wall_s']:.0f} s): legacy cos mAP {c['legacy']['map']:.2f}, legacy Euclidean "
                      f"{u['legacy']['map']:.2f}, legacy P@100 {c['legacy']['precision_at']['100']:.2f}; standard "
                      f"{c['map']:.2f} / {u['map']:.2f} / {c['precision_at']['100']:.2f}; head accuracy "
                      f"{e['head_acc']:.2f} %."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", help="run directories (or none, with --from-json)")
    ap.add_argument("--note", default="")
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("--teacher-eval", default="", help="a `flowkd eval --json` file of the teacher, under results/")
    ap.add_argument("--from-json", action="store_true", help="re-render results/NAME.md from results/NAME.json")
    args = ap.parse_args()
    path = ROOT / "results" / f"{args.name}.json"
    if args.from_json:
        doc = json.loads(path.read_text())
        if args.teacher_eval:
            doc["teacher_eval"] = args.teacher_eval
    else:
        rows, runs = [], []
        for r in args.runs:
            rr, info = rows_of(Path(r))
            rows += rr
            runs.append(info)
        doc = {"note": args.note, "rows": rows, "runs": runs}
        if args.teacher_eval:
            doc["teacher_eval"] = args.teacher_eval
    table = render(doc)
    atomic_write_json(path, doc)
    atomic_write_text(ROOT / "results" / f"{args.name}.md", table)
    print(table)


if __name__ == "__main__":
    main()
