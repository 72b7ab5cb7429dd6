#!/usr/bin/env bash
# The missing-data comparison of docs/missing-data.md: a naive model (the paper's: trained on the
# holed images as they are), a --complete model (the holes as missing values, re-filled from the
# model) and a clean-trained model (the upper bound), at the small preset, on the low-detail
# synthetic faces and on 16-px crops of scikit-image's photos; then every measurement the page
# reports, and the page's tables (experiments/missing_data.py).
#
#   experiments/missing_data.sh [ROOT]     # ROOT: where runs and data go (default: runs/missing-data)
#   experiments/missing_data.sh ROOT measure faces naive clean   # one stage (train_all, measure,
#                                                                # conditional) by hand
#
# Each training runs at one thread (two side by side fill a 2-core machine); a step that finds its
# output already there is skipped, so the script resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/missing-data}
MG=${MG:-.venv/bin/missingglow}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$ROOT"
CROPS=$ROOT/photo-crops-16
[ -f "$CROPS/crop-07999.png" ] || "$PY" bench/photo_crops.py --out "$CROPS" -n 8000 --size 16

train() {  # train NAME [OPTIONS]: one small-preset run, timed
    local name=$1; shift
    [ -f "$ROOT/$name/seconds" ] && return
    local start; start=$(date +%s)
    if [ -f "$ROOT/$name/latest" ]; then  # cut short earlier: resumed (and timed from here)
        "$MG" train --resume "$ROOT/$name"
    else
        "$MG" train --out "$ROOT/$name" "$@"
    fi
    echo $(( $(date +%s) - start )) > "$ROOT/$name/seconds"
}
train_all() {
    # two at a time: each pair shares the machine alike
    train faces-naive & train faces-clean --square 0 & wait
    train photos-naive --data "$CROPS" & train photos-clean --data "$CROPS" --square 0 & wait
    train faces-complete --complete & train photos-complete --data "$CROPS" --complete & wait
}

measure() {  # measure DATA KIND...: Table 1 and the hole families (and for naive / complete
             # the calibration) of the runs DATA-KIND
    local data=$1 kind run; shift
    for kind in "$@"; do
        run=$ROOT/$data-$kind
        sq=(); [ "$kind" = clean ] && sq=(--square 5)
        # Table 1 at every t up to 1.0 (the square size given: the counter's best setting)
        [ -f "$run/table1/table1.csv" ] || "$MG" squares --checkpoint "$run" -t 0.1:1.0:0.1 -n 50 \
            --square 5 --out "$run/table1"
        # every restoring method on the four hole families, 100 held-out images
        [ -f "$run/families.json" ] || "$MG" evaluate --checkpoint "$run" "${sq[@]}" -n 100 \
            --samples 0 --out "$run/families" --json "$run/families.json"
        [ "$kind" = clean ] && continue
        # the posterior's calibration in the training square: 100 images, 19 draws each
        [ -f "$run/calibration.json" ] || "$MG" evaluate --checkpoint "$run" -n 100 --masks square \
            --samples 19 --no-classical --out "$run/calibration" --json "$run/calibration.json"
    done
}

conditional() {  # conditional DATA: grey fills among posterior completions, naive and complete
    local data=$1
    [ -f "$ROOT/conditional-$data/conditional_table1.csv" ] || "$MG" squares --posterior \
        --checkpoint "$ROOT/$data-naive" --checkpoint "$ROOT/$data-complete" -t 0.3:1.0:0.1 \
        -n 50 --out "$ROOT/conditional-$data"
}

if [ $# -gt 1 ]; then  # one stage by hand, e.g. `missing_data.sh ROOT measure faces naive`
    shift; "$@"; exit
fi
train_all
# the two datasets side by side, one core each
(measure faces naive clean complete && conditional faces) &
(measure photos naive clean complete && conditional photos) &
wait
# the conditional Table 1 again with the chains started at the grey input, not at invert's MAP
[ -f "$ROOT/conditional-start.md" ] || "$PY" experiments/conditional_start.py \
    "$ROOT"/{faces,photos}-{naive,complete} > "$ROOT/conditional-start.md"
"$PY" experiments/missing_data.py "$ROOT"
