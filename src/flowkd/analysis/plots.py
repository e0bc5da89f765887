"""Render a run's flow.jsonl: per stage, each tapped layer's QMI with the labels over the epochs, the
teacher's layers for reference, and the schedule's weights on a second axis; for distillation stages also
a "distillation plane" (each pair's loss to the teacher vs the student layer's MI, one path per pair over
the epochs, in the spirit of the information plane); plus one small HTML page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..errors import FlowKDError
from ..io import atomic_write_text

__all__ = ["render_flow"]


def _load(run: Path) -> dict[str, list[dict]]:
    path = run / "flow.jsonl"
    if not path.is_file():
        raise FlowKDError(f"{path} not found: run with --set analysis.flow_log=true")
    stages: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        stages.setdefault(rec["stage"], []).append(rec)
    return stages


def render_flow(run_dir) -> list[Path]:
    """Write ``flow_<stage>.png`` for every stage and ``flow_report.html``; return the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FlowKDError("flowkd flow needs matplotlib: pip install 'flowkd[plot]'") from None
    run = Path(run_dir)
    stages = _load(run)
    written = []
    for name, recs in stages.items():
        epochs = [r["epoch"] for r in recs]
        fig, ax = plt.subplots(figsize=(7, 4))
        for tap in recs[-1]["mi"]:
            ax.plot(epochs, [r["mi"].get(tap) for r in recs], marker=".", label=f"{recs[0]['model']}:{tap}")
        for i, (tap, v) in enumerate(recs[-1].get("teacher_mi", {}).items()):
            ax.axhline(v, ls="--", lw=0.8, color=f"C{i}", alpha=0.6, label=f"{recs[0].get('teacher')}:{tap}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("quadratic MI with the labels")
        ax.set_title(f"stage {name}", fontsize=10)
        if "weights" in recs[-1]:
            ax2 = ax.twinx()
            first = next(iter(recs[-1]["weights"]))
            ax2.plot(epochs, [r["weights"][first] for r in recs], color="grey", lw=1.5, alpha=0.5)
            ax2.set_yscale("log")
            ax2.set_ylabel("intermediate pair weight (grey)")
        # the legend goes under the axes, where it covers neither the MI curves nor the schedule line
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
        fig.tight_layout()
        out = run / f"flow_{name}.png"
        if "divergence" in recs[-1]:  # the distillation plane: distance to the teacher vs information, per pair
            fig.set_size_inches(12, 5)
            ax.set_position([0.06, 0.34, 0.38, 0.58])
            plane = fig.add_axes([0.58, 0.34, 0.38, 0.58])
            for i, pair in enumerate(recs[-1]["divergence"]):
                student_tap = pair.split("~", 1)[1]
                xs = [r["divergence"][pair] for r in recs]
                ys = [r["mi"][student_tap] for r in recs]
                plane.plot(xs, ys, marker=".", color=f"C{i}", label=pair)
                plane.annotate("start", (xs[0], ys[0]), fontsize=6)
            plane.set_xscale("log")
            plane.tick_params(axis="x", labelsize=7, labelrotation=30)  # log ticks of a narrow range overlap flat
            plane.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            plane.set_xlabel("pair loss to the teacher on the probe (log)")
            plane.set_ylabel("student layer's MI with the labels")
            plane.set_title("distillation plane (one path per layer pair, epoch by epoch)", fontsize=9)
            plane.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        tmp = out.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(out)
        written.append(out)
    parts = ["<!doctype html><meta charset='utf-8'><title>flowkd information flow</title>",
             f"<h1>Information flow: {html.escape(str(run))}</h1>",
             "<p>Per stage: each tapped layer's quadratic mutual information with the labels on a fixed probe set "
             "(solid), the teacher's layers (dashed) and the schedule's intermediate-pair weight (grey, log axis).</p>"]
    for name, png in zip(stages, written):
        last = stages[name][-1]
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.5f}</td></tr>" for k, v in last["mi"].items())
        data = base64.b64encode(png.read_bytes()).decode()
        parts += [f"<h2>{html.escape(name)}</h2>", f"<img src='data:image/png;base64,{data}'>",
                  f"<table><tr><th>tap</th><th>MI at epoch {last['epoch']}</th></tr>{rows}</table>"]
    report = run / "flow_report.html"
    atomic_write_text(report, "\n".join(parts) + "\n")
    return written + [report]
