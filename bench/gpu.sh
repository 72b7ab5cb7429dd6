#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one command (it keeps nothing between leases):
# build the extension for this GPU, run the CUDA tests (and the CPU SIMD builds' tests, on that
# machine's CPU and torch), train a few hundred iterations on CUDA (plain and through torchrun),
# bench/flows.py on CUDA, bench/gpu_busy.py, and bench/train_speed.py's whole iterations on CUDA.
#
#   OUT=out/gpu bash bench/gpu.sh               # every stage; logs and the bench's JSON land in $OUT
#   OUT=out/gpu bash bench/gpu.sh tests busy    # the build, then only the stages named
#
# Uses the machine's own python3 and torch (no venv: nothing can be fetched there). Each stage has
# its own time limit, so a hang in one still leaves the others' logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WANT=" ${*:-tests train bench busy step speed} "
stage() {  # stage NAME SECONDS CMD...: run CMD with a limit, log to $OUT/NAME.log, say how it ended
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    case "$name" in build|ops-registered) ;; *) [[ "$WANT" == *" ${name%%-*} "* ]] || return 0 ;; esac
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 4 "$OUT/$name.log"
    return $rc
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
stage build 300 "$PY" setup.py build_ext --inplace || exit 1
stage ops-registered 60 env PYTHONPATH=. "$PY" .ci/cuda_build_check.py || exit 1
stage tests-cuda 200 "$PY" -m pytest tests -q -k "cuda or simd" -p no:cacheprovider
stage train-cuda 90 "$PY" -m missingglow train --preset small --iterations 200 --eval-every 100 \
    --sample-every 200 --checkpoint-every 100 --out /tmp/mg-gpu-train --quiet
stage train-torchrun 90 torchrun --standalone --nproc_per_node=1 -m missingglow train --preset small \
    --iterations 100 --eval-every 100 --sample-every 100 --checkpoint-every 100 --out /tmp/mg-gpu-torchrun --quiet
stage bench 400 "$PY" bench/flows.py --device cuda --json "$OUT/flows-cuda.json" ${BENCH_ARGS:-}
stage busy 200 "$PY" bench/gpu_busy.py
stage step 420 "$PY" bench/gpu_step.py --out "$OUT/gpu_step.json"
stage speed-small 120 "$PY" bench/train_speed.py --preset small --steps 30 --device cuda
stage speed-paper 240 "$PY" bench/train_speed.py --preset paper --steps 10 --warmup 2 --device cuda
[ -f "$OUT/bench.log" ] && cat "$OUT/bench.log"
for log in busy step speed-small speed-paper; do [ -f "$OUT/$log.log" ] && tail -n 5 "$OUT/$log.log"; done; true
