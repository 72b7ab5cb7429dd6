"""Training settings, stated once: `TrainConfig`'s fields carry each setting's type, default, help
and range; the presets are changes to those defaults; `resolve_config` turns a command line into a
full configuration.

The defaults are the paper's setting, that of rosinality/glow-pytorch's train.py. `small` is sized
for a 2-core CPU on the synthetic faces (docs/conventions.md §4); what it can and cannot show is in
docs/phenomenon.md. With no GPU and no architecture given, `train` picks `small`. The `train`
command's options are generated from the fields. A run stores its config as a plain dict
(`to_dict`), which `from_dict` reads back, also from runs written before a setting existed.
"""

import math
import types
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from ..data.holes import ALPHA
from ..data.imagefolder import folder_path
from ..data.synthetic import DETAILS
from ..errors import UserError

PAPER_SIZE = 64  # the image side the paper's square sizes refer to

ARCHITECTURE = ("blocks", "flows", "hidden")  # giving any of these picks `paper` without a GPU

PRESETS = {
    # Sized so a 2-core CPU trains it in minutes. lr 1e-3 with a 200-step warm-up learns faster
    # than the paper's 1e-4 and stays free of NaNs at this size. The low-detail faces
    # (synthetic.DETAILS) are the scale study's best lever: squares appear in samples at high t and
    # not at low t within the preset's iterations, where the full-detail faces need several times
    # as many (docs/phenomenon.md has the measurements).
    "small": dict(
        image_size=16,
        blocks=3,
        flows=8,
        hidden=64,
        batch=64,
        iterations=6_000,
        lr=1e-3,
        warmup=200,
        synthetic_detail="low",
        refill_every=2_000,
    ),
    "paper": {},  # TrainConfig's defaults are the paper's
}


def setting(
    default,
    help,
    *,
    flag=None,
    at_least=None,
    at_most=None,
    above=None,
    choices=None,
    shown=None,
    if_missing=MISSING,
    machine=False,
):
    """A TrainConfig field. `flag`: the command line's spelling when it is not --field-name (for a
    bool, "--on/--off" or a lone "--on"). `shown`: the default as the command line should show it,
    where the value alone would mislead (None meaning "decided at run time"). `if_missing`: the
    value a stored config without this key had, when that is not the default (runs written before
    the setting existed). `machine`: a setting of how this machine runs the training, not of what
    it trains (same results either way): it may be given beside --resume and replaces the stored
    value."""
    meta = dict(
        help=help,
        flag=flag,
        at_least=at_least,
        at_most=at_most,
        above=above,
        choices=choices,
        shown=shown,
        machine=machine,
    )
    if if_missing is not MISSING:
        meta["if_missing"] = if_missing
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. Build one with `resolve_config` (presets, square scaling)
    or directly; `validate` checks a config built by hand."""

    preset: str = setting(
        "paper",
        "Defaults for the settings below.",
        choices=tuple(PRESETS),
        shown="paper with a GPU or an architecture given, else small",
    )
    data: str | None = setting(
        None, "Image folder (searched recursively) or .mgcache file.", shown="synthetic faces"
    )
    synthetic_count: int = setting(
        10_000, "Synthetic faces to draw, when no --data is given.", at_least=1
    )
    synthetic_detail: str = setting(
        "full", "Synthetic faces as drawn, or drawn at half size and enlarged.", choices=DETAILS
    )
    image_size: int = setting(
        64, "Image side S in pixels; divisible by 2^blocks.", flag="--size", at_least=2
    )
    square: int = setting(
        20,
        "Grey square side K in pixels (0: none); at 64-px scale, and scaled "
        "to the image, when the size comes from a preset.",
        at_least=0,
    )
    squares: int = setting(1, "Grey squares per image.", at_least=0)
    masks: str | None = setting(
        None,
        "The training images' own holes instead of squares: a folder of mask images matched to "
        "--data's images by file name (non-zero: missing), or `alpha` for each image's "
        "transparency.",
        shown="grey squares",
    )
    complete: bool = setting(
        False,
        "Treat the holes as missing values: start from a smooth fill and re-fill them from the "
        "model as it trains (observed pixels never change), instead of training on grey holes.",
        flag="--complete",
    )
    refill_every: int = setting(
        50_000,
        "With --complete: re-fill every training image's holes every N iterations.",
        at_least=1,
    )
    refill_steps: int = setting(
        15,
        "With --complete: latent-inversion steps per re-fill, started from the last fill.",
        at_least=1,
    )
    blocks: int = setting(4, "Blocks (latent levels) of the flow.", at_least=1)
    flows: int = setting(32, "Flow steps per block.", at_least=1)
    hidden: int = setting(512, "Coupling network width.", at_least=1)
    n_bits: int = setting(5, "Bits per colour channel.", flag="--bits", at_least=1, at_most=8)
    channels: int | None = setting(
        None,
        "Model input channels.",
        choices=(1, 3),
        shown="1 for a dataset of grey images, else 3",
        if_missing=3,
    )
    affine: bool = setting(True, "Coupling type.", flag="--affine/--additive")
    lu: bool = setting(True, "LU-parametrised 1×1 convolutions.", flag="--lu/--no-lu")
    batch: int = setting(16, "Global batch size (split over torchrun's processes).", at_least=1)
    iterations: int = setting(
        200_000, "Total iterations (with --resume: extend the run to this).", at_least=0
    )
    lr: float = setting(1e-4, "Adam learning rate.", above=0)
    warmup: int = setting(0, "Iterations of linear learning-rate warm-up.", at_least=0)
    grad_clip: float = setting(50.0, "Gradient-norm clip (0: none).", at_least=0)
    max_bad_steps: int = setting(
        5,
        "Non-finite steps in a row that roll the run back to its last checkpoint with the "
        "learning rate halved.",
        at_least=1,
    )
    seed: int = setting(0, "Seeds the weights, data order, noise and squares.")
    impl: str | None = setting(
        None,
        "Flow implementation.",
        choices=("fused", "reference"),
        shown="fused when missingglow._C loads",
    )
    memory_saving: bool = setting(
        False,
        "Rebuild activations in the backward pass instead of storing them.",
        flag="--memory-saving",
    )
    precision: str = setting(
        "fp32",
        "Arithmetic of the fused coupling networks' hidden convolutions.",
        choices=("fp32", "bf16"),
    )
    graph: bool = setting(
        True,
        "Run each training step as one CUDA graph (one GPU; steps run eagerly under "
        "torchrun and on the CPU).",
        flag="--graph/--no-graph",
        machine=True,
    )
    threads: int | None = setting(
        None,
        "CPU threads for training.",
        at_least=1,
        machine=True,
        shown="$OMP_NUM_THREADS if set, else the cores other processes leave free",
    )
    sample_every: int = setting(1000, "Sample grid every N iterations.", at_least=1)
    eval_every: int = setting(500, "Held-out bits/dim every N iterations.", at_least=1)
    checkpoint_every: int = setting(500, "Checkpoint every N iterations.", at_least=1)
    log_every: int = setting(
        50, "Training bits/dim, lr and speed to metrics.jsonl every N iterations.", at_least=1
    )
    heldout_images: int = setting(256, "Held-out images each evaluation measures.", at_least=1)
    eval_batch: int = setting(
        128, "Held-out images per forward pass of an evaluation.", at_least=1, machine=True
    )
    temperature: float = setting(0.7, "Temperature of the sample grids.", at_least=0)
    out: str | None = setting(None, "Run folder.", shown="runs/<preset>-<time>")

    def to_dict(self):
        """The plain dict a checkpoint, config.json and the analysis code hold."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored):
        """The config of a stored dict. A key the dict lacks (a run written before the setting
        existed) takes its `if_missing` value, else the default; keys this version does not know
        are left out (`unknown` names them)."""
        values = {
            f.name: f.metadata["if_missing"] for f in fields(cls) if "if_missing" in f.metadata
        }
        names = cls.names()
        values.update((k, v) for k, v in stored.items() if k in names)
        return cls(**values)

    @classmethod
    def unknown(cls, stored):
        """The keys of a stored dict that are no setting of this version, sorted."""
        return sorted(set(stored) - set(cls.names()))

    @classmethod
    def names(cls):
        return tuple(f.name for f in fields(cls))

    @classmethod
    def machine_names(cls):
        """The settings of how a machine trains (`setting(machine=True)`), which --resume takes."""
        return tuple(f.name for f in fields(cls) if f.metadata["machine"])


def preset_config(name):
    """The full config of a preset, as it stands (its square still at 64-px scale)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(preset=name, **PRESETS[name])


def preset_values(name):
    """{preset: its value of setting `name`}: what the command line shows as the default."""
    return {preset: getattr(preset_config(preset), name) for preset in PRESETS}


def resolve_config(options, has_gpu=None):
    """Options given on the command line (None = not given) → (TrainConfig, one-line note or None).

    The preset fills what was not given. A square size taken from a preset, or given together with
    a preset whose images are not 64 px, is in the paper's 64-px scale and is scaled to the image
    (20 px at 64×64 is 5 px at 16×16); the note says so.
    """
    given = {k: v for k, v in options.items() if v is not None}
    name = given.pop("preset", None)
    chosen = name is not None
    if name is None:
        if has_gpu is None:
            import torch

            has_gpu = torch.cuda.is_available()
        name = "paper" if has_gpu or any(k in given for k in ARCHITECTURE) else "small"
    config = replace(preset_config(name), **given)
    # the folders as absolute paths, so that a run resumed from another directory finds them
    config = replace(
        config,
        data=None if config.data is None else folder_path(config.data),
        masks=config.masks if config.masks in (None, ALPHA) else folder_path(config.masks),
    )
    note = None
    size = config.image_size
    if not chosen and name == "small":
        faces = (
            ", low-detail synthetic faces"
            if config.data is None and config.synthetic_detail == "low"
            else ""
        )
        note = (
            f"no GPU and no architecture given: using the `small` preset "
            f"({size}×{size}{faces}, {config.blocks} blocks × {config.flows} "
            f"flows, hidden {config.hidden}, batch {config.batch}, "
            f"{config.iterations:,} iterations)"
        )
    if config.masks is not None:  # the folder's own holes replace the squares
        if given.get("square"):
            raise UserError(
                "--square draws squares and --masks gives the images' own holes: use one of them"
            )
        config = replace(config, square=0)
    elif "square" not in given or ("image_size" not in given and size != PAPER_SIZE):
        paper_square = config.square
        square = max(1, round(paper_square * size / PAPER_SIZE)) if paper_square else 0
        if square != paper_square:
            config = replace(config, square=square)
            scaled = (
                f"square {paper_square} px at {PAPER_SIZE}×{PAPER_SIZE} is {square} px at "
                f"{size}×{size}"
            )
            note = f"{note}; {scaled}" if note else scaled
    validate(config)
    return config, note


def validate(config):
    """UserErrors for settings that cannot train: each setting's own range (which the command line
    checks already; this is for configs built in Python), then the checks across settings."""
    for f in fields(config):
        problem = out_of_range(f, getattr(config, f.name))
        if problem:
            flag = f.metadata["flag"]
            name = f"{f.name} ({flag})" if flag and "/" not in flag else f.name
            raise UserError(f"{name} {problem}")
    size, blocks = config.image_size, config.blocks
    if size % 2**blocks:
        raise UserError(f"image size {size} must be divisible by 2^blocks = {2**blocks}")
    if config.precision != "fp32" and config.impl == "reference":
        raise UserError(
            f"--precision {config.precision} runs on the fused flow steps; the "
            "reference is full precision: drop --impl reference"
        )
    if config.masks is not None and config.data is None:
        raise UserError(
            "--masks gives the holes of an image folder's images: pass that folder with --data"
        )
    if config.complete and config.masks is None and not (config.square and config.squares):
        raise UserError(
            "--complete fills holes, and these images have none: give --square K (or --masks)"
        )
    if config.square > size:
        raise UserError(
            f"a {config.square}-px square does not fit a {size}×{size} image; "
            f"choose --square ≤ {size}"
        )


def value_type(f):
    """A field's type without its None: int for `int | None`."""
    if isinstance(f.type, types.UnionType):
        return next(t for t in f.type.__args__ if t is not type(None))
    return f.type


def out_of_range(f, value):
    """What is wrong with `value` for field f ("must be at least 1, not 0"), or None."""
    if value is None:
        return None if isinstance(f.type, types.UnionType) else "must be given"
    kind, meta = value_type(f), f.metadata
    wrong_kind = not isinstance(value, kind) and not (kind is float and isinstance(value, int))
    if wrong_kind or isinstance(value, bool) != (kind is bool):
        return f"must be {kind.__name__}, not {value!r}"
    if kind is float and not math.isfinite(value):
        return f"must be a finite number, not {value}"
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"must be {' or '.join(map(str, meta['choices']))}, not {value!r}"
    low, high, above = meta["at_least"], meta["at_most"], meta["above"]
    if low is not None and high is not None and not low <= value <= high:
        return f"must be {low} to {high}, not {value}"
    if low is not None and not value >= low:
        return f"must be at least {low}, not {value}"
    if above is not None and not value > above:
        return f"must be more than {above}, not {value}"
    return None
