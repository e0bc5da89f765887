"""Rows of the beyond-the-paper log (results/beyond_cifar10.md) from finished run folders.

    python benchmarks/beyond/table.py RUN_DIR [RUN_DIR ...]

One row per evaluated model: legacy cosine mAP, legacy Euclidean mAP, legacy cosine P@100 (the reference
evaluator's values, comparable with the paper), then the standard values, the head accuracy when the model
learnt from labels, and the numbers of queries / database images (5,000 / 45,000: the validation split; 10,000 / 50,000: test).
"""

import json
import sys
from pathlib import Path


def rows(run: Path) -> list[str]:
    res = json.loads((run / "results.json").read_text())
    out = []
    for name, m in res["models"].items():
        c, e = m["cosine"], m["euclidean"]
        acc = m.get("head_acc")
        out.append(f"| {name} | {c['legacy']['map']:.2f} | {e['legacy']['map']:.2f} | {c['legacy']['precision_at']['100']:.2f} | "
                   f"{c['map']:.2f} | {e['map']:.2f} | {c['precision_at']['100']:.2f} | "
                   f"{'' if acc is None else f'{acc:.2f}'} | {c['n_queries']} / {c['n_database']} |")
    return out


if __name__ == "__main__":
    print("| model | legacy cos mAP | legacy euc mAP | legacy cos P@100 | cos mAP | euc mAP | cos P@100 | head acc | queries / database |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for d in sys.argv[1:]:
        print("\n".join(rows(Path(d))))
