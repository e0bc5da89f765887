"""Human-readable summaries of a run's results."""

from __future__ import annotations

__all__ = ["results_table"]


def results_table(results: dict) -> str:
    """A Markdown table: one row per model, the paper's columns first."""
    rows = ["| model | arch | params | cos mAP | euc mAP | cos P@10 | cos P@100 | NCM acc | head acc | legacy cos mAP |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    for name, r in results["models"].items():
        cos, euc = r.get("cosine", {}), r.get("euclidean", {})
        p = cos.get("precision_at", {})
        rows.append(
            f"| {name} | {r['arch']}×{r['width']:g} | {r['params']:,} | {f(cos.get('map'))} | {f(euc.get('map'))} | "
            f"{f(p.get(10))} | {f(p.get(100))} | {f(r.get('ncm_acc'))} | {f(r.get('head_acc'))} | "
            f"{f(cos.get('legacy', {}).get('map'))} |")
    m = results.get("machine", {})
    lines = [f"# {results.get('title') or 'flowkd results'}", "",
             f"data: {results['data']['name']} ({results['data']['train']} train / {results['data']['test']} test); "
             f"machine: {m.get('gpu') or m.get('device')}, torch {m.get('torch')}, {m.get('cpu_threads')} CPU threads", "",
             *rows, "", "| stage | model | teacher | epochs | wall s | peak GPU MiB |", "|---|---|---|---:|---:|---:|"]
    for name, s in results["stages"].items():
        lines.append(f"| {name} | {s['model']} | {s.get('teacher') or '—'} | {s['epochs']} | {s['wall_s']:.1f} | "
                     f"{s.get('peak_gpu_mib', '—')} |")
    if "total_wall_s" in results:
        lines += ["", f"total wall time: {results['total_wall_s']:.1f} s"]
    return "\n".join(lines) + "\n"
