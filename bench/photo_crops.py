"""Write square crops of scikit-image's colour sample photographs as a folder of PNGs: a small
real-photo dataset for `train --data`, made on any machine that has the `baselines` extra.

    python bench/photo_crops.py --out data/photo-crops-16 -n 8000 --size 16

Each crop is taken at a random place and a random scale (log-uniform from a size-pixel patch to
the photo's whole shorter side), as the detector's photo bank crops (analysis/photo_bank.py);
the crops are a pure function of --seed and --size, so files already there are kept and a re-run
completes an interrupted folder.
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from missingglow.analysis import photo_bank  # noqa: E402
from missingglow.progress import progress_bar  # noqa: E402
from missingglow.render.images import save_png  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the crops into")
    parser.add_argument("-n", type=int, default=8000, help="how many crops")
    parser.add_argument("--size", type=int, default=16, help="crop side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not photo_bank.available():
        sys.exit("error: scikit-image's sample photos are missing; pip install scikit-image")
    photos = {
        name: photo for name, photo in photo_bank.photos().items() if name in photo_bank.COLOUR
    }
    names = sorted(photos)
    rng = random.Random(f"photo-crops:{args.seed}:{args.size}")
    os.makedirs(args.out, exist_ok=True)
    with progress_bar(args.n, f"writing {args.n} crops to {args.out}") as bar:
        for i in range(args.n):
            photo = photos[names[rng.randrange(len(names))]]
            image = photo_bank.crop(rng, photo, args.size)
            path = os.path.join(args.out, f"crop-{i:05d}.png")
            if not os.path.exists(path):
                save_png(image, path)
            bar.update(1)


if __name__ == "__main__":
    main()
