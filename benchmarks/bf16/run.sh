#!/bin/bash
# bf16 training's effect on mAP (issue 28): the student in float32 and in bf16, the two series side by side
# (each process at half the cores, so the stage times compare under the same load), seed after seed. Each is a
# `flowkd compare` run that keeps its finished seeds (--reuse): the pairs fill in seed by seed, and a stopped
# run continues. Extra arguments go to both runs (data and auxiliary overrides).
#   bash benchmarks/bf16/run.sh --set models.aux.weights=PATH [--set data.root=...]
#   python3 benchmarks/bf16/table.py
set -e
cd "$(dirname "$0")/../.."
FLOWKD=${FLOWKD:-flowkd}
cores=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
export OMP_NUM_THREADS=$(( cores > 1 ? cores / 2 : 1 ))
series() {  # series NAME [more compare arguments]: seeds 0, then 0 1, then 0 1 2
    local name=$1 seeds=""; shift
    for s in 0 1 2; do
        seeds="$seeds $s"
        $FLOWKD compare benchmarks/bf16/flow.toml --seeds $seeds --out runs/bf16/$name --name bf16_$name \
            --reuse --no-progress "$@"
    done
}
series fp32 "$@" & a=$!
series bf16 --set fast.amp=bf16 "$@" & b=$!
wait $a; wait $b
