"""Does the conditional Table 1 depend on where the posterior's chains start? Start them at the
held-out images as they are (the hole grey) instead of at invert's completion, and count the
completions whose hole is still grey after the same 40 + 40 MALA steps. The count is taken in
model space, on the hole's values (pixels × channels): a completion is grey when at least
GREY_SHARE of them lie within GREY_TOLERANCE of grey's bin centre. That is close to, not the
same as, `squares --posterior`'s pixel rule, which asks every channel of a pixel to be near grey
in the image's [0, 1] and sets non-finite completions aside.

    python experiments/conditional_start.py runs/missing-data/faces-{naive,complete}

Chains that start grey and stay grey say the posterior holds a grey mode; chains started at
invert's completion that never turn grey say the chains do not cross between modes in 80 steps.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from missingglow.analysis.conditional_table1 import GREY_SHARE, GREY_TOLERANCE  # noqa: E402
from missingglow.analysis.runs import open_run  # noqa: E402
from missingglow.completion.posterior import posterior_samples  # noqa: E402
from missingglow.data.datasets import dataset_of, masked_images_of  # noqa: E402
from missingglow.data.masks import GREY  # noqa: E402
from missingglow.flow.preprocess import to_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-n", type=int, default=40, help="held-out images")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("-t", type=float, nargs="+", default=[0.7, 1.0])
    args = parser.parse_args()
    print("| run | t | completions | share still grey | acceptance |")
    print("|---|---|---|---|---|")
    for path in args.runs:
        run = open_run(path)
        model, c = run.model.eval(), run.config
        held = masked_images_of(c, dataset_of(c, run.image_size), "heldout")
        js = list(range(min(args.n, len(held))))
        masked, missing = held.batch(js)[0], held.missing(js)
        x = to_model(masked, run.n_bits, model.in_channels)
        grey = to_model(torch.full((1, 3, 1, 1), GREY), run.n_bits)[0, 0, 0, 0]
        hole = missing.expand_as(x)
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
            near = ((out - grey).abs() <= GREY_TOLERANCE) & hole
            share = (near.flatten(2).sum(2) / hole.flatten(1).sum(1) >= GREY_SHARE).float().mean()
            print(
                f"| {os.path.basename(path.rstrip('/'))} | {t:g} | {out.shape[0] * out.shape[1]} | "
                f"{share:.2f} | {info.acceptance.nanmean():.2f} |"
            )


if __name__ == "__main__":
    main()
