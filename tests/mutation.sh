#!/usr/bin/env bash
# Mutation testing with mutmut 3 (not run by CI; docs/mutation.md holds the last report).
#
#   tests/mutation.sh [TARGET ...]     TARGET: loss pooling heldout checkpoint guard restore
#                                      masks quantise counter (default: all of them)
#
# The targets: loss = bits_per_dim (flow/preprocess.py); pooling = _errors, _Pool and _psnr
# (analysis/evaluate.py); heldout = training/heldout.py; checkpoint = training/checkpoint.py;
# guard = the non-finite guard: the device-side verdict and sums of training/step.py (StepLog,
# TrainStep), the masked update of training/adam.py, and training/loop.py's account, roll_back
# and Distributed.all_finite; restore = completion/invert.py; masks = data/masks.py and the image
# and mask reading of data/images.py; quantise = flow/preprocess.py but bits_per_dim;
# counter = analysis/squares.py.
#
# It copies the checkout's working tree (tracked and untracked, not ignored files; with
# MUTATION_REV=<commit>, that commit instead) and the built missingglow._C to build/mutation,
# runs mutmut there with [tool.mutmut] of pyproject.toml, and writes the summary with every
# surviving mutant's diff to build/mutation/report.md. In that folder `mutmut show NAME` and
# `mutmut browse` work on the result. mutmut 3 leaves decorated functions alone, so in the copy
# heldout_bits_per_dim's @torch.no_grad() and invert's @torch.enable_grad() become a `with` of
# the same context around the function's body (the same behaviour) so that they are mutated too.
#
# Environment: PYTHON (default .venv/bin/python, which must have mutmut: pip install mutmut),
# MUTATION_JOBS (parallel mutants, default the number of CPUs), MUTATION_DIR (default
# build/mutation). OMP_NUM_THREADS defaults to 1: each mutant is a small CPU test run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${MUTATION_DIR:-$ROOT/build/mutation}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MUTMUT="$(dirname "$PY")/mutmut"
[ -x "$MUTMUT" ] || { echo "mutmut not found beside $PY: pip install mutmut" >&2; exit 2; }
ls missingglow/_C*.so >/dev/null 2>&1 || {
    echo "missingglow._C is not built: pip install --no-build-isolation -e ." >&2; exit 2; }

PARTS=(missingglow tests pytest.ini pyproject.toml)
rm -rf "$WORK"
mkdir -p "$WORK"
if [ -n "${MUTATION_REV:-}" ]; then
    git archive "$MUTATION_REV" -- "${PARTS[@]}" | tar -x -C "$WORK"
    SOURCE="commit $(git rev-parse --short "$MUTATION_REV")"
else
    git ls-files -z --cached --others --exclude-standard -- "${PARTS[@]}" \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$WORK"
    SOURCE="the working tree at commit $(git rev-parse --short HEAD)"
    git diff --quiet HEAD -- "${PARTS[@]}" || SOURCE="$SOURCE, with uncommitted changes"
fi
cp missingglow/_C*.so "$WORK/missingglow/"

cd "$WORK"
exec "$PY" - "$MUTMUT" "${MUTATION_JOBS:-$(getconf _NPROCESSORS_ONLN)}" "$SOURCE" \
    "$@" <<'PYTHON'
import ast
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

mutmut, jobs, source, *wanted = sys.argv[1:]

TARGETS = {  # name: (files, mutant-name globs; they match the function's own name too), in the
    # order they run: the counter last, its bank tests make it the slowest by far
    "loss": (["missingglow/flow/preprocess.py"], ["missingglow.flow.preprocess.x_bits_per_dim*"]),
    "pooling": (["missingglow/analysis/evaluate.py"],
                ["missingglow.analysis.evaluate.x__errors*",
                 "missingglow.analysis.evaluate.xǁ_Poolǁ*",
                 "missingglow.analysis.evaluate.x__psnr*"]),
    "heldout": (["missingglow/training/heldout.py"], ["missingglow.training.heldout.*"]),
    "checkpoint": (["missingglow/training/checkpoint.py"], ["missingglow.training.checkpoint.*"]),
    "guard": (["missingglow/training/loop.py", "missingglow/training/step.py",
               "missingglow/training/adam.py"],
              ["missingglow.training.loop.x_roll_back*", "missingglow.training.loop.x_account*",
               "missingglow.training.loop.xǁDistributedǁall_finite*",
               "missingglow.training.step.xǁStepLogǁ*", "missingglow.training.step.xǁTrainStepǁ*",
               "missingglow.training.adam.*"]),
    "restore": (["missingglow/completion/invert.py"], ["missingglow.completion.invert.*"]),
    "masks": (["missingglow/data/masks.py", "missingglow/data/images.py"],
              ["missingglow.data.masks.*", "missingglow.data.images.*"]),
    "quantise": (["missingglow/flow/preprocess.py"],
                 [f"missingglow.flow.preprocess.x_{f}*" for f in (
                     "quantize", "bin_representatives", "dequantize", "to_unit_range", "luma",
                     "match_channels", "to_model", "from_model")]),
    "counter": (["missingglow/analysis/squares.py"], ["missingglow.analysis.squares.*"]),
}
wanted = wanted or list(TARGETS)
unknown = [w for w in wanted if w not in TARGETS]
if unknown:
    sys.exit(f"unknown target(s) {unknown}; choose from {' '.join(TARGETS)}")


CONTEXTS = ("torch.no_grad()", "torch.enable_grad()")


def undecorate(path):
    """@torch.no_grad() (or @torch.enable_grad()) on a function → a `with` of that context around
    its body (after the docstring), so that mutmut, which skips decorated functions, mutates it."""
    lines = Path(path).read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    found = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             and [ast.unparse(d) for d in f.decorator_list] in [[c] for c in CONTEXTS]]
    for f in sorted(found, key=lambda f: -f.lineno):
        body = f.body[1:] if (isinstance(f.body[0], ast.Expr)
                              and isinstance(f.body[0].value, ast.Constant)) else f.body
        first, last = body[0].lineno - 1, f.end_lineno
        strings = [n for n in ast.walk(f) if isinstance(n, ast.Constant)
                   and isinstance(n.value, str) and n.lineno != n.end_lineno
                   and n.lineno - 1 >= first]
        assert not strings, f"{path}: a multi-line string in {f.name} would change when indented"
        indent = " " * body[0].col_offset
        context = ast.unparse(f.decorator_list[0])
        lines[first:last] = [f"{indent}with {context}:\n"] + [
            ("    " + line) if line.strip() else line for line in lines[first:last]]
        d = f.decorator_list[0]
        del lines[d.lineno - 1:d.end_lineno]
    Path(path).write_text("".join(lines))
    ast.parse("".join(lines))
    return [f.name for f in found]


def path_of(key, files):
    """The file, of a target's files, that holds the function of mutant `key`."""
    return next(f for f in files if key.startswith(f[:-len(".py")].replace("/", ".") + "."))


def meta():
    keys = {}
    for f in Path("mutants").rglob("*.py.meta"):
        keys.update(json.loads(f.read_text())["exit_code_by_key"])
    return keys


def run(names):
    began = time.time()
    subprocess.run([mutmut, "run", "--max-children", jobs, *names], check=True)
    return time.time() - began


began = time.time()
print("in the copy,", "undecorated:", *(undecorate(f) for f in (
    "missingglow/training/heldout.py", "missingglow/completion/invert.py")))
seconds = {}
for t in [t for t in TARGETS if t in wanted]:
    # the first run generates every mutant and records which tests call which function
    seconds[t] = run(TARGETS[t][1])

from mutmut.mutation.diff_apply import get_diff_for_mutant  # noqa: E402
from mutmut.stats import status_by_exit_code  # noqa: E402

exit_codes = meta()
selected = {t: sorted(k for k in exit_codes if any(fnmatch.fnmatch(k, g) for g in TARGETS[t][1]))
            for t in wanted}
out = [f"# mutmut report on {source}: {time.strftime('%Y-%m-%d %H:%M')}, "
       f"{time.time() - began:.0f} s with {jobs} jobs", ""]
for t in wanted:
    status = {k: status_by_exit_code[exit_codes[k]] for k in selected[t]}
    counts = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    out.append(f"## {t} ({', '.join(TARGETS[t][0])}): {len(status)} mutants in "
               f"{seconds[t]:.0f} s: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for k, s in status.items():
        if s != "killed":
            out += ["", f"### {k}: {s}", "```diff",
                    get_diff_for_mutant(k, path=path_of(k, TARGETS[t][0])), "```"]
    out.append("")
Path("report.md").write_text("\n".join(out))
print("\n".join(line for line in out if line.startswith("#")))
print(f"report with the survivors' diffs: {Path('report.md').resolve()}")
PYTHON
