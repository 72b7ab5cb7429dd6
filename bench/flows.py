"""Fused flow ops against the pure-PyTorch reference: per op, per flow step and the whole model.

    python bench/flows.py                       # small preset + paper shapes, CPU, one thread
    python bench/flows.py --json out.json       # the same rows as JSON
    python bench/flows.py --size 32 --blocks 3 --flows 8 --hidden 64 --batch 64   # the small preset

Each row times the fused and the reference version interleaved in one loop (fused, reference,
fused, ...) and reports the medians, so load from other processes hits both alike. `speedup` is
reference_ms / fused_ms. "compiled_ms" is torch.compile of the reference where it compiles.

The flow step and model rows also time the fused step's other mode, interleaved in the same loop
and against the same reference times: a whole affine step as one op driven from C++
(fused_step.FusedFlowStep.driver = True, csrc/flow_step.cpp) or the fused ops called one by one
from Python (driver = False). Its row is labelled "C++ driver on" or "C++ driver off", whichever is
not the default (off, on every device).

--bf16 adds a row for the fused model with precision="bf16" (the coupling networks' two hidden
convolutions in bfloat16), timed in the same loop.

--keep-freed-memory asks glibc (mallopt) to keep freed memory instead of handing it back to the
system, so a training step does not page-fault its activations in again every time (see
bench/RESULTS.md); it applies to every version alike.

Peak memory of a training step (forward + backward) is measured in a fresh child process per
configuration: on CUDA torch.cuda.max_memory_allocated, on CPU the growth of the process's peak
resident set over one step (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS
before), after a warm-up step at batch 1 has paid for the libraries. `saved_mb` is the bytes
autograd holds for the backward at the end of the forward (distinct storages seen by
saved_tensors_hooks): the activation memory that memory saving removes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from missingglow import Glow  # noqa: E402
from missingglow.flow import fused_step, layers, ops, ops_reference  # noqa: E402
from missingglow.training import allocator  # noqa: E402


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns, device, repeats, warmup=2):
    """Median ms of each of fns, timed alternately; fns[i] is None for a version that is absent."""
    times = [[] for _ in fns]
    for rep in range(warmup + repeats):
        for i, fn in enumerate(fns):
            if fn is None:
                continue
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if rep >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) if t else None for t in times]


def make_glow(impl, preset, device, memory_saving=False, seed=0, precision="fp32"):
    torch.manual_seed(seed)
    model = Glow(
        blocks=preset["blocks"],
        flows=preset["flows"],
        hidden=preset["hidden"],
        image_size=preset["size"],
        impl=impl,
        memory_saving=memory_saving,
        precision=precision,
    ).to(device)
    return model


def other_mode_label(device):
    return "C++ driver " + ("off" if fused_step.FusedFlowStep.driver_for(device) else "on")


def other_mode(module, device):
    """module with every fused flow step switched to the non-default mode (see the docstring)."""
    for m in module.modules():
        if isinstance(m, fused_step.FusedFlowStep):
            m.driver = not fused_step.FusedFlowStep.driver_for(device)
    return module


def glow_pair(preset, device, gen):
    ref = make_glow("reference", preset, device)
    x = images(preset, device, gen)
    with torch.no_grad():
        ref(x)  # data-dependent ActNorm init
    fast = make_glow("fused", preset, device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast, x


def images(preset, device, gen, batch=None):
    n = batch or preset["batch"]
    return (torch.rand(n, 3, preset["size"], preset["size"], generator=gen) - 0.5).to(device)


def train_step(model, x):
    def step():
        model.zero_grad(set_to_none=True)
        (-model.log_prob(x).mean()).backward()

    return step


def try_compile(fn, example):
    """torch.compile(fn), or None where it does not compile here."""
    try:
        compiled = torch.compile(fn)
        compiled(*example)
        return compiled
    except Exception as err:  # no C++ toolchain, an unsupported op, ...
        print(
            f"# torch.compile of the reference failed: {type(err).__name__}: {str(err)[:120]}",
            file=sys.stderr,
        )
        return None


def op_rows(preset, device, repeats, gen):
    """actnorm+1×1 conv and the coupling's elementwise part at the first block's step shape."""
    n, c, s = preset["batch"], 12, preset["size"] // 2
    shape = f"{n}x{c}x{s}x{s}"
    cl = torch.channels_last
    x = torch.randn(n, c, s, s, generator=gen).to(device).contiguous(memory_format=cl)
    h = torch.randn(n, c, s, s, generator=gen).to(device).contiguous(memory_format=cl)
    loc, scale = torch.randn(1, c, 1, 1).to(device), (torch.rand(1, c, 1, 1) + 0.5).to(device)
    weight = torch.linalg.qr(torch.randn(c, c))[0].to(device)
    rows = []

    def with_grad(*ts):
        return [t.detach().requires_grad_() for t in ts]

    an_args, an_args_g = (x, loc, scale, weight), with_grad(x, loc, scale, weight)
    cases = [
        (
            "actnorm+1x1conv",
            "forward",
            lambda: ops.actnorm_conv(*an_args),
            lambda: ops_reference.actnorm_conv(*an_args),
        ),
        (
            "actnorm+1x1conv",
            "inverse",
            lambda: ops.actnorm_conv_inverse(*an_args),
            lambda: ops_reference.actnorm_conv_inverse(*an_args),
        ),
        (
            "actnorm+1x1conv",
            "forward+backward",
            lambda: ops.actnorm_conv(*an_args_g).sum().backward(),
            lambda: ops_reference.actnorm_conv(*an_args_g).sum().backward(),
        ),
    ]

    xg, hg = with_grad(x, h)
    cases += [
        (
            "affine coupling",
            "forward",
            lambda: ops.coupling_step(x, h),
            lambda: ops_reference.coupling_step(x, h),
        ),
        (
            "affine coupling",
            "inverse",
            lambda: ops.coupling_step_inverse(x, h),
            lambda: ops_reference.coupling_step_inverse(x, h),
        ),
        (
            "affine coupling",
            "forward+backward",
            lambda: sum(t.sum() for t in ops.coupling_step(xg, hg)).backward(),
            lambda: sum(t.sum() for t in ops_reference.coupling_step(xg, hg)).backward(),
        ),
    ]
    for name, direction, fast, ref in cases:
        f_ms, r_ms = interleaved([fast, ref], device, repeats)
        rows.append(row(name, device, shape, direction, f_ms, r_ms))
    return rows


def step_rows(preset, device, repeats, gen, compile_ref):
    n, c, s, hidden = preset["batch"], 12, preset["size"] // 2, preset["hidden"]
    shape = f"{n}x{c}x{s}x{s} h{hidden}"
    ref = layers.FlowStep(c, hidden).to(device)
    x = torch.randn(n, c, s, s, generator=gen).to(device)
    with torch.no_grad():
        ref(x)
    fast = fused_step.FusedFlowStep(c, hidden).to(device)
    fast.load_state_dict(ref.state_dict())
    other = other_mode(fused_step.FusedFlowStep(c, hidden).to(device), device)
    other.load_state_dict(ref.state_dict())
    xg = x.detach().requires_grad_()
    rows = []
    compiled = try_compile(ref, (x,)) if compile_ref else None
    compiled_rev = try_compile(ref.reverse, (x,)) if compile_ref else None

    def fb(module):
        def run():
            module.zero_grad(set_to_none=True)
            y, logdet = module(xg)
            (y.sum() + logdet.sum()).backward()

        return run

    def add(direction, f_ms, r_ms, c_ms, o_ms):
        rows.append(row("flow step", device, shape, direction, f_ms, r_ms, c_ms))
        rows.append(
            row(f"flow step, {other_mode_label(device)}", device, shape, direction, o_ms, r_ms)
        )

    with torch.no_grad():
        add(
            "forward",
            *interleaved(
                [
                    lambda: fast(x),
                    lambda: ref(x),
                    None if compiled is None else (lambda: compiled(x)),
                    lambda: other(x),
                ],
                device,
                repeats,
            ),
        )
        add(
            "inverse",
            *interleaved(
                [
                    lambda: fast.reverse(x),
                    lambda: ref.reverse(x),
                    None if compiled_rev is None else (lambda: compiled_rev(x)),
                    lambda: other.reverse(x),
                ],
                device,
                repeats,
            ),
        )
    add(
        "forward+backward",
        *interleaved(
            [fb(fast), fb(ref), None if compiled is None else fb(compiled), fb(other)],
            device,
            repeats,
        ),
    )
    return rows


def model_rows(preset, device, repeats, gen, label, memory, bf16=False):
    shape = (
        f"{preset['batch']}x3x{preset['size']}x{preset['size']} "
        f"L{preset['blocks']} K{preset['flows']} h{preset['hidden']}"
    )
    ref, fast, x = glow_pair(preset, device, gen)
    saving = make_glow("fused", preset, device, memory_saving=True)
    saving.load_state_dict(ref.state_dict())
    other = other_mode(make_glow("fused", preset, device), device)
    other.load_state_dict(ref.state_dict())
    half = None
    if bf16:
        half = make_glow("fused", preset, device, precision="bf16")
        half.load_state_dict(ref.state_dict())
    n = preset["batch"]
    rows = []
    with torch.no_grad():
        for direction, run in (
            ("forward", lambda m: m.log_prob(x)),
            ("inverse", lambda m: m.sample(n)),
        ):
            f_ms, r_ms, o_ms = interleaved(
                [lambda: run(fast), lambda: run(ref), lambda: run(other)], device, repeats
            )
            rows.append(row(f"model {label}", device, shape, direction, f_ms, r_ms))
            rows.append(
                row(
                    f"model {label}, {other_mode_label(device)}",
                    device,
                    shape,
                    direction,
                    o_ms,
                    r_ms,
                )
            )
    f_ms, r_ms, s_ms, o_ms, h_ms = interleaved(
        [
            train_step(fast, x),
            train_step(ref, x),
            train_step(saving, x),
            train_step(other, x),
            None if half is None else train_step(half, x),
        ],
        device,
        repeats,
    )
    mem = {}
    if memory:
        for key, impl, ms in (
            ("fused", "fused", False),
            ("reference", "reference", False),
            ("memory_saving", "fused", True),
        ):
            mem[key] = measure_memory(preset, device, impl, ms)
    train = row(f"model {label}", device, shape, "forward+backward", f_ms, r_ms)
    ms_row = row(f"model {label}, memory saving", device, shape, "forward+backward", s_ms, r_ms)
    if mem:
        train.update(
            fused_peak_mb=mem["fused"]["peak_mb"],
            reference_peak_mb=mem["reference"]["peak_mb"],
            fused_saved_mb=mem["fused"]["saved_mb"],
            reference_saved_mb=mem["reference"]["saved_mb"],
        )
        ms_row.update(
            fused_peak_mb=mem["memory_saving"]["peak_mb"],
            reference_peak_mb=mem["reference"]["peak_mb"],
            fused_saved_mb=mem["memory_saving"]["saved_mb"],
            reference_saved_mb=mem["reference"]["saved_mb"],
        )
    other_row = row(
        f"model {label}, {other_mode_label(device)}", device, shape, "forward+backward", o_ms, r_ms
    )
    rows += [train, other_row, ms_row]
    if half is not None:
        rows.append(
            row(f"model {label}, bf16 hidden convs", device, shape, "forward+backward", h_ms, r_ms)
        )
    return rows


def row(name, device, shape, direction, fused_ms, reference_ms, compiled_ms=None):
    out = dict(
        name=name,
        device=device,
        shape=shape,
        direction=direction,
        fused_ms=round(fused_ms, 3),
        reference_ms=round(reference_ms, 3),
        speedup=round(reference_ms / fused_ms, 3),
    )
    if compiled_ms is not None:
        out["compiled_ms"] = round(compiled_ms, 3)
    return out


# --- peak memory, one child process per configuration ---------------------------------------------


def measure_memory(preset, device, impl, memory_saving):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        json.dumps(dict(preset=preset, device=device, impl=impl, memory_saving=memory_saving)),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _rss_reset_peak():
    """Current RSS, after resetting the kernel's peak-RSS mark (Linux: clear_refs 5).

    ru_maxrss would not do: a child forked from a big parent starts with the parent's peak.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status("VmRSS")


def _peak_rss():
    return _proc_status("VmHWM")


def memory_child(spec):
    preset, device = spec["preset"], spec["device"]
    gen = torch.Generator().manual_seed(0)
    model = make_glow(spec["impl"], preset, device, spec["memory_saving"])
    # a warm-up step at batch 1 loads every kernel and library before the measured step
    train_step(model, images(preset, device, gen, batch=1))()
    model.zero_grad(set_to_none=False)  # the gradients' own memory is not the activations'
    x = images(preset, device, gen)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_reset_peak()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -model.log_prob(x).mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_rss() - base
    saved = sum(storages.values())
    print(json.dumps(dict(peak_mb=round(peak / 2**20, 1), saved_mb=round(saved / 2**20, 1))))


# --- table ----------------------------------------------------------------------------------------

COLUMNS = [
    ("name", 36),
    ("device", 6),
    ("shape", 28),
    ("direction", 17),
    ("fused_ms", 10),
    ("reference_ms", 12),
    ("speedup", 8),
    ("compiled_ms", 11),
    ("fused_peak_mb", 13),
    ("reference_peak_mb", 17),
    ("fused_saved_mb", 14),
    ("reference_saved_mb", 18),
]


def coupling_build():
    return ops.coupling_simd()


def table(rows):
    cols = [(k, w) for k, w in COLUMNS if any(k in r for r in rows)]
    lines = [
        "| " + " | ".join(k for k, _ in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        cells = ("" if r.get(k) is None else str(r[k]) for k, _ in cols)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on CPU (default 1: with cores shared, more threads wait on each other)",
    )
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--size", type=int, default=32, help="small preset: image side")
    p.add_argument("--blocks", type=int, default=3, help="small preset: blocks")
    p.add_argument("--flows", type=int, default=8, help="small preset: flows per block")
    p.add_argument("--hidden", type=int, default=64, help="small preset: coupling width")
    p.add_argument("--batch", type=int, default=64, help="small preset: batch")
    p.add_argument(
        "--paper-flows",
        type=int,
        default=None,
        help="flows per block at the paper's shapes (default 32 on CUDA, 2 on CPU)",
    )
    p.add_argument("--paper-batch", type=int, default=16)
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc mallopt: keep freed memory (no page faults from re-growing the heap)",
    )
    p.add_argument(
        "--small-only", action="store_true", help="only the small preset's step and model rows"
    )
    p.add_argument(
        "--coupling-simd",
        metavar="BUILD",
        help="the build of the CPU coupling loops: avx512, avx2 or portable (default: "
        "the widest here)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help='also time the fused model with precision="bf16" (the coupling '
        "networks' hidden convolutions in bfloat16)",
    )
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not allocator.keep_freed_memory():
        sys.exit("mallopt refused the settings (not glibc?)")
    if args.coupling_simd:
        ops.coupling_simd(args.coupling_simd)
    if args.memory_child:
        return memory_child(json.loads(args.memory_child))
    gen = torch.Generator().manual_seed(0)
    small = dict(
        size=args.size, blocks=args.blocks, flows=args.flows, hidden=args.hidden, batch=args.batch
    )
    paper_flows = args.paper_flows or (32 if args.device == "cuda" else 2)
    paper = dict(size=64, blocks=4, flows=paper_flows, hidden=512, batch=args.paper_batch)
    rows = [] if args.small_only else op_rows(small, args.device, args.repeats, gen)
    rows += step_rows(small, args.device, args.repeats, gen, not args.no_compile)
    rows += model_rows(
        small, args.device, args.repeats, gen, "small", not args.no_memory, args.bf16
    )
    if not (args.skip_paper or args.small_only):
        rows += step_rows(paper, args.device, max(3, args.repeats // 3), gen, False)
        rows += model_rows(
            paper,
            args.device,
            max(3, args.repeats // 3),
            gen,
            "paper",
            not args.no_memory,
            args.bf16,
        )
    print(
        f"# torch {torch.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} thread(s), medians of {args.repeats} interleaved repeats, "
        f"CPU coupling loops {coupling_build()}"
        + (", glibc keeps freed memory" if args.keep_freed_memory else "")
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
