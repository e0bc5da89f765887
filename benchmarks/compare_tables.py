"""Re-render every results/compare_<name>.md and .png from its committed JSON (as `flowkd compare` writes them).

    python benchmarks/compare_tables.py [NAME ...]      # default: every results/compare_*.json of `flowkd compare`

A JSON written before `flowkd compare` recorded the training mode gets it here, from its config and overrides
(a `mode=` override, else the config file's `mode`), and is written back with it.
"""

from __future__ import annotations

import json
import sys

from _common import ROOT

from flowkd.compare import render
from flowkd.config import load_config
from flowkd.io import atomic_write_json


def mode_of(doc: dict) -> str:
    for o in doc.get("overrides", []):
        if o.startswith("mode="):
            return o.split("=", 1)[1].strip().strip("'\"")
    return load_config(ROOT / doc["config"]).mode


def main(names: list[str]) -> None:
    res = ROOT / "results"
    paths = [res / f"compare_{n}.json" for n in names] if names else sorted(res.glob("compare_*.json"))
    for path in paths:
        doc = json.loads(path.read_text())
        if "models" not in doc:  # results/compare_cifar10.json: benchmarks/compare_cifar10_table.py
            continue
        if "mode" not in doc:
            doc["mode"] = mode_of(doc)
            atomic_write_json(path, doc)
        render(doc, path.with_suffix(""))
        print(f"wrote {path.with_suffix('.md').relative_to(ROOT)} (mode {doc['mode']})"
              + (" and the chart" if doc.get("plot") else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
