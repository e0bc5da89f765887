"""results/compare_cifar10.md|json: the paper's CIFAR-10 comparison as far as it is measured.

Reads ``results/compare_cifar10_aux.json`` (the auxiliary-driven rows, run on CPU with
``flowkd compare configs/compare_cifar10_aux.toml``) and, when present, ``results/compare_cifar10_gpu.json``
(every row of ``configs/compare_cifar10.toml``, run on a GPU), and writes one table in the order of the paper's
comparison, naming the rows that no run has measured yet. Legacy values (the reference evaluator's) stand
beside the paper's figures; standard values beside them.

    python benchmarks/compare_cifar10_table.py
"""

from __future__ import annotations

import json

from _common import ROOT

from flowkd.compare import provenance_line, same_everywhere
from flowkd.io import atomic_write_json, atomic_write_text

ROWS = [  # (model name in the configs, what it is), the paper's comparison in order
    ("teacher", "teacher: PreAct ResNet-18 (labels)"),
    ("aux", "auxiliary teacher: tiny CNN (labels, then PKT from the teacher)"),
    ("labels", "very tiny, labels only"),
    ("kd", "Hinton KD (+CE)"),
    ("fitnet", "FitNets (hint, then KD)"),
    ("at", "attention transfer (+CE)"),
    ("sp", "similarity preserving (+CE)"),
    ("pkt_last", "PKT, last layer, from the ResNet-18"),
    ("flow_constant", "ablation a: aux, all layers, constant weights"),
    ("flow_direct", "ablation b: no aux, critical period from the ResNet-18"),
    ("aux_last", "ablation c: aux, last layer only"),
    ("flow", "proposed: aux + all layers + critical period"),
    ("flow_adaptive", "proposed, adaptive critical period (flowkd's)"),
]
COLS = [("cos mAP", "legacy cos mAP"), ("euc mAP", "legacy euc mAP"), ("cos P@100", "legacy cos P@100")]


def _one_model(row: dict) -> bool:
    """Every figure the same on every seed: one model evaluated once per seed (see flowkd.compare)."""
    cells = [v for v in row.values() if isinstance(v, dict) and "values" in v]
    return bool(cells) and all(same_everywhere(v) for v in cells)


def _cell(row: dict, col: str) -> str:
    v = row.get(col)
    if not v:
        return "—"
    if len(v.get("values", [])) == 1:
        return f"{v['mean']:.2f}"
    return f"{v['mean']:.2f} ¹" if _one_model(row) else f"{v['mean']:.2f} ± {v['std']:.2f}"


def _teacher_eval(res) -> tuple[dict, dict] | None:
    """The trained ResNet-18 teacher's own evaluation (``flowkd eval``, results/cifar10_teacher_eval.json)."""
    path = res / "cifar10_teacher_eval.json"
    if not path.exists():
        return None
    e = json.loads(path.read_text())
    one = lambda v: {"mean": v, "std": 0.0, "values": [v]}  # noqa: E731
    from flowkd.config import load_config

    paper = load_config(ROOT / "configs" / "compare_cifar10.toml").models["teacher"].paper  # the paper's figures
    row = {"label": "teacher", "paper": dict(paper),
           "cos mAP": one(e["cosine"]["map"]), "euc mAP": one(e["euclidean"]["map"]),
           "cos P@100": one(e["cosine"]["precision_at"]["100"]), "NCM acc": one(e["ncm_acc"]),
           "head acc": one(e["head_acc"])}
    if "legacy" in e["cosine"]:
        row["legacy cos mAP"] = one(e["cosine"]["legacy"]["map"])
        row["legacy euc mAP"] = one(e["euclidean"]["legacy"]["map"])
        row["legacy cos P@100"] = one(e["cosine"]["legacy"]["precision_at"]["100"])
    doc = {"config": "flowkd eval (results/cifar10_teacher_eval.json)", "seeds": ["trained teacher"],
           "machine": {"device": e.get("machine", "CPU")}}
    return row, doc


def main() -> None:
    res = ROOT / "results"
    sources = [p for p in (res / "compare_cifar10_gpu.json", res / "compare_cifar10_aux.json") if p.exists()]
    docs = [json.loads(p.read_text()) for p in sources]
    found: dict[str, tuple[dict, dict]] = {}
    for doc in docs:
        for name, row in doc["models"].items():
            found.setdefault(name, (row, doc))
    if "teacher" not in found and _teacher_eval(res) is not None:
        found["teacher"] = _teacher_eval(res)
    lines = ["# The paper's CIFAR-10 comparison: PreAct ResNet-18 → very tiny CNN (the information-flow and PKT "
             "students never see a label; the KD, FitNets, AT and SP baselines add cross-entropy)", "",
             "Protocol: batch 128, 50 epochs per student, augmentation, last epoch, test queries vs train database, "
             "fc1 features. `legacy` = the reference evaluator's values, the only ones to set beside the paper's "
             "figures (which are the reference evaluator's); standard values beside them. Mean ± sample std over "
             "the seeds named per source below.", "",
             "| method | legacy cos mAP | legacy euc mAP | legacy P@100 | paper cos / euc / P@100 | cos mAP | euc mAP | "
             "P@100 | NCM acc | head acc | source |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    out_rows = []
    for name, what in ROWS:
        if name not in found:
            lines.append(f"| {what} | unmeasured | | | | | | | | | needs the ResNet-18 forward every batch: a GPU run "
                         f"of configs/compare_cifar10.toml |")
            out_rows.append({"model": name, "what": what, "measured": False})
            continue
        row, doc = found[name]
        p = row.get("paper") or {}
        paper = " / ".join(f"{p[k]:.2f}" if k in p else "—" for k in ("cos_map", "euc_map", "p100")) if p else "—"
        src = f"{doc['config']}, seeds {doc['seeds']}, {doc['machine'].get('gpu') or doc['machine'].get('device', 'CPU')}"
        lines.append(f"| {what} | {_cell(row, 'legacy cos mAP')} | {_cell(row, 'legacy euc mAP')} | "
                     f"{_cell(row, 'legacy cos P@100')} | {paper} | {_cell(row, 'cos mAP')} | {_cell(row, 'euc mAP')} | "
                     f"{_cell(row, 'cos P@100')} | {_cell(row, 'NCM acc')} | {_cell(row, 'head acc')} | {src} |")
        out_rows.append({"model": name, "what": what, "measured": True, "source": str(doc["config"]),
                         "seeds": doc["seeds"], **{k: v for k, v in row.items() if isinstance(v, dict)}})
    if any(_one_model(row) for row, _ in found.values()):
        lines += ["", "¹ the same values on every seed (to 0.001): one model (no stage of the run trains it; here "
                      "loaded from a file) evaluated once per seed, so it has no spread over seeds."]
    for doc in docs:
        m = doc["machine"]
        lines += ["", f"- {doc['config']}: seeds {doc['seeds']}, {m.get('gpu') or m.get('device')}, torch "
                      f"{m.get('torch')}, {m.get('cpu_threads')} CPU threads, wall time {doc['wall_s']:.0f} s; "
                      + provenance_line(doc)]
    notes = res / "compare_cifar10_notes.md"  # the reading of the table, written by whoever ran it
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    atomic_write_text(res / "compare_cifar10.md", "\n".join(lines) + "\n")
    atomic_write_json(res / "compare_cifar10.json", {"rows": out_rows, "sources": [str(p.name) for p in sources]})
    print("\n".join(lines))
    print("wrote results/compare_cifar10.md|json")


if __name__ == "__main__":
    main()
