"""Compare KD methods: run one pipeline config (one student model per method) over several seeds,
then aggregate every model's metrics as mean ± std into one table, a JSON file and a bar chart."""

from __future__ import annotations

import json
import re
import statistics
import textwrap
import time
from pathlib import Path

from .checks import check_number
from .config import load_config, to_dict
from .errors import FlowKDError
from .io import read_json, atomic_write_json, atomic_write_text, check_folder, check_output
from .pipeline import Pipeline
from .rundir import config_difference, is_run
from .report import COST_NOTE, compression_summary, cost_cells, cost_header

__all__ = ["compare", "aggregate", "compare_table", "render", "same_everywhere", "provenance_line", "is_comparison", "check_plan"]

COLUMNS = [("cos mAP", ("cosine", "map")), ("euc mAP", ("euclidean", "map")),
           ("cos P@10", ("cosine", "precision_at", 10)), ("cos P@100", ("cosine", "precision_at", 100)),
           ("legacy cos mAP", ("cosine", "legacy", "map")), ("legacy euc mAP", ("euclidean", "legacy", "map")),
           ("legacy cos P@100", ("cosine", "legacy", "precision_at", 100)),
           ("NCM acc", ("ncm_acc",)), ("head acc", ("head_acc",))]
PAPER = (("cos_map", "cos"), ("euc_map", "euc"), ("p100", "P@100"))


def _get(d, path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k, d.get(str(k))) if isinstance(k, int) else d.get(k)
        if d is None:
            return None
    return d


def aggregate(per_seed: list[dict]) -> dict:
    """``{model: {"label", column: {"mean", "std", "values"}}}`` over the seeds' results."""
    out = {}
    for name, first in per_seed[0]["models"].items():
        row = {"label": first.get("label", name), "params": first["params"], "paper": first.get("paper") or {}}
        if first.get("cost"):  # MACs / params / size are the same for every seed; latency: the first seed's run
            row["cost"] = first["cost"]
        for col, path in COLUMNS:
            vals = [_get(r["models"][name], path) for r in per_seed]
            vals = [v for v in vals if v is not None]
            if vals:
                row[col] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            "values": vals}
        out[name] = row
    return out


def same_everywhere(cell: dict) -> bool:
    """The same value on every seed (of several, to 0.001 points: float sums over other thread counts differ in
    the last digits): one model evaluated once per seed, e.g. one loaded from a file that no stage of the run
    trains; its spread says nothing. (Students trained from different seeds differ by tenths of a point.)"""
    vals = cell["values"]
    return len(vals) > 1 and max(vals) - min(vals) < 1e-3


def provenance_line(doc: dict) -> str:
    """How the runs were made: config, overrides, mode, and the training time per seed."""
    line = f"config `{doc['config']}`" + (f", overrides `{' '.join(doc['overrides'])}`" if doc.get("overrides") else "")
    if doc.get("mode"):
        line += f"; mode: {doc['mode']}"
    walls = doc.get("stage_wall_s") or {}
    how = doc.get("stage_trained_on") or {}  # how each stage trained (runs that record it: the pipeline's trained_on)
    if walls and any(t for ts in how.values() for t in ts):
        per_seed = []
        for i in range(len(doc["seeds"])):
            cells = [f"{k} {round(v[i]):,} s{_trained_on((how.get(k) or [None] * len(v))[i])}"
                     for k, v in walls.items() if i < len(v) and round(v[i]) > 0]  # stages of 0 epochs left out
            per_seed.append(" + ".join(cells))
        line += ("; training time per seed, stage by stage (a stage resumed with --resume counts all its parts): "
                 + ", ".join(f"seed {s}: {c}" for s, c in zip(doc["seeds"], per_seed)))
    elif walls:  # runs that do not say how their stages trained: each distinct time once
        per_seed = [sorted({round(v[i]) for v in walls.values() if i < len(v)}) for i in range(len(doc["seeds"]))]
        line += ("; training wall time per seed (stage by stage, or one figure for a cohort): "
                 + ", ".join(f"seed {s}: " + " + ".join(f"{w:,} s" for w in ws) for s, ws in zip(doc["seeds"], per_seed))
                 + " (a run continued with --resume counts its last part only)")
    return line


def _trained_on(t: dict | None) -> str:
    """`` (2 side by side x 1 thread, resumed)``: how a stage trained, as its run recorded it."""
    if not t:
        return ""
    n = t.get("threads_per_worker")
    what = (f"{t['workers']} side by side x {n} thread{'s' * (n != 1)}" if t.get("workers", 1) > 1
            else f"{n} thread{'s' * (n != 1)}")
    return f" ({what}{', resumed' if t.get('resumed') else ''})"


def render(doc: dict, path: Path | None = None) -> str:
    """The table of a comparison's JSON document (as ``compare`` writes it); with ``path`` (``.../compare_<name>``
    without suffix) it is written to ``path.md`` with the chart ``path.png``. Re-renders committed results."""
    table = compare_table(doc["models"], doc["title"], doc["seeds"], doc["machine"], doc["wall_s"],
                          provenance=provenance_line(doc) if "config" in doc else "")
    if path is not None:
        atomic_write_text(path.with_suffix(".md"), table)
        doc["plot"] = str(path.with_suffix(".png")) if _plot(doc["models"], doc["title"], path.with_suffix(".png")) else None
    return table


def compare_table(agg: dict, title: str, seeds, machine: dict, wall: float, provenance: str = "") -> str:
    cols = [c for c, _ in COLUMNS if any(c in r for r in agg.values())]
    with_cost = any(r.get("cost") for r in agg.values())
    with_paper = any(r.get("paper") for r in agg.values())
    head = cols + (["paper (legacy) cos / euc / P@100"] if with_paper else []) + (cost_header() if with_cost else [])
    lines = [f"# {title}", "", f"seeds: {list(seeds)}; machine: {machine.get('gpu') or machine.get('device')}, "
             f"torch {machine.get('torch')}, {machine.get('cpu_threads')} CPU threads; total wall time {wall:.0f} s"
             + (f"; {provenance}" if provenance else ""),
             "", "| model | params | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(head)]
    same = False
    for name, r in agg.items():
        one = all(same_everywhere(r[c]) for c in cols if c in r)  # every figure: one model (two accuracies on
        same = same or one                                           # a small test set may match by chance)
        cells = [("—" if c not in r else f"{r[c]['mean']:.2f}" if len(r[c]["values"]) == 1
                  else f"{r[c]['mean']:.2f} ¹" if one else f"{r[c]['mean']:.2f} ± {r[c]['std']:.2f}") for c in cols]
        if with_paper:
            p = r.get("paper") or {}
            cells.append(" / ".join(f"{p[k]:.2f}" if k in p else "—" for k, _ in PAPER) if p else "—")
        cells += cost_cells(r.get("cost")) if with_cost else []
        lines.append(f"| {r['label']} | {r['params']:,} | " + " | ".join(cells) + " |")
    lines += ["", "mAP / P@k in %, last epoch of every stage (no best-epoch picking); mean ± sample std over seeds. "
              "`legacy` = the reference evaluator's values (flowkd.retrieval, legacy=True): the paper's figures are "
              "those, so compare the paper column with the legacy columns only."]
    if same:
        lines += ["", "¹ the same values on every seed (to 0.001): one model (no stage of the run trains it, e.g. one loaded from a "
                      "file) evaluated once per seed, so it has no spread over seeds."]
    if with_cost:
        lines += ["", COST_NOTE + " Cost of the first seed's models."]
        means = {"models": {n: {"label": r["label"], "cost": r.get("cost"),
                                "cosine": {"map": r["cos mAP"]["mean"]} if "cos mAP" in r else {}} for n, r in agg.items()}}
        lines += [f"- {s}" for s in compression_summary(means)]
    return "\n".join(lines) + "\n"


def _plot(agg: dict, title: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    col = "legacy cos mAP" if any("legacy cos mAP" in r for r in agg.values()) else "cos mAP"
    names = [n for n in agg if col in agg[n]]
    means = [agg[n][col]["mean"] for n in names]
    stds = [agg[n][col]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), means, xerr=stds, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(names)), [agg[n]["label"] for n in names], fontsize=8)
    ax.invert_yaxis()
    paper = [(i, (agg[n].get("paper") or {}).get("cos_map")) for i, n in enumerate(names)]
    paper = [(i, v) for i, v in paper if v is not None]
    if paper and col.startswith("legacy"):  # the paper's figures are the reference evaluator's: legacy values
        ax.scatter([v for _, v in paper], [i for i, _ in paper], marker="D", color="#c44e52", zorder=3,
                   label="the paper's figure")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_xlabel(("legacy cosine retrieval mAP (%): the reference evaluator's, as the paper counts"
                   if col.startswith("legacy") else "cosine retrieval mAP (%): standard 11-point interpolated")
                  + "\nmean ± std over seeds", fontsize=8)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    marks = dict(paper) if paper and col.startswith("legacy") else {}
    for i, (m, sd) in enumerate(zip(means, stds)):
        ax.text(max(m + sd, marks.get(i, 0.0)) + 1.5, i, f"{m:.1f}", va="center", fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return True


MARKER = "comparison.json"  # what makes a folder a comparison's (written in --out when it starts)


def is_comparison(path: Path) -> bool:
    """Whether ``path`` holds a comparison: its marker, or nothing but ``seed<N>`` run folders (older ones)."""
    if (path / MARKER).is_file():
        return True
    entries = list(path.iterdir())
    return bool(entries) and all(re.fullmatch(r"seed\d+", e.name) and e.is_dir() and (is_run(e) or not any(e.iterdir()))
                                 for e in entries)


def _is_results(path: Path) -> bool:
    """A comparison's results file (``compare_<name>.json|md|png``) written by ``compare``: its JSON says so."""
    try:
        doc = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"title", "config", "seeds", "models", "machine"} <= set(doc)


def check_plan(config, seeds, out_dir, results: list[Path], *, reuse: bool, force: bool) -> None:
    """Everything that can refuse a comparison, before its first seed trains: the seeds, the ``--out`` folder
    (new, empty or a comparison), a seed's folder that already holds a run (only with ``reuse``), and the
    results files (new, a comparison's, or ``force``)."""
    if not seeds:
        raise FlowKDError("compare needs at least one seed")
    for seed in seeds:
        check_number("--seeds", seed, ">= 0", whole=True)
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise FlowKDError(f"--seeds lists seed {twice[0]} twice; give each seed once")
    out = check_folder(out_dir, "--out")
    if out.is_dir() and any(out.iterdir()) and not is_comparison(out):
        names = sorted(e.name for e in out.iterdir())
        raise FlowKDError(f"--out {out} is not empty and is not a comparison (it holds {', '.join(names[:3])}"
                          f"{', ...' if len(names) > 3 else ''}); choose a new or empty folder")
    for seed in seeds:
        run = out / f"seed{seed}"
        if not reuse and run.is_dir() and any(run.iterdir()):
            raise FlowKDError(f"{run} already holds a run of seed {seed}; add --reuse to read it (and resume an "
                              "unfinished one) or choose another --out")
    for path in results:
        check_output(path, "the results file", force=force, ours=_is_results, choose="--results-dir or --name")


def _check_same_config(run_dir: Path, cfg, seed: int) -> None:
    """A finished seed is reused only if it was trained by the config as it is now (the keys free to change on
    --resume aside): the same rule as resuming a run, so a changed --set never reports another config's numbers."""
    old = read_json(run_dir / "config.json", "remove that seed's folder to train it again")
    diff = config_difference(old, to_dict(cfg))
    if diff:
        key, was, now = diff
        raise FlowKDError(f"{run_dir}: cannot reuse seed {seed} trained with another config: {key} was {was!r} and is "
                          f"{now!r} now; set it back, or give another --out (or remove that seed's folder to train it again)")


def compare(config, seeds, out_dir, *, overrides=(), results_dir="results", name: str = "", log=print,
            reuse: bool = False, force: bool = False) -> dict:
    """Run the config once per seed (``out_dir/seed<N>``) and aggregate. ``reuse``: a seed whose run folder
    already holds ``results.json`` is read instead of trained again; an unfinished one is resumed. The results
    go to ``results_dir/compare_<name>.json|md|png``, replacing only an earlier comparison's (or with ``force``)."""
    name = name or Path(config).stem.removeprefix("compare_")
    res = Path(results_dir)  # (the loop below reuses the name for a seed's results; it is set again after it)
    check_plan(config, seeds, out_dir, [res / f"compare_{name}{x}" for x in (".json", ".md", ".png")],
               reuse=reuse, force=force)
    load_config(config, [*overrides, f"seed={seeds[0]}"])  # a bad config fails before any folder is made
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if not (Path(out_dir) / MARKER).is_file():
        atomic_write_json(Path(out_dir) / MARKER, {"config": str(config), "overrides": list(overrides)})
    t0 = time.perf_counter()
    per_seed, reused_s = [], 0.0
    for seed in seeds:
        cfg = load_config(config, [*overrides, f"seed={seed}"])
        run_dir = Path(out_dir) / f"seed{seed}"
        done = run_dir / "results.json"
        if reuse and done.is_file():
            _check_same_config(run_dir, cfg, seed)
            log(f"== seed {seed}: reusing {done}")
            res = read_json(done, "remove that seed's folder to train it again")
            for n, m in res.get("models", {}).items():  # the paper's figures of the config as it is now
                if n in cfg.models and cfg.models[n].paper:
                    m["paper"] = dict(cfg.models[n].paper)
            per_seed.append(res)
            reused_s += float(res.get("total_wall_s") or 0.0)  # the reused run's own time counts in the total
            continue
        log(f"== seed {seed}")
        per_seed.append(Pipeline(cfg, run_dir, log=log, resume=reuse).run())
    wall = time.perf_counter() - t0 + reused_s
    agg = aggregate(per_seed)
    title = per_seed[0].get("title") or "flowkd comparison"
    res = Path(results_dir)
    doc = {"title": title, "config": str(config), "overrides": list(overrides), "seeds": list(seeds),
           "mode": load_config(config, list(overrides)).mode,
           "machine": per_seed[0]["machine"], "wall_s": round(wall, 1), "models": agg,
           "stage_wall_s": {k: [r["stages"][k]["wall_s"] for r in per_seed] for k in per_seed[0]["stages"]},
           "stage_trained_on": {k: [r["stages"][k].get("trained_on") for r in per_seed] for k in per_seed[0]["stages"]}}
    atomic_write_json(res / f"compare_{name}.json", doc)
    doc["table"] = render(doc, res / f"compare_{name}")
    return doc
