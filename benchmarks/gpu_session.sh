#!/usr/bin/env bash
# One GPU session, everything the GPU numbers need, in priority order, each step under its own time limit so
# that a failing or slow step leaves the others their time. Run from the repository root on the device:
#
#   bash benchmarks/gpu_session.sh              # needs .devdata/gpu/{cifar10-jpg.tar.xz,cifar10_preact_resnet18.pt}
#
# Everything (logs, results/bench_*_cuda.*, the pipeline's results/metrics) is packed into $OUT/bundle.tgz
# after every step; $OUT/steps.txt lists each step's exit code and seconds. BUDGET (s) bounds the whole.
# SMOKE=1 runs the same steps on the CPU with tiny sizes (to check the script itself); SKIP="bench_pkt ..." leaves
# steps out, TESTS picks the test files, NAIVE_REPEAT the naive loop's epochs, RETRIEVAL=1 adds the retrieval bench.
set -u
OUT=${OUT:-/tmp/flowkd-gpu-out}
BUDGET=${BUDGET:-560}
SMOKE=${SMOKE:-0}
DEV=.devdata/gpu
WORK=${WORK:-/tmp/flowkd-gpu}
mkdir -p "$OUT" "$WORK/logs" "$WORK/data"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$(date +%s)

bundle() {  # everything worth keeping, as one file (the device returns at most 8)
    mkdir -p "$WORK/results" && cp results/bench_*"$D"* "$WORK/results/" 2>/dev/null
    tar czf "$OUT/bundle.tgz.tmp" --exclude=checkpoints -C "$WORK" logs results $(cd "$WORK" && ls -d run 2>/dev/null) \
        && mv "$OUT/bundle.tgz.tmp" "$OUT/bundle.tgz"
}
step() {  # step NAME LIMIT_S CMD...   (SKIP="name ..." leaves steps out)
    local name=$1 limit=$2; shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "$name skipped (SKIP)" | tee -a "$OUT/steps.txt"; return; fi
    local left=$(( BUDGET - ($(date +%s) - T0) - 10 ))
    (( limit > left )) && limit=$left
    if (( limit < 5 )); then echo "$name skipped (budget spent)" | tee -a "$OUT/steps.txt"; return; fi
    local s=$(date +%s)
    timeout -k 5 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $(( $(date +%s) - s ))s (limit ${limit}s)" | tee -a "$OUT/steps.txt"
    tail -n 25 "$WORK/logs/$name.log"
    bundle
}

if [[ $SMOKE == 1 ]]; then
    D=cpu; IMAGES=1024; STEPS=4; RUNSETS=(--set "stages.aux_labels.epochs=[1, 1]" --set "stages.aux_pkt.epochs=[0, 0]"
        --set "stages.student.epochs=[1]" --set "stages.baseline.epochs=[1]" --set "eval.models=['student', 'baseline']")
    FAST=(--set fast.amp=bf16 --set fast.channels_last=true)
else
    D=cuda; IMAGES=50000; STEPS=40; RUNSETS=()
    FAST=(--set fast.amp=bf16 --set fast.channels_last=true --set fast.cuda_graph=true)
fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch; print(torch.__version__)"; nproc; } \
    > "$WORK/logs/machine.log" 2>&1
cat "$WORK/logs/machine.log"

step data 90 bash -c "(tar -xJf $DEV/cifar10-jpg.tar.xz -C $WORK/data || python3 -c 'import tarfile; tarfile.open(\"$DEV/cifar10-jpg.tar.xz\").extractall(\"$WORK/data\")') && python3 -c \"
import time; t=time.perf_counter()
from flowkd.data.readers import load_dataset
tr, te = load_dataset('cifar10_jpg', '$WORK/data/cifar10')
print('decoded', tuple(tr.images.shape), tuple(te.images.shape), 'in', round(time.perf_counter()-t, 1), 's')\""

step tests 90 python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/test_cuda_graph.py tests/test_pkt.py tests/test_fast_path.py tests/test_loader.py}

step bench_pkt 40 python3 benchmarks/bench_pkt.py --device $D --repeat 50

step bench_epoch 170 python3 benchmarks/bench_epoch.py --data "$WORK/data/cifar10" --images $IMAGES --device $D \
    --epochs 3 --naive-repeat ${NAIVE_REPEAT:-2}

# students of one architecture stacked into one network (grouped convolutions) vs one after another (issue 16)
step bench_stack 40 python3 benchmarks/bench_stack.py --students 5 10 $([[ $D == cpu ]] && echo "--threads 1 --repeat 2 --no-cuda" || echo "--threads 16")

step profile 45 python3 benchmarks/profile_student.py --data "$WORK/data/cifar10" --device $D --steps $STEPS \
    --amp --channels-last

# the whole paper pipeline (all stages, all evaluations), fast path on; whatever time is left
rm -rf "$WORK/run"
step pipeline 400 python3 -m flowkd run configs/cifar10_resnet18_to_verytiny.toml --out "$WORK/run" --no-progress \
    --set device=$D --set data.name=cifar10_jpg --set data.root="$WORK/data/cifar10" --set models.teacher.weights=$DEV/cifar10_preact_resnet18.pt \
    "${FAST[@]}" "${RUNSETS[@]}"
if grep -q "^pipeline rc=[1-9]" "$OUT/steps.txt"; then  # the fast path failed: the same run without the graph
    rm -rf "$WORK/run"
    step pipeline_nograph 400 python3 -m flowkd run configs/cifar10_resnet18_to_verytiny.toml --out "$WORK/run" --no-progress \
        --set device=$D --set data.name=cifar10_jpg --set data.root="$WORK/data/cifar10" --set models.teacher.weights=$DEV/cifar10_preact_resnet18.pt \
        --set fast.amp=bf16 --set fast.channels_last=true "${RUNSETS[@]}"
fi
rm -rf "$WORK/run/checkpoints"
bundle
[[ ${RETRIEVAL:-0} == 1 ]] && step bench_retrieval 60 python3 benchmarks/bench_retrieval.py --device $D --skip-baseline
echo "total $(( $(date +%s) - T0 ))s"
cat "$OUT/steps.txt"
