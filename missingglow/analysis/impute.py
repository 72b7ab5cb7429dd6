"""Giving people their images back: inputs, their holes, and the restored PNGs.

Two methods. `invert` (completion/invert.py) searches the latent for an image that fits every
observed pixel while keeping ‖z‖ small, then keeps the observed pixels exactly; it needs to know
where the hole is. With samples it also draws completions from the posterior over latents given
the observed pixels (completion/posterior.py, MALA started at invert's solution, which is that
posterior's mode at temperature 1), so their spread is the model's uncertainty. `alpha` is the
paper's Fig. 2, x' = Φ⁻¹(α·Φ(x)), optionally keeping every observed pixel and restoring only the
hole, repeated `iterations` times:

    x ← where(hole, Φ⁻¹(α·Φ(x)), x_observed)

`--alpha` alone asks for the α method (several alphas: the Fig. 2 strips); without it `invert`
is the default (`plan_impute`).

Inputs are image files (any size or mode: resized and centre-cropped as in training) or items of
the checkpoint's held-out split, written `heldout:N`; for those the square's place and the clean
original are known. Where the hole is needed, it is `--square` by hand, else a `--mask FILE`, the
file's alpha channel or the dataset's squares, else the grey-square detector's. An input that
cannot be used is reported on its own and the others are restored (`prepare_inputs`).
"""

import os
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError
from ..flow.preprocess import from_model, to_model
from ..render.images import finite_mask


@dataclass
class Item:
    name: str
    image: torch.Tensor  # (3, S, S) in [0, 1], as the model sees it
    clean: torch.Tensor = None  # the original without squares, when known
    mask: torch.Tensor = None  # (1, S, S) bool, True inside the square(s), when known
    source: str = ""  # where the square's place came from


def heldout_item(run, index):
    """Held-out item `index` of the checkpoint's dataset, with its holes (the squares, or the
    folder's own with `train --masks`) and, for squares, its clean original (under a folder's own
    holes the truth is unknown)."""
    from ..data.datasets import dataset_of, masked_images_of

    run.need_dataset()
    c = run.config
    cache = dataset_of(c, run.image_size)
    items = masked_images_of(c, cache, "heldout")
    if not 0 <= index < len(items):
        raise UserError(
            f"out of range: the held-out split has {len(items)} images (heldout:0 "
            f"to heldout:{len(items) - 1})"
        )
    masked, clean, _ = items[index]
    hole = items.missing([index])[0]
    own = c.get("masks") is not None
    return Item(f"heldout-{index}", masked, None if own else clean, hole, "the dataset")


@dataclass(frozen=True)
class Plan:
    """What `impute` will do, decided from its options before any input is read."""

    method: str  # "alpha" (the paper's Φ⁻¹(α·Φ(x))) or "invert"
    alphas: tuple  # alpha: the scales to restore at; invert: one, its start's scale
    keep_observed: bool = False  # restore only the hole (needs it); invert always does
    iterations: int = 1  # alpha: scale, put the observed pixels back, N times
    samples: int = 0  # invert: posterior draws per input, beside the MAP
    square: tuple = None  # (top, left, size) by hand, for every input
    masks: tuple = ()  # mask files: one per image file, or one for all


ALPHA = 0.6  # the α of the paper's Fig. 2, when --method alpha is given without --alpha
# the posterior sampler's prior temperature and chain length (docs/imputation.md); γ is invert's
SAMPLING = dict(temperature=0.7, warmup=100, steps=400)


def plan_impute(
    method=None, alphas=None, *, masks=(), square=None, samples=0, keep_observed=False, iterations=1
):
    """The options of `impute` → a Plan; a UserError for options that contradict each other.

    --alpha alone means the paper's α-imputation (several alphas draw its Fig. 2 strips); with no
    --alpha, latent-norm inversion is the default, and `--method invert --alpha A` starts it from
    A·Φ(x)."""
    from ..completion.invert import DEFAULTS

    explicit = method is not None
    method = method or ("alpha" if alphas else "invert")
    alphas = tuple(alphas) if alphas else ((ALPHA,) if method == "alpha" else (DEFAULTS["alpha"],))
    masks = tuple(masks)
    if square is not None and masks:
        raise UserError("give the hole with --mask or with --square, not both")
    if method == "invert":
        if len(alphas) > 1:
            raise UserError(
                "--method invert takes one --alpha (the start's scale); for strips "
                "over several alphas leave out --method invert (or give --method "
                "alpha)"
            )
        if keep_observed or iterations > 1:
            raise UserError(
                "--keep-observed and --iterations are for the α method (inversion "
                "always keeps the observed pixels); add --alpha A or --method alpha"
            )
        return Plan("invert", alphas, True, 1, samples, square, masks)
    if samples:
        how = (
            ""
            if explicit
            else "; --alpha alone means --method alpha: add --method invert "
            "(α is then the start's scale)"
        )
        raise UserError(f"--samples draws several completions with --method invert{how}")
    keep = keep_observed or iterations > 1
    if not keep and square is not None:
        raise UserError(
            "--square gives the square's place for --keep-observed; add --keep-observed"
        )
    if not keep and masks:
        raise UserError("--mask gives the hole for --keep-observed; add --keep-observed")
    return Plan("alpha", alphas, keep, iterations, 0, square, masks)


def by_hand(square, size):
    """(1, size, size) hole of a square given as (top, left, k); a UserError when it does not
    fit."""
    from ..data.masks import square_mask

    top, left, k = square
    if top + k > size or left + k > size:
        raise UserError(f"--square {top},{left},{k} does not fit {size}×{size} images")
    return square_mask(torch.tensor([[top, left]]), k, size)


def _load_file(run, path, mask_file, need_hole):
    """An image file → (Item, whether it was converted or resized); its hole from `mask_file` or its
    alpha channel when one is needed."""
    from ..data.images import alpha_mask, load_image, load_mask

    image = load_image(path, run.image_size)  # UserError for a missing or unreadable file
    item = Item(os.path.splitext(os.path.basename(path))[0], image)
    with Image.open(path) as img:
        reshaped = img.size != (run.image_size, run.image_size) or img.mode != "RGB"
        if need_hole and mask_file is not None:
            item.mask = load_mask(mask_file, img.size, run.image_size)
            item.source = f"mask {os.path.basename(mask_file)}"
        elif need_hole:
            item.mask = alpha_mask(img, run.image_size, path)
            item.source = "its alpha channel" if item.mask is not None else ""
    return item, reshaped


def _heldout(run, spec):
    try:
        index = int(spec.split(":", 1)[1])
    except ValueError:
        raise UserError("write heldout:N with N a whole number") from None
    return heldout_item(run, index)


def find_hole(run, item, hand=None):
    """Fill item.mask: `hand` (a hole given by hand) first, else the item's own (mask file, alpha
    channel, the dataset's squares), else the detector's squares."""
    from .squares import detect, detector_sizes_for

    size = run.image_size
    if hand is not None:
        item.mask, item.source = hand, "--square"
        return item
    if item.mask is not None:
        return item
    found = detect(item.image, detector_sizes_for(run.square, size))
    if not found:
        raise UserError(
            "no grey square found; give its place by hand with --square "
            "TOP,LEFT,SIZE, or the hole with --mask FILE"
        )
    mask = torch.zeros((1, size, size), dtype=torch.bool)
    for sq in found:
        mask[:, sq.top : sq.top + sq.size, sq.left : sq.left + sq.size] = True
    plural = "s" if len(found) > 1 else ""
    item.mask, item.source = mask, f"the detector ({len(found)} square{plural})"
    return item


def prepare_inputs(run, specs, plan, say=None):
    """Image files and `heldout:N` specs → (Items ready to restore, [(spec, what is wrong)]).

    One input that cannot be used (an unreadable file, a bad mask, no square found where the hole
    is needed) is a failure of its own; the others are still returned. Options that no input can
    satisfy (a mask count that matches nothing, a --square that does not fit) are a UserError.
    Says once if files were converted, resized or cropped."""
    files = [s for s in specs if not s.startswith("heldout:")]
    masks = list(plan.masks)
    if masks and len(masks) not in (1, len(files)):
        raise UserError(
            f"{len(masks)} --mask files for {len(files)} image files: give one mask "
            "per image file, in the same order, or one mask for all of them"
        )
    need_hole = plan.keep_observed
    hand = by_hand(plan.square, run.image_size) if need_hole and plan.square else None
    items, failures, reshaped, files_used, k = [], [], [], 0, 0
    for spec in specs:
        converted = False
        try:
            if spec.startswith("heldout:"):
                item = _heldout(run, spec)
            else:
                mask_file = masks[k if len(masks) > 1 else 0] if masks else None
                k += 1
                item, converted = _load_file(run, spec, mask_file, need_hole)
            if need_hole:
                find_hole(run, item, hand)
        except UserError as err:
            failures.append((spec, str(err)))
            continue
        items.append(item)
        files_used += not spec.startswith("heldout:")
        if converted:
            reshaped.append(os.path.basename(spec))
    if say and files_used and run.model.in_channels == 1:
        say(
            "the model has one channel (it was trained on grayscale images): colour inputs are "
            "restored as their grey (luma) values"
        )
    if reshaped and say:
        s = run.image_size
        say(
            f"{len(reshaped)} input(s) converted to RGB, shorter side resized to {s} and centre-"
            f"cropped to {s}×{s}, as in training ({', '.join(reshaped[:3])}"
            f"{' …' if len(reshaped) > 3 else ''})"
        )
    names = [it.name for it in items]
    for i, it in enumerate(items):  # unique output names
        if names.count(it.name) > 1:
            it.name = f"{it.name}-{i}"
    return items, failures


@dataclass
class Restored:
    lines: list  # one summary line per input
    count: int  # restored images written (inputs × alphas or × samples)
    nonfinite: int  # of those, how many the flow's inverse did not give back finite
    paths: list  # every file written


def restore_inputs(
    run, items, plan, out_dir, seed=0, invert_options=None, on_step=None, sampling=None
):
    """Restore prepared Items as the plan says and write them into out_dir (made when missing;
    every file is written atomically, so a failed write leaves the ones before it).
    `invert_options`: the inversion's settings (completion/invert.py); `sampling`: the posterior
    sampler's temperature, warmup and steps (SAMPLING); `on_step(i)`: their progress."""
    if plan.method == "invert":
        options = {**(invert_options or {}), "alpha": plan.alphas[0]}
        return invert_files(
            run, items, out_dir, plan.samples, seed, on_step=on_step, sampling=sampling, **options
        )
    return impute_files(run, items, list(plan.alphas), out_dir, plan.keep_observed, plan.iterations)


@torch.no_grad()
def restore(model, images, alphas, n_bits, mask=None, iterations=1):
    """Every image (B, 3, S, S) at every alpha → (A, B, 3, S, S) images in [0, 1] (NaN where the
    flow's inverse was not finite). With a mask (B or 1, 1, S, S), pixels outside it keep the
    input."""
    x0 = to_model(images, n_bits, model.in_channels)
    out = []
    for alpha in alphas:
        x = x0
        for _ in range(max(1, iterations)):
            x = model.decode(alpha * model.encode(x))
            if mask is not None:
                x = torch.where(mask, x, x0)
        out.append(from_model(x, n_bits))
    return torch.stack(out)


def impute_files(run, items, alphas, out_dir, keep_observed=False, iterations=1, min_tile=48):
    """Restore each item at each alpha; write one PNG per (item, alpha), and with several alphas a
    strip per item (a row per alpha, the input on top, the original at the bottom when known) and
    an overview with a column per item (the paper's Fig. 2). Returns a Restored: a summary line per
    item, the counts and the paths written."""
    from ..render.images import grid, save_png
    from ..render.sheets import column_sheet, labelled_grid

    lines, bad_total, columns, paths = [], 0, [], []
    for item in items:
        mask = item.mask[None] if (keep_observed or iterations > 1) else None
        result = restore(run.model, item.image[None], alphas, run.n_bits, mask, iterations)[:, 0]
        bad = int((~finite_mask(result)).sum())
        bad_total += bad
        for alpha, image in zip(alphas, result, strict=True):
            path = os.path.join(out_dir, f"{item.name}-alpha{alpha:.2f}.png")
            canvas, _ = grid([image[None]], padding=0)
            paths.append(save_png(canvas, path))
        shown = from_model(
            to_model(item.image[None], run.n_bits, run.model.in_channels), run.n_bits
        )[0]
        column = [shown] + list(result) + ([item.clean] if item.clean is not None else [])
        columns.append(torch.stack(column))
        if len(alphas) > 1:
            labels = ["input"] + [f"α={a:g}" for a in alphas]
            labels += ["original"] if item.clean is not None else []
            sheet, _ = labelled_grid([t[None] for t in column], labels, min_tile)
            paths.append(save_png(sheet, os.path.join(out_dir, f"{item.name}-strip.png")))
        how = (
            f"keeping observed pixels, square from {item.source}"
            if mask is not None
            else "whole image"
        )
        note = (
            f"; {bad} of {len(alphas)} results non-finite (drawn as checkerboards)" if bad else ""
        )
        lines.append(
            f"{item.name}: {len(alphas)} alpha(s), {how}"
            f"{f', {iterations} iterations' if iterations > 1 else ''}{note}"
        )
    if len(alphas) > 1 and len(items) > 1:
        paths.append(
            save_png(
                column_sheet(columns, ["input"] + [f"α={a:g}" for a in alphas], min_tile),
                os.path.join(out_dir, "overview.png"),
            )
        )
    return Restored(lines, len(items) * len(alphas), bad_total, paths)


def spread_map(completions):
    """Per-pixel spread of several completions (K, 3, S, S) → (3, S, S) grey, 1 at the largest."""
    spread = completions.std(0).mean(0, keepdim=True)
    return (spread / spread.max().clamp_min(1e-12)).expand(3, -1, -1)


def map_and_draws(model, x, missing, samples, generator, on_step=None, sampling=None, **options):
    """invert's completion (B, C, S, S) and `samples` posterior draws (samples, B, C, S, S) started
    from its latent, in model space, with invert's objective per step and the sampler's
    Diagnostics (None without samples). `options`: invert's; its γ sets the posterior's
    observation noise. `on_step(i)` counts invert's steps, then the sampler's."""
    from ..completion.invert import DEFAULTS, invert
    from ..completion.posterior import posterior_samples

    best, history, latent = invert(
        model, x, missing, on_step=on_step, return_latent=True, **options
    )
    if not samples:
        return best[0], best[:0], history, None
    s = {**SAMPLING, **(sampling or {})}
    offset = options.get("steps", DEFAULTS["steps"])
    draws, diagnostics = posterior_samples(
        model,
        x,
        missing,
        samples,
        gamma=options.get("gamma", DEFAULTS["gamma"]),
        temperature=s["temperature"],
        warmup=s["warmup"],
        steps=s["steps"],
        generator=generator,
        start=latent[0],
        on_step=None if on_step is None else (lambda i: on_step(offset + i)),
    )
    return best[0], draws, history, diagnostics


def invert_files(
    run, items, out_dir, samples=0, seed=0, min_tile=48, on_step=None, sampling=None, **options
):
    """Restore every item by latent-norm inversion, all in one batch, and draw `samples`
    completions per item from the posterior; write `<name>-restored.png` (invert's) per item,
    `<name>-sample-K.png` (K = 1 … samples) for the draws, and `invert.png`: a column per item
    with the input, the restored image, the draws and their spread map, and the original when
    known. Returns a Restored: a summary line per item, the counts and the paths written."""
    from ..render.images import grid, save_png
    from ..render.sheets import column_sheet
    from ..seeding import generator

    x = to_model(torch.stack([it.image for it in items]), run.n_bits, run.model.in_channels)
    hole = torch.stack([it.mask for it in items])
    best, draws, history, diagnostics = map_and_draws(
        run.model, x, hole, samples, generator(seed, "posterior"), on_step, sampling, **options
    )
    result = from_model(torch.cat([best[None], draws]).flatten(0, 1), run.n_bits)
    result = result.view(samples + 1, *best.shape[:1], 3, *best.shape[2:])  # (1 + K, B, 3, S, S)
    ok = torch.isfinite(result.flatten(2)).all(2)  # (1 + K, B)
    lines, columns, paths = [], [], []
    for b, item in enumerate(items):
        for k in range(samples + 1):
            name = f"{item.name}-restored.png" if k == 0 else f"{item.name}-sample-{k}.png"
            paths.append(
                save_png(grid([result[k, b][None]], padding=0)[0], os.path.join(out_dir, name))
            )
        shown = from_model(x[b : b + 1], run.n_bits)[0]
        column = [shown, *result[:, b]]
        if samples:
            finite = result[1:, b][ok[1:, b]]
            column.append(spread_map(finite) if len(finite) > 1 else torch.zeros_like(shown))
        if item.clean is not None:
            column.append(item.clean)
        columns.append(torch.stack(column))
        start, end = history[0, b].item(), history[-1, b].item()
        bad = int((~ok[:, b]).sum())
        note = f"; {bad} of {samples + 1} completions non-finite" if bad else ""
        drawn = ""
        if samples:
            drawn = (
                f"; {samples} posterior draws (acceptance "
                f"{diagnostics.acceptance[:, b].nanmean().item():.2f})"
            )
        lines.append(
            f"{item.name}: {int(item.mask.sum())} missing pixels from {item.source}, "
            f"objective {start:.4f} → {end:.4f}{drawn}{note}"
        )
    labels = ["input", "restored", *[f"sample {k}" for k in range(1, samples + 1)]]
    labels += ["spread"] if samples else []
    paths.append(
        save_png(column_sheet(columns, labels, min_tile), os.path.join(out_dir, "invert.png"))
    )
    return Restored(lines, len(items) * (samples + 1), int((~ok).sum()), paths)
