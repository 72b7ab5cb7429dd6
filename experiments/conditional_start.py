"""Does the conditional Table 1 depend on where the posterior's chains start? Start them at the
held-out images as they are (the hole grey) instead of at invert's completion, and count the
completions whose hole is still grey after the same 40 + 40 MALA steps, by `squares
--posterior`'s pixel rule (`conditional_table1.grey_by_pixels`: at least GREY_SHARE of the hole's
pixels with every channel within GREY_TOLERANCE of a training hole's grey), non-finite completions
set aside.

    python experiments/conditional_start.py runs/missing-data/faces-{naive,complete}

Chains that start grey and stay grey say the posterior holds a grey mode; chains started at
invert's completion that never turn grey say the chains do not cross between modes in 80 steps.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from missingglow.analysis.conditional_table1 import grey_by_pixels  # noqa: E402
from missingglow.analysis.runs import open_run  # noqa: E402
from missingglow.completion.posterior import posterior_samples  # noqa: E402
from missingglow.data.datasets import dataset_of, masked_images_of  # noqa: E402
from missingglow.flow.preprocess import from_model, to_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-n", type=int, default=40, help="held-out images")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("-t", type=float, nargs="+", default=[0.7, 1.0])
    args = parser.parse_args()
    print("| run | t | completions | finite | share still grey | acceptance |")
    print("|---|---|---|---|---|---|")
    for path in args.runs:
        run = open_run(path)
        model, c = run.model.eval(), run.config
        held = masked_images_of(c, dataset_of(c, run.image_size), "heldout")
        js = list(range(min(args.n, len(held))))
        masked, missing = held.batch(js)[0], held.missing(js)
        x = to_model(masked, run.n_bits, model.in_channels)
        for t in args.t:
            out, info = posterior_samples(
                model,
                x,
                missing,
                args.samples,
                gamma=0.01,
                temperature=t,
                steps=40,
                warmup=40,
                generator=torch.Generator().manual_seed(0),
                start=x,
            )
            images = from_model(out.flatten(0, 1), run.n_bits)  # draw k of image b at k·B + b
            grey = grey_by_pixels(images, missing.repeat(args.samples, 1, 1, 1), run.n_bits)
            finite = [v for v in grey if v is not None]
            share = sum(finite) / len(finite) if finite else float("nan")
            print(
                f"| {os.path.basename(path.rstrip('/'))} | {t:g} | {len(grey)} | {len(finite)} | "
                f"{share:.2f} | {info.acceptance.nanmean():.2f} |"
            )


if __name__ == "__main__":
    main()
