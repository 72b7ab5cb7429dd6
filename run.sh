#!/usr/bin/env bash
# Two verbs that work on a fresh machine (Python 3.11) and are safe to run twice:
#   ./run.sh main   set up .venv and run the main job on the built-in default
#   ./run.sh test   set up .venv and run the lint and the test suite
# and one for CI and people who touch csrc/cuda:
#   ./run.sh cuda-build   build and link the CUDA kernels against torch's CUDA build (no GPU needed)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CUDA_VENV=${CUDA_VENV:-.venv-cuda}
CPU_TORCH=torch==2.13.0     # the CPU wheel; this machine keeps it on local disk
CUDA_TORCH=torch==2.14.1    # a CUDA 13.0 build, matching nvcc 13.0, only to compile and link CUDA

BASELINES="scikit-image opencv-python-headless"   # the optional `baselines` extra (evaluation only)
LINT="ruff clang-format==23.1.5"   # the lint run.sh test runs (and so CI)

need_disk() {  # need_disk DIR GIB WHAT: say so in one line before pip fills the disk halfway
    local dir=$1 gib=$2 what=$3 free_kib
    free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
    if [ "$free_kib" -lt $((gib * 1024 * 1024)) ]; then
        echo "error: $what needs about $gib GiB free in $(cd "$dir" && pwd), which has" \
            "$((free_kib / 1024)) MiB free: free some space there and run this again" >&2
        exit 1
    fi
}

setup_venv() {  # setup_venv DIR GIB TORCH_REQUIREMENT [EXTRA PACKAGES]; GIB: what a new one takes
    local dir=$1 gib=$2 torch_req=$3 extra=${4:-}
    local want="$torch_req $extra"
    if [ ! -x "$dir/bin/python" ]; then
        mkdir -p "$dir"
        need_disk "$dir" "$gib" "a new $dir ($torch_req)"
        "$PYTHON" -m venv "$dir"
    fi
    if [ ! -f "$dir/.missingglow-deps" ] || [ "$(cat "$dir/.missingglow-deps")" != "$want" ]; then
        "$dir/bin/python" -m pip install -q --upgrade pip
        # shellcheck disable=SC2086  # the extra packages are a word list on purpose
        "$dir/bin/python" -m pip install -q "$torch_req" ninja pybind11 pillow click pytest \
            setuptools wheel $extra
        echo "$want" > "$dir/.missingglow-deps"
    fi
}

build_cpu() {  # editable install; rebuilds _C only when a source is newer than the built library
    local so
    so=$(ls missingglow/_C*.so 2>/dev/null | head -n1 || true)
    if [ -z "$so" ] || [ -n "$(find csrc setup.py -newer "$so" -type f | head -n1)" ] \
        || ! "$VENV/bin/python" -c "import missingglow._C" 2>/dev/null; then
        FORCE_ONLY_CPU=1 "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
    fi
}

lint() {  # ruff's rules and formatting over the Python code, clang-format over csrc/
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    find csrc \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
        | xargs -0 "$VENV/bin/clang-format" --dry-run --Werror
}

case "${1:-}" in
    main)
        # train the small preset on the synthetic faces (resumed, or left as it is, when the run
        # exists), then the paper's pictures and Table 1 from its checkpoint
        setup_venv "$VENV" 2 "$CPU_TORCH" "$BASELINES $LINT"; build_cpu
        shift
        RUN=${RUN:-runs/main}
        mg="$VENV/bin/missingglow"
        "$mg" check
        if [ -f "$RUN/latest" ]; then "$mg" train --resume "$RUN" "$@"; else "$mg" train --out "$RUN" "$@"; fi
        "$mg" sample --checkpoint "$RUN" -t 0.1:1.3:0.2 -n 12 --out "$RUN/samples-per-temperature.png"
        "$mg" squares --checkpoint "$RUN" -t 0.1:1.5:0.1 -n 50 --out "$RUN/table1"
        "$mg" impute heldout:0 heldout:1 heldout:2 heldout:3 --checkpoint "$RUN" \
            --method alpha --alpha 0.1:1.0:0.1 --out "$RUN/impute"
        "$mg" impute heldout:0 heldout:1 heldout:2 heldout:3 heldout:4 heldout:5 --checkpoint "$RUN" \
            --samples 4 --out "$RUN/restore"
        # every method on four hole families; the posterior's calibration (--samples 19) would
        # add about a quarter of an hour on a CPU, so the main job leaves it out
        "$mg" evaluate --checkpoint "$RUN" -n 100 --samples 0 --out "$RUN/evaluation" \
            --json "$RUN/evaluation/evaluation.json"
        echo "pictures and tables are in $RUN/"
        ;;
    lint)
        setup_venv "$VENV" 2 "$CPU_TORCH" "$BASELINES $LINT"
        lint
        ;;
    test)
        setup_venv "$VENV" 2 "$CPU_TORCH" "$BASELINES $LINT"; build_cpu
        shift
        lint
        "$VENV/bin/python" -m pytest tests -q "$@"
        ;;
    cuda-build)
        setup_venv "$CUDA_VENV" 6 "$CUDA_TORCH"
        rm -rf build/cuda
        # nvcc on the PATH may be a wrapper script; ask it where the toolkit (and libcudart) lives
        CUDA_HOME=${CUDA_HOME:-$(cd /tmp && nvcc --dryrun -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=\(.*\)\/bin\/\.\.$/\1/p')}
        export CUDA_HOME
        FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
            "$CUDA_VENV/bin/python" setup.py -q build --build-base build/cuda
        PYTHONPATH=$(ls -d build/cuda/lib.*) "$CUDA_VENV/bin/python" .ci/cuda_build_check.py
        ;;
    *)
        echo "usage: ./run.sh main|test|lint|cuda-build [args passed on]" >&2
        exit 2
        ;;
esac
