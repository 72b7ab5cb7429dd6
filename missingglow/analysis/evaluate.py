"""Imputation quality on held-out images whose clean originals are known, every method side by
side, on several hole families, and held-out bits/dim on masked images against their clean
originals.

Per method (and alpha, for the paper's latent scaling) and hole family (data/mask_families.py;
`square` is the training square, where today's table comes from):

- RMSE and PSNR inside the hole against the clean original, and outside it against the input,
  pooled over all pixels of all finite results (images in [0, 1], both sides quantised to the
  model's n_bits, so a perfect copy scores RMSE 0), seconds per image, and the non-finite count;
- per image, then averaged over the finite results (GlowIP's protocol, analysis/calibration.py):
  RMSE, PSNR and SSIM inside the hole, and PSNR over the whole image with the observed pixels
  pasted back from the original;
- as a forecast of the hole's values: CRPS and best-of-N RMSE (a point method is one sample: its
  CRPS is the mean absolute error), and for a sampler of N draws the coverage and mean width of
  its central 50 % and 90 % intervals (calibration.py's type 6 quantiles). A sampler's point
  scores are those of its draws' per-pixel mean.

Methods:

- baselines: grey fill (the input itself), mean-colour fill, our harmonic fill, and the classical
  inpainting of scikit-image (biharmonic) and OpenCV (Telea, Navier–Stokes) when installed;
- the flow: Φ⁻¹(α·Φ(x)) alone, keeping the observed pixels, and that repeated `iterations` times;
- `invert`: latent-norm inversion (completion/invert.py) at the given settings;
- `posterior (MALA)`, with samples: draws from the posterior over latents given the observed
  pixels (completion/posterior.py), started at invert's solution; its time includes invert's.

Holes other than the training square are filled with the split's grey, and every family is scored
on the same held-out images.
"""

import collections
import math
import os
import time

import torch

from ..completion.invert import DEFAULTS as INVERT_DEFAULTS
from ..errors import UserError
from ..flow.preprocess import from_model, to_model
from ..render.images import finite_mask
from ..seeding import generator
from ..training.heldout import heldout_bits_per_dim
from .calibration import point_scores, sample_scores
from .impute import SAMPLING

BASELINES = ("grey fill", "mean-colour fill", "harmonic fill")
INVERT = "invert"
POSTERIOR = "posterior (MALA)"
POINT_SCORES = ("rmse_hole", "psnr_hole", "ssim_hole", "psnr_whole")  # point_scores' per image
SAMPLER_SCORES = ("coverage_50", "width_50", "coverage_90", "width_90", "crps", "best_rmse")
NEW_SCORES = (*POINT_SCORES, *SAMPLER_SCORES)
INTERVALS = ("coverage_50", "width_50", "coverage_90", "width_90")  # None for a point method
# sized for -n 100 on four families on a CPU in minutes (docs/imputation.md); impute's sampler
# runs longer
SAMPLING_DEFAULTS = dict(SAMPLING, warmup=40, steps=40)
SAMPLES = 19  # the fewest draws whose central 50 % and 90 % intervals sit on whole ranks


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
        self.scores = collections.defaultdict(list)  # per-image scores of finite results
        self.samples = 1

    def add(self, errors, count, seconds=0.0):
        self.seconds += seconds
        a, b, c, d, e = errors
        self.sse_in += a
        self.n_in += b
        self.sse_out += c
        self.n_out += d
        self.bad += e
        self.images += count

    def add_scores(self, out, truth, mask, draws=None):
        """Per-image scores of the finite results `out` (B, 3, S, S): point scores, and as a
        forecast `draws` (N, B, 3, S, S), or `out` itself as one draw."""
        ok = finite_mask(out)
        draws = out[None] if draws is None else draws
        if draws.shape[0] > 1:
            ok &= finite_mask(draws.transpose(0, 1))
        self.samples = draws.shape[0]
        point = point_scores(out[ok], truth[ok], mask[ok])
        for key, name in zip(POINT_SCORES, ("rmse", "psnr", "ssim", "psnr_whole"), strict=True):
            self.scores[key].append(point[name])
        for key, value in sample_scores(draws[:, ok], truth[ok], mask[ok]).items():
            self.scores[key].append(value)

    def row(self, method, alpha):
        rmse_in = math.sqrt(self.sse_in / self.n_in) if self.n_in else float("nan")
        rmse_out = math.sqrt(self.sse_out / self.n_out) if self.n_out else float("nan")
        row = {
            "method": method,
            "alpha": alpha,
            "rmse_in": rmse_in,
            "psnr_in": _psnr(rmse_in),
            "rmse_out": rmse_out,
            "psnr_out": _psnr(rmse_out),
            "nonfinite": self.bad,
            "images": self.images,
            "seconds_per_image": self.seconds / max(self.images, 1),
        }
        for key in NEW_SCORES:
            values = torch.cat(self.scores[key]) if self.scores[key] else torch.zeros(0)
            row[key] = values.mean().item() if values.numel() else float("nan")
        for key in INTERVALS if self.samples == 1 else ():
            row[key] = None  # one sample has no interval
        row["samples"] = self.samples
        return row


def _psnr(rmse):
    if not math.isfinite(rmse):
        return float("nan")
    return float("inf") if rmse == 0 else -20 * math.log10(rmse)


def methods(iterations):
    names = ["flow", "flow + keep observed"]
    if iterations > 1:
        names.append(f"flow + keep observed ×{iterations}")
    return names


def evaluate(
    run,
    n,
    alphas,
    iterations=1,
    seed=0,
    batch=50,
    say=None,
    invert_options=None,
    classical=True,
    on_batch=None,
    masks=("square",),
    samples=0,
    posterior_options=None,
):
    """Scores and bits/dim on the first n held-out images of the checkpoint's dataset.

    `invert_options`: keyword arguments of `invert` (None: its defaults). `classical`: also score
    the installed classical baselines. `masks`: the hole families (data/mask_families.py) to score
    every method on, the same images for each. `samples` (0: none): posterior draws per image,
    scored as a sampler; `posterior_options`: the sampler's temperature, warmup and steps
    (SAMPLING_DEFAULTS). `on_batch(k)` is called after each family's batch of k images.
    Returns {"rows" (the square family's, [] without it), "families": {family: {"rows",
    "hole_share", "examples"}}, "masks", "posterior", "bpd", "images", "square", "count",
    "whole_split", "skipped": {baseline: why}, "examples" (the square family's, else the first's):
    {method: first images}}."""
    from ..data.datasets import MaskedImages, dataset_of
    from ..data.mask_families import FAMILIES
    from . import baselines

    masks = tuple(masks)
    unknown = [m for m in masks if m not in FAMILIES]
    if unknown or not masks or len(set(masks)) != len(masks):
        raise UserError(
            f"mask families are distinct names from {','.join(FAMILIES)}, not "
            f"{','.join(masks) or 'nothing'}"
        )
    if samples < 0:
        raise UserError(f"samples must be 0 (no sampler) or more, not {samples}")
    sampling = {**SAMPLING_DEFAULTS, **(posterior_options or {})}
    gamma = {**INVERT_DEFAULTS, **(invert_options or {})}["gamma"]
    if samples and not (
        gamma > 0
        and sampling["temperature"] > 0
        and sampling["warmup"] >= 0
        and sampling["steps"] >= 0
    ):
        raise UserError(
            f"the posterior needs gamma and temperature above 0 and no negative "
            f"step counts, not gamma={gamma}, {sampling}"
        )
    run.need_dataset()
    c = run.config
    cache = dataset_of(c, run.image_size)
    heldout = MaskedImages(
        cache, c["square"], c.get("squares", 1), c.get("seed", 0), split="heldout"
    )
    whole = n >= len(heldout)
    n = min(n, len(heldout))
    extra, skipped = baselines.available() if classical else ([], {})
    scorer = _Scorer(
        run, alphas, iterations, extra, invert_options or {}, samples, dict(sampling, gamma=gamma)
    )
    families = {family: _Family() for family in masks}
    for start in range(0, n, batch):
        js = list(range(start, min(start + batch, n)))
        for family, state in families.items():
            masked, clean, mask = _family_batch(family, heldout, js, seed)
            gen = generator(seed, "evaluate-posterior", family, start)
            scorer.score(state, masked, clean, mask, gen, first=start == 0)
            if on_batch:
                on_batch(len(js))
        if say:
            say(f"evaluated {js[-1] + 1}/{n} held-out images")
    names = scorer.names()
    out = {}
    for family, state in families.items():
        rows = [state.pools[key].row(*key) for key in names]
        for r in rows:
            r["family"] = family
        out[family] = {"rows": rows, "hole_share": state.hole_share(), "examples": state.examples}
    bpd = heldout_bits_per_dim(run.model, heldout, run.n_bits, seed, n, batch)
    first = "square" if "square" in out else masks[0]
    posterior = None
    if samples:
        posterior = dict(
            sampling,
            samples=samples,
            gamma=gamma,
            acceptance={f: s.acceptance() for f, s in families.items()},
        )
    return {
        "rows": out["square"]["rows"] if "square" in out else [],
        "families": out,
        "masks": list(masks),
        "posterior": posterior,
        "bpd": bpd,
        "images": n,
        "square": c["square"],
        "count": c.get("squares", 1),
        "whole_split": whole,
        "skipped": skipped,
        "examples": out[first]["examples"],
    }


def _family_batch(family, heldout, js, seed):
    """(masked, clean, mask) of held-out items js with holes of `family`: the training square(s)
    as the split places them, else the family's mask filled with the split's grey."""
    from ..data.mask_families import family_masks
    from ..data.masks import square_mask

    masked, clean, positions = heldout.batch(js)
    size = clean.shape[-1]
    if family == "square":
        return masked, clean, square_mask(positions, heldout.square, size)
    mask = family_masks(family, seed, [heldout.indices[j] for j in js], size)
    return clean.masked_fill(mask.expand_as(clean), heldout.fill), clean, mask


class _Family:
    """One hole family's pools, examples, hole sizes and sampler acceptance."""

    def __init__(self):
        self.pools = collections.defaultdict(_Pool)
        self.examples = {}
        self.shares, self.accepted = [], []

    def hole_share(self):
        return torch.cat(self.shares).mean().item() if self.shares else float("nan")

    def acceptance(self):
        return torch.cat(self.accepted).nanmean().item() if self.accepted else float("nan")


class _Scorer:
    """Every method on one batch of one family, added to the family's pools."""

    def __init__(self, run, alphas, iterations, extra, invert_options, samples, sampling):
        self.run, self.alphas, self.iterations, self.extra = run, alphas, iterations, extra
        self.invert_options, self.samples, self.sampling = invert_options, samples, sampling

    def names(self):
        keys = [(m, a) for m in methods(self.iterations) for a in self.alphas]
        keys += [(b, None) for b in (*BASELINES, *self.extra, INVERT)]
        return keys + ([(POSTERIOR, None)] if self.samples else [])

    def score(self, state, masked, clean, mask, gen, first):
        from ..completion.invert import harmonic_fill, invert, observed_mean
        from . import baselines
        from .impute import restore

        run, bits, channels = self.run, self.run.n_bits, self.run.model.in_channels
        x0 = to_model(masked, bits, channels)
        truth = from_model(to_model(clean, bits, channels), bits)
        ref_out = from_model(x0, bits)
        state.shares.append(mask.flatten(1).double().mean(1))

        def add(key, out, seconds, draws=None):
            pool = state.pools[key]
            pool.add(_errors(out, truth, ref_out, mask), len(out), seconds)
            pool.add_scores(out, truth, mask, draws)
            if first:
                state.examples.setdefault(key[0] if key[1] is None else key, out[:8])

        def timed(key, make):
            began = time.perf_counter()
            out = make()
            add(key, out, time.perf_counter() - began)

        if first:
            state.examples.setdefault("input", ref_out[:8])
            state.examples.setdefault("original", truth[:8])
        timed(("grey fill", None), lambda: ref_out)
        timed(
            ("mean-colour fill", None),
            lambda: torch.where(mask, observed_mean(ref_out, mask), ref_out),
        )
        timed(("harmonic fill", None), lambda: harmonic_fill(ref_out, mask))
        for name in self.extra:
            timed((name, None), lambda: baselines.inpaint(name, ref_out, mask))
        names = methods(self.iterations)
        for alpha in self.alphas:
            timed((names[0], alpha), lambda: restore(run.model, masked, [alpha], bits)[0])
            timed((names[1], alpha), lambda: restore(run.model, masked, [alpha], bits, mask)[0])
            if self.iterations > 1:
                timed(
                    (names[2], alpha),
                    lambda: restore(run.model, masked, [alpha], bits, mask, self.iterations)[0],
                )
        began = time.perf_counter()
        best, _, latent = invert(run.model, x0, mask, return_latent=True, **self.invert_options)
        map_seconds = time.perf_counter() - began
        add((INVERT, None), from_model(best[0], bits), map_seconds)
        if self.samples:
            from ..completion.posterior import posterior_samples

            began = time.perf_counter()
            draws, diagnostics = posterior_samples(
                run.model,
                x0,
                mask,
                self.samples,
                gamma=self.sampling["gamma"],
                temperature=self.sampling["temperature"],
                warmup=self.sampling["warmup"],
                steps=self.sampling["steps"],
                generator=gen,
                start=latent[0],
            )
            seconds = map_seconds + time.perf_counter() - began
            draws = from_model(draws.flatten(0, 1), bits).view(self.samples, *truth.shape)
            state.accepted.append(diagnostics.acceptance.flatten())
            mean = torch.where(mask, draws.mean(0), ref_out)  # observed pixels exact
            add((POSTERIOR, None), mean, seconds, draws)
            if first:
                for k in range(min(2, self.samples)):
                    state.examples.setdefault(f"{POSTERIOR}, draw {k + 1}", draws[k, :8])
                state.examples.setdefault(f"{POSTERIOR}, spread", _spreads(draws[:, :8]))


def _spreads(draws):
    """Per image, the draws' per-pixel standard deviation as grey, 1 at the image's largest."""
    from .impute import spread_map

    if draws.shape[0] < 2:
        return torch.zeros_like(draws[0])
    return torch.stack([spread_map(draws[:, b]) for b in range(draws.shape[1])])


def best_alpha(rows, method):
    scored = [r for r in rows if r["method"] == method and math.isfinite(r["rmse_in"])]
    return min(scored, key=lambda r: r["rmse_in"]) if scored else None


def _best_rows(rows):
    """The rows without α, and each α method at its best α (by pooled RMSE in the hole)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        if any(r["method"] == method and r["alpha"] is not None for r in rows):
            best = best_alpha(rows, method)
            out += [best] if best is not None else []
        else:
            out += [r for r in rows if r["method"] == method]
    return out


def _label(row):
    return row["method"] if row["alpha"] is None else f"{row['method']}, α={row['alpha']:g}"


# (key, heading, width, format) of the per-family tables
_COLUMNS = (
    ("rmse_hole", "RMSE", 8, ".4f"),
    ("psnr_hole", "PSNR", 7, ".2f"),
    ("ssim_hole", "SSIM", 7, ".3f"),
    ("psnr_whole", "PSNR whole", 11, ".2f"),
    ("crps", "CRPS", 8, ".4f"),
    ("coverage_50", "cov 50", 8, ".3f"),
    ("coverage_90", "cov 90", 8, ".3f"),
    ("best_rmse", "best of N", 10, ".4f"),
)


def _family_table(family, part):
    lines = [
        f"holes: {family}, {100 * part['hole_share']:.1f} % of each image missing on "
        f"average; per image, then averaged over finite results (α methods at their best α)",
        f"{'method':<36}" + "".join(f"{h:>{w}}" for _, h, w, _ in _COLUMNS),
    ]
    for r in _best_rows(part["rows"]):
        cells = "".join(
            f"{'—' if r.get(k) is None else format(r[k], f):>{w}}" for k, _, w, f in _COLUMNS
        )
        lines.append(f"{_label(r):<36}{cells}")
    return lines


def format_report(result):
    rows = result["rows"]
    whole = " (the whole held-out split)" if result.get("whole_split") else ""
    lines = [
        f"held-out images: {result['images']}{whole}, {result['count']} square(s) of "
        f"{result['square']} px each; RMSE/PSNR on [0, 1] pixels, pooled over finite results"
    ]
    if rows:
        lines += _square_table(rows)
    for family, part in result.get("families", {}).items():
        lines += _family_table(family, part)
    p = result.get("posterior")
    if p:
        accepted = ", ".join(f"{f} {a:.2f}" for f, a in p["acceptance"].items())
        lines.append(
            f"{POSTERIOR}: {p['samples']} draws per image from invert's solution, "
            f"t = {p['temperature']:g}, γ = {p['gamma']:g}, {p['warmup']} warm-up + "
            f"{p['steps']} kept steps; its point scores are the draws' mean; "
            f"acceptance {accepted}"
        )
    b = result["bpd"]
    bad = f", {b['nonfinite']} image pairs with non-finite log p left out" if b["nonfinite"] else ""
    lines.append(
        f"held-out bits/dim: masked {b['masked']:.4f}, clean {b['clean']:.4f}, "
        f"gap (masked − clean) {b['gap']:+.4f}{bad}"
    )
    return "\n".join(lines)


def _square_table(rows):
    """The training square's table, pooled RMSE and PSNR per method and α."""
    lines = [
        f"{'method':<30}{'alpha':>6}{'RMSE in':>10}{'PSNR in':>9}{'RMSE out':>10}"
        f"{'PSNR out':>10}{'non-finite':>12}{'s/image':>10}"
    ]
    for r in rows:
        alpha = f"{r['alpha']:g}" if r["alpha"] is not None else "—"
        lines.append(
            f"{r['method']:<30}{alpha:>6}{r['rmse_in']:>10.4f}{r['psnr_in']:>9.2f}"
            f"{r['rmse_out']:>10.4f}{r['psnr_out']:>10.2f}{r['nonfinite']:>12d}"
            f"{r['seconds_per_image']:>10.4f}"
        )
    baselines = {r["method"]: r for r in rows if r["alpha"] is None}
    for method in dict.fromkeys(r["method"] for r in rows if r["alpha"] is not None):
        best = best_alpha(rows, method)
        if best:
            lines.append(
                f"best alpha for {method}: {best['alpha']:g} (RMSE in the square "
                f"{best['rmse_in']:.4f}; grey fill "
                f"{baselines['grey fill']['rmse_in']:.4f}, "
                f"mean-colour fill {baselines['mean-colour fill']['rmse_in']:.4f})"
            )
    return lines


_CSV_KEYS = (
    "method",
    "alpha",
    "rmse_in",
    "psnr_in",
    "rmse_out",
    "psnr_out",
    "nonfinite",
    "images",
    "seconds_per_image",
)
_DECIMALS = {"rmse_in": 6, "psnr_in": 4, "rmse_out": 6, "psnr_out": 4, "seconds_per_image": 6}


def _all_rows(result):
    """Every family's rows, square first as in "rows"; results from before families: "rows"."""
    families = result.get("families")
    return [r for part in families.values() for r in part["rows"]] if families else result["rows"]


def report_csv(path, result):
    """A line per family, method and α (today's columns first, then the family and the per-image
    and sampler scores), then the bits/dim."""
    from ..atomic import write_csv

    def cell(r, key):
        v = r.get(key)
        if v is None:
            return ""
        if key in _DECIMALS:
            return f"{v:.{_DECIMALS[key]}f}"
        return f"{v:.6f}" if isinstance(v, float) else v

    header = [*_CSV_KEYS, "family", *NEW_SCORES, "samples"]
    body = [
        [r["method"], "" if r["alpha"] is None else r["alpha"], *(cell(r, k) for k in header[2:])]
        for r in _all_rows(result)
    ]
    b = result["bpd"]
    pad = [""] * (len(header) - len(_CSV_KEYS))
    body += [
        [f"bits/dim {k}", "", f"{b[key]:.6f}", "", "", "", b["nonfinite"], b["images"], "", *pad]
        for k, key in (("masked", "masked"), ("clean", "clean"), ("gap (masked - clean)", "gap"))
    ]
    return write_csv(path, header, body)


def _clean(v):
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def report_json(path, result):
    """Every row (the CSV's fields), per family, the sampler's settings, the bits/dim and the
    baselines skipped, as one JSON file; "rows" are the square family's, as before families."""
    from ..atomic import write_json

    keys = (*_CSV_KEYS, "family", *NEW_SCORES, "samples")

    def rows(rs):
        return [{k: _clean(r.get(k)) for k in keys} for r in rs]

    families = {
        f: {"rows": rows(part["rows"]), "hole_share": _clean(part["hole_share"])}
        for f, part in result.get("families", {}).items()
    }
    posterior = result.get("posterior")
    if posterior:
        posterior = {
            k: ({f: _clean(a) for f, a in v.items()} if isinstance(v, dict) else _clean(v))
            for k, v in posterior.items()
        }
    return write_json(
        path,
        {
            "rows": rows(result["rows"]),
            "bpd": {k: _clean(v) for k, v in result["bpd"].items()},
            "images": result["images"],
            "square": result["square"],
            "skipped": result.get("skipped", {}),
            "masks": result.get("masks", ["square"]),
            "families": families,
            "posterior": posterior,
        },
    )


def comparison_sheet(result, min_tile=48, family=None):
    """The same held-out images restored by each method (the α methods at their best α), a row
    per method (PIL image); a sampler's mean, first draws and spread. `family`: whose holes
    [the square family's, else the first]."""
    from ..render.sheets import labelled_grid

    if family is None:
        examples, rows = result["examples"], result["rows"] or _all_rows(result)
    else:
        part = result["families"][family]
        examples, rows = part["examples"], part["rows"]
    keys = ["input"]
    for key in examples:
        if isinstance(key, tuple):
            best = best_alpha(rows, key[0])
            if best is not None and best["alpha"] == key[1]:
                keys.append(key)
        elif key not in ("input", "original"):
            keys.append(key)
    keys.append("original")
    names = {POSTERIOR: f"{POSTERIOR}, mean"}
    labels = [f"{k[0]}, α={k[1]:g}" if isinstance(k, tuple) else names.get(k, k) for k in keys]
    return labelled_grid([examples[k] for k in keys], labels, min_tile)[0]


def report_plot(result):
    from ..render.plot import Series, line_chart, stack

    rows = result["rows"] or _all_rows(result)
    which = "square" if result["rows"] else (result.get("masks") or ["square"])[0]
    flows = list(dict.fromkeys(r["method"] for r in rows if r["alpha"] is not None))
    alphas = sorted({r["alpha"] for r in rows if r["alpha"] is not None})
    panels = []
    for key, title in (
        ("rmse_in", f"RMSE inside the hole ({which}; vs the clean original)"),
        ("rmse_out", f"RMSE outside the hole ({which}; vs the input)"),
    ):
        series = [
            Series(
                m,
                [r["alpha"] for r in rows if r["method"] == m],
                [r[key] for r in rows if r["method"] == m],
            )
            for m in flows
        ]
        for b in dict.fromkeys(r["method"] for r in rows if r["alpha"] is None):
            value = next(r[key] for r in rows if r["method"] == b)
            series.append(
                Series(b, [alphas[0], alphas[-1]], [value, value], dashed=True, markers=False)
            )
        bad = sum(r["nonfinite"] for r in rows)
        panels.append(
            line_chart(
                series,
                title=title,
                xlabel="alpha",
                ylabel="RMSE",
                note=f"{bad} non-finite results left out" if bad else None,
            )
        )
    if result.get("posterior"):
        panels.append(coverage_chart(result))
    return stack(panels)


def coverage_chart(result):
    """The sampler's coverage of its central 50 % and 90 % intervals per family against the
    nominal level: calibrated draws lie on the diagonal."""
    from ..render.plot import Series, line_chart

    levels = [0.5, 0.9]
    series = [Series("nominal", levels, levels, dashed=True, markers=False)]
    for family, part in result["families"].items():
        row = next(r for r in part["rows"] if r["method"] == POSTERIOR)
        series.append(Series(family, levels, [row["coverage_50"], row["coverage_90"]]))
    p = result["posterior"]
    return line_chart(
        series,
        title=f"{POSTERIOR}: coverage of the central intervals "
        f"({p['samples']} draws, t = {p['temperature']:g})",
        xlabel="nominal level",
        ylabel="share of true hole values inside",
        ylim=(0.0, 1.0),
    )


def write_report(result, out, json_path=None):
    """The CSV, the plot and a comparison sheet per family (comparison.png for the training
    square, comparison-FAMILY.png for the others) into folder `out`, and with `json_path` the
    JSON too; returns the paths written."""
    from ..render.images import save_png

    paths = [
        report_csv(os.path.join(out, "evaluation.csv"), result),
        save_png(report_plot(result), os.path.join(out, "evaluation.png")),
    ]
    families = result.get("families") or {"square": None}
    for family in families:
        name = "comparison.png" if family == "square" else f"comparison-{family}.png"
        sheet = comparison_sheet(result, family=family if result.get("families") else None)
        paths.append(save_png(sheet, os.path.join(out, name)))
    if json_path:
        paths.append(report_json(json_path, result))
    return paths
