"""Imputation quality on held-out images whose clean originals are known, every method side by
side, and held-out bits/dim on masked images against their clean originals.

Per method (and alpha, for the paper's latent scaling): RMSE and PSNR inside the hole against the
clean original, and outside it against the input, pooled over all pixels of all finite results
(images in [0, 1], both sides quantised to the model's n_bits, so a perfect copy scores RMSE 0),
seconds per image, and the non-finite count. Methods:

- baselines: grey fill (the input itself), mean-colour fill, our harmonic fill, and the classical
  inpainting of scikit-image (biharmonic) and OpenCV (Telea, Navier–Stokes) when installed;
- the flow: Φ⁻¹(α·Φ(x)) alone, keeping the observed pixels, and that repeated `iterations` times;
- `invert`: latent-norm inversion (analysis/invert.py) at the given settings.
"""
import math
import os

import torch

from ..flow.preprocess import from_model, to_model
from ..render.images import finite_mask
from ..training.heldout import heldout_bits_per_dim

BASELINES = ("grey fill", "mean-colour fill", "harmonic fill")
INVERT = "invert"


def _errors(out, ref_in, ref_out, mask):
    """Pooled sums of squared errors inside/outside the mask over finite images, and counts."""
    ok = finite_mask(out)
    out, ref_in, ref_out, m = out[ok], ref_in[ok], ref_out[ok], mask[ok].expand(-1, 3, -1, -1)
    inside = ((out - ref_in) ** 2)[m].sum().item()
    outside = ((out - ref_out) ** 2)[~m].sum().item()
    return inside, int(m.sum()), outside, int((~m).sum()), int((~ok).sum())


class _Pool:
    def __init__(self):
        self.sse_in = self.n_in = self.sse_out = self.n_out = self.bad = self.images = 0
        self.seconds = 0.0

    def add(self, errors, count, seconds=0.0):
        self.seconds += seconds
        a, b, c, d, e = errors
        self.sse_in += a
        self.n_in += b
        self.sse_out += c
        self.n_out += d
        self.bad += e
        self.images += count

    def row(self, method, alpha):
        rmse_in = math.sqrt(self.sse_in / self.n_in) if self.n_in else float("nan")
        rmse_out = math.sqrt(self.sse_out / self.n_out) if self.n_out else float("nan")
        return {"method": method, "alpha": alpha, "rmse_in": rmse_in, "psnr_in": _psnr(rmse_in),
                "rmse_out": rmse_out, "psnr_out": _psnr(rmse_out), "nonfinite": self.bad,
                "images": self.images, "seconds_per_image": self.seconds / max(self.images, 1)}


def _psnr(rmse):
    if not math.isfinite(rmse):
        return float("nan")
    return float("inf") if rmse == 0 else -20 * math.log10(rmse)


def methods(iterations):
    names = ["flow", "flow + keep observed"]
    if iterations > 1:
        names.append(f"flow + keep observed ×{iterations}")
    return names


def evaluate(run, n, alphas, iterations=1, seed=0, batch=50, say=None, invert_options=None,
             classical=True, on_batch=None):
    """Scores and bits/dim on the first n held-out images of the checkpoint's dataset.

    `invert_options`: keyword arguments of `invert` (None: its defaults). `classical`: also score
    the installed classical baselines. Returns {"rows", "bpd", "images", "square", "count",
    "whole_split", "skipped": {baseline: why}, "examples": {method: first images}}."""
    import time

    from ..data.datasets import MaskedImages, dataset_of
    from ..data.masks import square_mask
    from . import baselines
    from .impute import restore
    from .invert import harmonic_fill, invert, observed_mean

    run.need_dataset()
    c = run.config
    cache = dataset_of(c, run.image_size)
    heldout = MaskedImages(cache, c["square"], c.get("squares", 1), c.get("seed", 0),
                           split="heldout")
    whole = n >= len(heldout)
    n = min(n, len(heldout))
    names = methods(iterations)
    extra, skipped = baselines.available() if classical else ([], {})
    pools = {(m, a): _Pool() for m in names for a in alphas}
    base = {b: _Pool() for b in (*BASELINES, *extra, INVERT)}
    examples = {}
    bits = run.n_bits
    for start in range(0, n, batch):
        js = list(range(start, min(start + batch, n)))
        masked, clean, positions = heldout.batch(js)
        mask = square_mask(positions, c["square"], run.image_size)           # (B, 1, S, S)
        x0 = to_model(masked, bits, run.model.in_channels)
        ref_in = from_model(to_model(clean, bits, run.model.in_channels), bits)
        ref_out = from_model(x0, bits)

        def score(pool, make, key):
            began = time.perf_counter()
            out = make()
            pool.add(_errors(out, ref_in, ref_out, mask), len(js), time.perf_counter() - began)
            if start == 0:
                examples.setdefault(key, out[:8])

        examples.setdefault("input", ref_out[:8])
        examples.setdefault("original", ref_in[:8])
        score(base["grey fill"], lambda: ref_out, "grey fill")
        score(base["mean-colour fill"],
              lambda: torch.where(mask, observed_mean(ref_out, mask), ref_out), "mean-colour fill")
        score(base["harmonic fill"], lambda: harmonic_fill(ref_out, mask), "harmonic fill")
        for name in extra:
            score(base[name], lambda: baselines.inpaint(name, ref_out, mask), name)
        for alpha in alphas:
            score(pools[("flow", alpha)], lambda: restore(run.model, masked, [alpha], bits)[0],
                  ("flow", alpha))
            score(pools[("flow + keep observed", alpha)],
                  lambda: restore(run.model, masked, [alpha], bits, mask)[0],
                  ("flow + keep observed", alpha))
            if iterations > 1:
                score(pools[(names[2], alpha)],
                      lambda: restore(run.model, masked, [alpha], bits, mask, iterations)[0],
                      (names[2], alpha))
        def inverted():
            return from_model(invert(run.model, x0, mask, **(invert_options or {}))[0][0], bits)
        score(base[INVERT], inverted, INVERT)
        if say:
            say(f"evaluated {js[-1] + 1}/{n} held-out images")
        if on_batch:
            on_batch(len(js))
    rows = [pools[(m, a)].row(m, a) for m in names for a in alphas]
    rows += [base[b].row(b, None) for b in (*BASELINES, *extra, INVERT)]
    bpd = heldout_bits_per_dim(run.model, heldout, bits, seed, n, batch)
    return {"rows": rows, "bpd": bpd, "images": n, "square": c["square"],
            "count": c.get("squares", 1), "whole_split": whole, "skipped": skipped,
            "examples": examples}


def best_alpha(rows, method):
    scored = [r for r in rows if r["method"] == method and math.isfinite(r["rmse_in"])]
    return min(scored, key=lambda r: r["rmse_in"]) if scored else None


def format_report(result):
    rows = result["rows"]
    whole = " (the whole held-out split)" if result.get("whole_split") else ""
    lines = [f"held-out images: {result['images']}{whole}, {result['count']} square(s) of "
             f"{result['square']} px each; RMSE/PSNR on [0, 1] pixels, pooled over finite results",
             f"{'method':<30}{'alpha':>6}{'RMSE in':>10}{'PSNR in':>9}{'RMSE out':>10}"
             f"{'PSNR out':>10}{'non-finite':>12}{'s/image':>10}"]
    for r in rows:
        alpha = f"{r['alpha']:g}" if r["alpha"] is not None else "—"
        lines.append(f"{r['method']:<30}{alpha:>6}{r['rmse_in']:>10.4f}{r['psnr_in']:>9.2f}"
                     f"{r['rmse_out']:>10.4f}{r['psnr_out']:>10.2f}{r['nonfinite']:>12d}"
                     f"{r['seconds_per_image']:>10.4f}")
    baselines = {r["method"]: r for r in rows if r["alpha"] is None}
    for method in dict.fromkeys(r["method"] for r in rows if r["alpha"] is not None):
        best = best_alpha(rows, method)
        if best:
            lines.append(f"best alpha for {method}: {best['alpha']:g} (RMSE in the square "
                         f"{best['rmse_in']:.4f}; grey fill "
                         f"{baselines['grey fill']['rmse_in']:.4f}, "
                         f"mean-colour fill {baselines['mean-colour fill']['rmse_in']:.4f})")
    b = result["bpd"]
    bad = f", {b['nonfinite']} image pairs with non-finite log p left out" if b["nonfinite"] else ""
    lines.append(f"held-out bits/dim: masked {b['masked']:.4f}, clean {b['clean']:.4f}, "
                 f"gap (masked − clean) {b['gap']:+.4f}{bad}")
    return "\n".join(lines)


def report_csv(path, result):
    from ..atomic import write_csv

    header = ["method", "alpha", "rmse_in", "psnr_in", "rmse_out", "psnr_out", "nonfinite",
              "images", "seconds_per_image"]
    body = [[r["method"], "" if r["alpha"] is None else r["alpha"], f"{r['rmse_in']:.6f}",
             f"{r['psnr_in']:.4f}", f"{r['rmse_out']:.6f}", f"{r['psnr_out']:.4f}", r["nonfinite"],
             r["images"], f"{r['seconds_per_image']:.6f}"] for r in result["rows"]]
    b = result["bpd"]
    body += [[f"bits/dim {k}", "", f"{b[key]:.6f}", "", "", "", b["nonfinite"], b["images"], ""]
             for k, key in (("masked", "masked"), ("clean", "clean"),
                            ("gap (masked - clean)", "gap"))]
    return write_csv(path, header, body)


def report_json(path, result):
    """Every row (the CSV's fields), the bits/dim and the baselines skipped, as one JSON file."""
    from ..atomic import write_json

    keys = ("method", "alpha", "rmse_in", "psnr_in", "rmse_out", "psnr_out", "nonfinite", "images",
            "seconds_per_image")

    def clean(v):
        return v if not isinstance(v, float) or math.isfinite(v) else str(v)

    rows = [{k: clean(r[k]) for k in keys} for r in result["rows"]]
    return write_json(path, {"rows": rows, "bpd": {k: clean(v) for k, v in result["bpd"].items()},
                             "images": result["images"], "square": result["square"],
                             "skipped": result.get("skipped", {})})


def comparison_sheet(result, min_tile=48):
    """The same held-out images restored by each method (the α methods at their best α), a row
    per method (PIL image)."""
    from ..render.sheets import labelled_grid

    examples, rows = result["examples"], result["rows"]
    keys = ["input"]
    for key in examples:
        if isinstance(key, tuple):
            best = best_alpha(rows, key[0])
            if best is not None and best["alpha"] == key[1]:
                keys.append(key)
        elif key not in ("input", "original"):
            keys.append(key)
    keys.append("original")
    labels = [f"{k[0]}, α={k[1]:g}" if isinstance(k, tuple) else k for k in keys]
    return labelled_grid([examples[k] for k in keys], labels, min_tile)[0]


def report_plot(result):
    from ..render.plot import Series, line_chart, stack

    rows = result["rows"]
    flows = list(dict.fromkeys(r["method"] for r in rows if r["alpha"] is not None))
    alphas = sorted({r["alpha"] for r in rows if r["alpha"] is not None})
    panels = []
    for key, title in (("rmse_in", "RMSE inside the square (vs the clean original)"),
                       ("rmse_out", "RMSE outside the square (vs the input)")):
        series = [Series(m, [r["alpha"] for r in rows if r["method"] == m],
                         [r[key] for r in rows if r["method"] == m]) for m in flows]
        for b in dict.fromkeys(r["method"] for r in rows if r["alpha"] is None):
            value = next(r[key] for r in rows if r["method"] == b)
            series.append(Series(b, [alphas[0], alphas[-1]], [value, value], dashed=True,
                                 markers=False))
        bad = sum(r["nonfinite"] for r in rows)
        panels.append(line_chart(series, title=title, xlabel="alpha", ylabel="RMSE",
                                 note=f"{bad} non-finite results left out" if bad else None))
    return stack(panels)


def write_report(result, out, json_path=None):
    """The CSV, the plot and the comparison sheet into folder `out`, and with `json_path` the JSON
    too; returns the paths written."""
    from ..render.images import save_png

    paths = [report_csv(os.path.join(out, "evaluation.csv"), result),
             save_png(report_plot(result), os.path.join(out, "evaluation.png")),
             save_png(comparison_sheet(result), os.path.join(out, "comparison.png"))]
    if json_path:
        paths.append(report_json(json_path, result))
    return paths
