#!/bin/bash
# bf16 training's effect on mAP (issue 28): per seed, the student in float32 and then in bf16, each a `flowkd
# compare` run that keeps its finished seeds (--reuse), so the pairs fill in seed by seed and a stopped run
# continues. Extra arguments go to both runs (data and auxiliary overrides, e.g. --set models.aux.weights=...).
#   bash benchmarks/bf16/run.sh --set models.aux.weights=PATH [--set data.root=...]
#   python3 benchmarks/bf16/table.py
set -e
cd "$(dirname "$0")/../.."
seeds=""
for s in 0 1 2; do
    seeds="$seeds $s"
    flowkd compare benchmarks/bf16/flow.toml --seeds $seeds --out runs/bf16/fp32 --name bf16_fp32 --reuse --no-progress "$@"
    flowkd compare benchmarks/bf16/flow.toml --seeds $seeds --out runs/bf16/bf16 --name bf16_bf16 --reuse --no-progress --set fast.amp=bf16 "$@"
done
