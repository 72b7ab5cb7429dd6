"""`prepare`, `check` and `train`: parse, call, print."""
import sys

import click


@click.command()
@click.option("--data", "data_dir", type=click.Path(), default=None,
              help="Image folder (searched recursively). Default: the built-in synthetic faces.")
@click.option("--size", type=int, default=64, show_default=True, help="Image side S in pixels.")
@click.option("--cache", "cache_dir", type=click.Path(), default=None,
              help="Cache folder. Default: $MISSINGGLOW_CACHE or ~/.cache/missingglow.")
@click.option("--workers", type=int, default=None, help="Decoding processes. Default: all cores.")
@click.option("--synthetic-count", type=int, default=10_000, show_default=True,
              help="How many synthetic faces, when no --data is given.")
@click.option("--synthetic-seed", type=int, default=0, show_default=True)
@click.option("--synthetic-detail", type=click.Choice(["full", "low"]), default="full",
              show_default=True,
              help="Synthetic faces as drawn, or drawn at half size and enlarged (the small "
                   "preset's).")
@click.option("--rebuild", is_flag=True, help="Decode again even if a good cache exists.")
def prepare(data_dir, size, cache_dir, workers, synthetic_count, synthetic_seed, synthetic_detail,
            rebuild):
    """Decode an image folder once into the memory-mapped cache (reused when up to date)."""
    from ..data.cache import open_dataset

    cache = open_dataset(data_dir, size, cache_dir=cache_dir, workers=workers, rebuild=rebuild,
                         synthetic_count=synthetic_count, synthetic_seed=synthetic_seed,
                         synthetic_detail=synthetic_detail)
    click.echo(cache.path)


@click.command()
def check():
    """Check this installation: the fused extension, and a small model that must invert."""
    from ..selfcheck import run

    for line in run():
        click.echo(line)
    click.echo("ok")


@click.command()
@click.option("--preset", type=click.Choice(["small", "paper"]), default=None,
              help="Defaults for everything below. Default: paper with a GPU or an architecture "
                   "given, else small.")
@click.option("--data", default=None, help="Image folder (or .mgcache). Default: synthetic faces.")
@click.option("--synthetic-count", type=int, default=None, help="Synthetic faces to draw [10000].")
@click.option("--synthetic-detail", type=click.Choice(["full", "low"]), default=None,
              help="Synthetic faces as drawn, or drawn at half size and enlarged [small: low, "
                   "paper: full].")
@click.option("--size", "image_size", type=int, default=None, help="Image side S in pixels.")
@click.option("--square", type=int, default=None,
              help="Grey square side K in pixels (paper: 20 at 64×64; taken at 64-px scale when "
                   "the size comes from a preset).")
@click.option("--squares", type=int, default=None, help="Squares per image [1].")
@click.option("--blocks", type=int, default=None)
@click.option("--flows", type=int, default=None, help="Flow steps per block.")
@click.option("--hidden", type=int, default=None, help="Coupling network width.")
@click.option("--bits", "n_bits", type=int, default=None, help="Bits per colour channel [5].")
@click.option("--affine/--additive", default=None, help="Coupling type [affine].")
@click.option("--lu/--no-lu", default=None, help="LU-parametrised 1×1 convs [lu].")
@click.option("--batch", type=int, default=None, help="Global batch size.")
@click.option("--iterations", type=int, default=None,
              help="Total iterations (with --resume: extend to).")
@click.option("--lr", type=float, default=None, help="Adam learning rate.")
@click.option("--warmup", type=int, default=None, help="Linear warm-up iterations.")
@click.option("--grad-clip", type=float, default=None, help="Gradient-norm clip (0: none) [50].")
@click.option("--seed", type=int, default=None, help="Seeds data order, noise, squares [0].")
@click.option("--impl", type=click.Choice(["fused", "reference"]), default=None)
@click.option("--memory-saving", is_flag=True, default=None,
              help="Rebuild activations in the backward pass instead of storing them.")
@click.option("--sample-every", type=int, default=None,
              help="Sample grid every N iterations [1000].")
@click.option("--eval-every", type=int, default=None,
              help="Held-out bits/dim every N iterations [500].")
@click.option("--checkpoint-every", type=int, default=None,
              help="Checkpoint every N iterations [500].")
@click.option("--out", default=None, help="Run folder [runs/<preset>-<time>].")
@click.option("--resume", default=None, help="Continue the run in this folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(resume, quiet, **options):
    """Train a Glow on images with grey squares (progress, checkpoints, resume, torchrun)."""
    from ..training.config import resolve_config
    from ..training.loop import train as run_training

    if resume is not None:
        config = {"iterations": options["iterations"]}
    else:
        config, note = resolve_config(options)
        if note:
            click.echo(note, err=True)
    try:
        run_dir = run_training(config, resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(run_dir)
