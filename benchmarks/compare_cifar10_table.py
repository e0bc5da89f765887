"""results/compare_cifar10.md|json: the paper's CIFAR-10 comparison, every row, and which of its claims hold.

Reads ``results/compare_cifar10_bank.json`` — every row of ``configs/compare_cifar10.toml`` run on a CPU, the
ResNet-18 served from its bank of views (``flowkd compare configs/compare_cifar10.toml ... --name cifar10_bank``)
— and, for a row that run lacks, ``results/compare_cifar10_gpu.json`` then ``results/compare_cifar10_aux.json``
(earlier runs; the row names its source). Legacy values (the reference evaluator's) stand beside the paper's
figures; standard values beside them. The claims below the table are computed here from the primary run's
per-seed values (never across runs: each run trains its own auxiliary teacher), so the reading is regenerated
with the numbers.

    python benchmarks/compare_cifar10_table.py
"""

from __future__ import annotations

import json
import statistics

from _common import ROOT

from flowkd.compare import provenance_line, same_everywhere
from flowkd.io import atomic_write_json, atomic_write_text

SOURCES = ["compare_cifar10_bank.json", "compare_cifar10_gpu.json", "compare_cifar10_aux.json"]  # preferred first
ROWS = [  # (model name in the configs, what it is), the paper's comparison in order
    ("teacher", "teacher: PreAct ResNet-18 (labels)"),
    ("aux", "auxiliary teacher: tiny CNN (labels, then PKT from the teacher)"),
    ("labels", "very tiny, labels only"),
    ("kd", "Hinton KD (+CE)"),
    ("fitnet", "FitNets (hint, then KD; +CE)"),
    ("at", "attention transfer (+CE)"),
    ("at_searched", "attention transfer, weight searched on validation (+CE)"),
    ("sp", "similarity preserving (+CE)"),
    ("pkt_last", "PKT, last layer, from the ResNet-18"),
    ("flow_constant", "ablation a: aux, all layers, constant weights"),
    ("flow_direct", "ablation b: no aux, critical period from the ResNet-18"),
    ("aux_last", "ablation c: aux, last layer only"),
    ("flow", "proposed: aux + all layers + critical period"),
    ("flow_default", "proposed, flowkd's default mode"),
    ("flow_adaptive", "proposed, adaptive critical period (flowkd's)"),
]
WHAT = dict(ROWS)
DIRECT = ["kd", "fitnet", "at", "sp", "pkt_last", "flow_direct"]  # taught straight by the ResNet-18
KEY = "legacy cos mAP"
# attention transfer at the weight searched on a CIFAR-10 validation split (benchmarks/beyond/at_weight.toml): the
# same config and seeds with only its AT stage trained (the row depends on no auxiliary, so it pairs seed by seed
# with the primary run's rows)
AT_RUN = "compare_cifar10_at_w1.json"


def _at_searched(primary: dict, at_doc: dict) -> dict | None:
    """The searched AT row, restricted to the primary run's seeds (paired by seed number)."""
    row = at_doc["models"].get("at")
    keep = [at_doc["seeds"].index(s) for s in primary["seeds"] if s in at_doc["seeds"]]
    if row is None or len(keep) != len(primary["seeds"]):
        return None
    out = {k: v for k, v in row.items() if not isinstance(v, dict) or "values" not in v}
    for k, v in row.items():
        if isinstance(v, dict) and "values" in v:
            vals = [v["values"][i] for i in keep]
            out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "values": vals}
    schedule = next(s["schedule"] for s in _stages(at_doc) if s["name"] == "at")
    out["label"] = f"attention transfer, weight {schedule['weight']:g} from the validation search (+CE)"
    return out


def _stages(doc: dict) -> list:
    from flowkd.config import load_config, to_dict

    return to_dict(load_config(ROOT / doc["config"], doc.get("overrides", [])))["stages"]


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


def _short(name: str) -> str:
    return WHAT[name].split(":")[0] if name.startswith(("flow_", "aux_")) else WHAT[name].split(" (")[0]


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


def _versus(models: dict, a: str, b: str) -> dict | None:
    """Row ``a`` against row ``b`` of one run, seed by seed (legacy cosine mAP)."""
    if a not in models or b not in models or KEY not in models[a] or KEY not in models[b]:
        return None
    va, vb = models[a][KEY]["values"], models[b][KEY]["values"]
    n = min(len(va), len(vb))
    diffs = [va[i] - vb[i] for i in range(n)]
    return {"a": a, "b": b, "a_mean": statistics.fmean(va[:n]), "b_mean": statistics.fmean(vb[:n]),
            "diff": statistics.fmean(diffs), "above": sum(d > 0 for d in diffs), "seeds": n}


def _say(v: dict) -> str:
    sign = "above" if v["diff"] > 0 else "below"
    return (f"{_short(v['a'])} {v['a_mean']:.2f} vs {_short(v['b'])} {v['b_mean']:.2f}: {v['diff']:+.2f}, "
            f"{sign} on {v['above'] if v['diff'] > 0 else v['seeds'] - v['above']} of {v['seeds']} seeds")


def claims(models: dict) -> list[dict]:
    """The paper's claims on this table, each a comparison of two rows of one run, with its verdict."""
    out = []

    def claim(text: str, pairs: list[tuple[str, str]]) -> None:
        vs = [v for v in (_versus(models, a, b) for a, b in pairs) if v]
        if not vs:
            return
        holds = all(v["diff"] > 0 and v["above"] == v["seeds"] for v in vs)
        mixed = not holds and any(v["diff"] > 0 for v in vs)
        one = all(v["seeds"] == 1 for v in vs)  # one seed: no spread to judge a margin by yet
        verdict = ("holds on every seed" if holds else "holds in part" if mixed else "does not hold")
        out.append({"claim": text, "verdict": verdict.replace("on every seed", "on the one seed so far") if one
                    else verdict, "comparisons": vs})

    claim("distillation without labels beats training on labels (proposed vs labels only)", [("flow", "labels")])
    direct = [("at_searched" if d == "at" and "at_searched" in models else d) for d in DIRECT]
    claim("heterogeneous: the same student taught through the auxiliary beats every method taught straight by the "
          "ResNet-18 (the paper's central claim; KD, FitNets, AT and SP also see labels)",
          [("flow", d) for d in direct])
    claim("the auxiliary teacher matters: the critical period through the auxiliary beats the critical period "
          "straight from the ResNet-18 (ablation b)", [("flow", "flow_direct")])
    claim("the critical period matters: decaying intermediate weights beat constant ones (ablation a)",
          [("flow", "flow_constant")])
    claim("the intermediate layers matter: all layers with the critical period beat the last layer alone "
          "(ablation c)", [("flow", "aux_last")])
    claim("flowkd's default mode above the reference's optimiser habits (paper mode), same recipe",
          [("flow_default", "flow")])
    return out


def _table(found: dict, lines: list, out_rows: list, missing: str) -> None:
    lines += ["| method | legacy cos mAP | legacy euc mAP | legacy P@100 | paper cos / euc / P@100 | cos mAP | euc mAP | "
              "P@100 | NCM acc | head acc | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, what in ROWS:
        if name not in found:
            if missing:
                lines.append(f"| {what} | {missing} | | | | | | | | | |")
                out_rows.append({"model": name, "what": what, "measured": False})
            continue
        row, doc = found[name]
        what = row.get("label") if row.get("label") not in (None, "", name) else what  # as the run labelled it
        p = row.get("paper") or {}
        paper = " / ".join(f"{p[k]:.2f}" if k in p else "—" for k in ("cos_map", "euc_map", "p100")) if p else "—"
        seeds = ", ".join(str(s) for s in doc["seeds"])
        lines.append(f"| {what} | {_cell(row, 'legacy cos mAP')} | {_cell(row, 'legacy euc mAP')} | "
                     f"{_cell(row, 'legacy cos P@100')} | {paper} | {_cell(row, 'cos mAP')} | {_cell(row, 'euc mAP')} | "
                     f"{_cell(row, 'cos P@100')} | {_cell(row, 'NCM acc')} | {_cell(row, 'head acc')} | {seeds} |")
        out_rows.append({"model": name, "what": what, "measured": True, "source": str(doc["config"]),
                         "seeds": doc["seeds"], **{k: v for k, v in row.items() if isinstance(v, dict)}})


def main() -> None:
    res = ROOT / "results"
    sources = [res / s for s in SOURCES if (res / s).exists()]
    docs = {p.name: json.loads(p.read_text()) for p in sources}
    teacher = _teacher_eval(res)
    lines = ["# The paper's CIFAR-10 comparison: PreAct ResNet-18 → very tiny CNN (the information-flow and PKT "
             "students never see a label; the KD, FitNets, AT and SP baselines add cross-entropy)", "",
             "Protocol: batch 128, 50 epochs per student, augmentation, last epoch, test queries vs train database, "
             "fc1 features. `legacy` = the reference evaluator's values, the only ones to set beside the paper's "
             "figures (which are the reference evaluator's); standard values beside them. Mean ± sample std over "
             "the seeds named per row. The teacher's row is its own evaluation (`flowkd eval`, "
             "results/cifar10_teacher_eval.json).", ""]
    tables, claimed = {}, {}
    order = [s for s in SOURCES if s in docs]
    at_path, at_doc = res / AT_RUN, None
    if order and order[0] == SOURCES[0] and at_path.exists():  # the searched AT row joins the primary run's rows
        at_doc = json.loads(at_path.read_text())
        row = _at_searched(docs[order[0]], at_doc)
        if row is None:
            at_doc = None
        else:
            primary = docs[order[0]]
            primary["models"]["at_searched"] = row
            if "at" in primary["models"]:  # the row beside it: the weight chosen on the digits search
                w = next(s["schedule"] for s in _stages(primary) if s["name"] == "at")["weight"]
                primary["models"]["at"]["label"] = f"attention transfer, weight {w:g} from the digits search (+CE)"
    for k, name in enumerate(order):
        doc = docs[name]
        found = {m: (row, doc) for m, row in doc["models"].items()}
        if "teacher" not in found and teacher is not None:
            found["teacher"] = teacher
        if k == 0:
            every = "Every row, one run" if name == SOURCES[0] else "The rows measured so far"
            lines += [f"## {every}: `{doc['config']}` (seeds {', '.join(map(str, doc['seeds']))})", ""]
            missing = "unmeasured"
        else:
            lines += ["", f"## An earlier run: `{doc['config']}` (seeds {', '.join(map(str, doc['seeds']))}; its "
                          "rows only)", ""]
            missing = ""
        rows: list = []
        _table(found, lines, rows, missing)
        tables[name] = rows
        claimed[name] = claims(doc["models"])
    if any(_one_model(row) for d in docs.values() for row in d["models"].values()):
        lines += ["", "¹ the same values on every seed (to 0.001): one model (no stage of the run trains it; here "
                      "loaded from a file) evaluated once per seed, so it has no spread over seeds."]
    lines += ["", "## How each run was made"]
    for name in order:
        doc, m = docs[name], docs[name]["machine"]
        lines += ["", f"- {doc['config']}: seeds {doc['seeds']}, {m.get('gpu') or m.get('device')}, torch "
                      f"{m.get('torch')}, {m.get('cpu_threads')} CPU threads, wall time {doc['wall_s']:.0f} s; "
                      + provenance_line(doc)]
    if at_doc is not None:
        m = at_doc["machine"]
        lines += ["", f"- the searched attention-transfer row: {at_doc['config']} with only its `at` stage trained "
                      f"(the others 0 epochs), seeds {at_doc['seeds']}, {m.get('device')}, torch {m.get('torch')}, "
                      f"{m.get('cpu_threads')} CPU threads, wall time {at_doc['wall_s']:.0f} s; " + provenance_line(at_doc)]
    bank = res / "bench_bank.json"
    if order and docs[order[0]]["config"].endswith("compare_cifar10.toml") and bank.exists():
        b = json.loads(bank.read_text())
        lines += ["", f"The ResNet-18 never ran while the students of `configs/compare_cifar10.toml` trained: its "
                      f"outputs on 4 augmented views of every training image were computed once (a bank of views, "
                      f"bf16 autocast + channels_last) and read by every seed; that pass costs "
                      f"{b['minutes_per_view_50k']['bf16']:.2f} min a view on this machine and the bank takes "
                      f"{b['disk']['bytes'] / 2**30:.2f} GiB (results/bench_bank.md). FitNets' 10 hint epochs read "
                      "one view of the full layer2 map (64 KiB an image), the other stages 4 views."]
    for name in order:
        if claimed[name]:
            doc = docs[name]
            lines += ["", f"## The paper's claims on `{doc['config']}` (seeds {', '.join(map(str, doc['seeds']))}, "
                          "legacy cosine mAP, seed by seed, within this run)", ""]
            for c in claimed[name]:
                lines.append(f"- **{c['claim']}**: {c['verdict']}. " + "; ".join(_say(v) for v in c["comparisons"]) + ".")
    notes = res / "compare_cifar10_notes.md"  # how the runs were made, written by whoever ran them
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    atomic_write_text(res / "compare_cifar10.md", "\n".join(lines) + "\n")
    atomic_write_json(res / "compare_cifar10.json", {"tables": tables, "sources": order, "claims": claimed})
    print("\n".join(lines))
    print("wrote results/compare_cifar10.md|json")


if __name__ == "__main__":
    main()
