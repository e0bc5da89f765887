"""Human-readable summaries of a run's results."""

from __future__ import annotations

__all__ = ["results_table", "cost_header", "cost_cells", "compression_summary", "fmt_bytes"]

COST_COLUMNS = ["MMACs", "size", "ms/img pt", "ms/256 pt", "ms/img ORT", "ms/256 ORT"]
COST_NOTE = ("MMACs: millions of multiply-accumulates per image (PyTorch's FlopCounterMode, FLOPs / 2); size: the "
             "serialised state_dict; ms: median latency on 1 CPU thread, warm, of 1 image and of a batch of 256, "
             "PyTorch eager (pt) and ONNX Runtime (ORT).")


def fmt_bytes(n) -> str:
    if n is None:
        return "—"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


def _ms(cost: dict, runtime: str, n) -> str:
    v = (cost.get("latency_ms") or {}).get(runtime, {}).get(str(n))
    return "—" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def cost_header() -> list[str]:
    return list(COST_COLUMNS)


def cost_cells(cost: dict | None) -> list[str]:
    """The cost columns' cells of one model (``results["models"][name]["cost"]``, see flowkd.cost.model_cost);
    dashes when the model has no cost entry."""
    if not cost:
        return ["—"] * len(COST_COLUMNS)
    batch = cost.get("batch", 256)
    return [f"{cost['macs'] / 1e6:,.2f}", fmt_bytes(cost.get("state_dict_bytes")), _ms(cost, "pytorch", 1),
            _ms(cost, "pytorch", batch), _ms(cost, "onnxruntime", 1), _ms(cost, "onnxruntime", batch)]


def _times(a: float, b: float) -> str:
    r = a / b if b else float("inf")
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×"


def compression_summary(results: dict) -> list[str]:
    """One line per model with a cost entry, against the largest one (most MACs): ``"student: 48× fewer MACs,
    12× faster (1 image, ONNX Runtime, 1 CPU thread), 40.3 cos mAP points below the teacher"``."""
    models = {n: r for n, r in results.get("models", {}).items() if r.get("cost")}
    if len(models) < 2:
        return []
    big_name = max(models, key=lambda n: (models[n]["cost"]["macs"], models[n]["cost"]["params"]))
    big = models[big_name]
    big_label = big.get("label") or big_name
    lat = big["cost"].get("latency_ms") or {}
    runtime = "onnxruntime" if "onnxruntime" in lat else "pytorch" if "pytorch" in lat else None
    lines = []
    for name, r in models.items():
        if name == big_name:
            continue
        c = r["cost"]
        parts = [f"{_times(big['cost']['macs'], c['macs'])} fewer MACs" if c["macs"] else "no MACs counted",
                 f"{_times(big['cost']['params'], c['params'])} fewer parameters" if c["params"] else "no parameters"]
        mine = (c.get("latency_ms") or {}).get(runtime or "", {}).get("1")
        theirs = lat.get(runtime or "", {}).get("1")
        if mine and theirs:
            parts.append(f"{_times(theirs, mine)} faster (1 image, {'ONNX Runtime' if runtime == 'onnxruntime' else 'PyTorch eager'}, 1 CPU thread)")
        a, b = (big.get("cosine") or {}).get("map"), (r.get("cosine") or {}).get("map")
        if a is not None and b is not None:
            parts.append(f"{abs(a - b):.2f} cos mAP points {'below' if b <= a else 'above'} the {big_label}")
        lines.append(f"{r.get('label') or name}: " + ", ".join(parts))
    return lines


def results_table(results: dict) -> str:
    """A Markdown table: one row per model, the paper's columns first; cost columns when models carry a
    ``"cost"`` entry (flowkd.cost.model_cost), and then the compression each model buys against the largest."""
    with_cost = any(r.get("cost") for r in results["models"].values())
    with_paper = any(r.get("paper") for r in results["models"].values())
    extra_head = (" paper cos mAP (legacy) |" if with_paper else "") + ("".join(f" {c} |" for c in cost_header()) if with_cost else "")
    rows = ["| model | arch | params | cos mAP | euc mAP | cos P@10 | cos P@100 | NCM acc | head acc | legacy cos mAP |"
            + extra_head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if with_paper else "")
            + ("---:|" * len(COST_COLUMNS) if with_cost else "")]

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    for name, r in results["models"].items():
        cos, euc = r.get("cosine", {}), r.get("euclidean", {})
        p = cos.get("precision_at", {})
        rows.append(
            f"| {name} | {r['arch']}×{r['width']:g} | {r['params']:,} | {f(cos.get('map'))} | {f(euc.get('map'))} | "
            f"{f(p.get(10))} | {f(p.get(100))} | {f(r.get('ncm_acc'))} | {f(r.get('head_acc'))} | "
            f"{f(cos.get('legacy', {}).get('map'))} |" + (f" {f((r.get('paper') or {}).get('cos_map'))} |" if with_paper else "")
            + ("".join(f" {c} |" for c in cost_cells(r.get("cost"))) if with_cost else ""))
    m = results.get("machine", {})
    lines = [f"# {results.get('title') or 'flowkd results'}", "",
             f"data: {results['data']['name']} ({results['data']['train']} train / {results['data']['test']} test); "
             f"machine: {m.get('gpu') or m.get('device')}, torch {m.get('torch')}, {m.get('cpu_threads')} CPU threads", "",
             *rows]
    if with_cost:
        lines += ["", COST_NOTE]
        summary = compression_summary(results)
        if summary:
            lines += [""] + [f"- {s}" for s in summary]
    lines += ["", "| stage | model | teacher | epochs | wall s | peak GPU MiB |", "|---|---|---|---:|---:|---:|"]
    for name, s in results["stages"].items():
        lines.append(f"| {name} | {s['model']} | {s.get('teacher') or '—'} | {s['epochs']} | {s['wall_s']:.1f} | "
                     f"{s.get('peak_gpu_mib', '—')} |")
    if "total_wall_s" in results:
        lines += ["", f"total wall time: {results['total_wall_s']:.1f} s"]
    return "\n".join(lines) + "\n"
