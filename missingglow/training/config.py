"""Training presets and how a command line becomes a full training configuration.

`paper` is the setting of the paper and of rosinality/glow-pytorch's train.py. `small` is sized
for a 2-core CPU on the synthetic faces (docs/conventions.md §4); what it can and cannot show is in
docs/phenomenon.md. With no GPU and no architecture given, `train` picks `small`.
"""
import torch

from ..data.synthetic import DETAILS
from ..errors import UserError

PAPER_SIZE = 64  # the image side the paper's square sizes refer to

PRESETS = {
    "paper": dict(image_size=64, blocks=4, flows=32, hidden=512, n_bits=5, batch=16,
                  iterations=200_000, square=20, lr=1e-4, warmup=0),
    # Sized so a 2-core CPU trains it in minutes. lr 1e-3 with a 200-step warm-up learns faster
    # than the paper's 1e-4 and stays free of NaNs at this size. The low-detail faces
    # (synthetic.DETAILS) are the scale study's best lever: squares appear in samples at high t and
    # not at low t within the preset's iterations, where the full-detail faces need several times
    # as many (docs/phenomenon.md has the measurements).
    "small": dict(image_size=16, blocks=3, flows=8, hidden=64, n_bits=5, batch=64,
                  iterations=6_000, square=20, lr=1e-3, warmup=200, synthetic_detail="low"),
}

DEFAULTS = dict(
    preset=None, data=None, synthetic_count=10_000, synthetic_detail="full", squares=1, affine=True,
    lu=True, grad_clip=50.0, seed=0, impl=None, memory_saving=False, sample_every=1000,
    eval_every=500, checkpoint_every=500, log_every=50, heldout_images=256, max_bad_steps=5,
    temperature=0.7, channels=None,  # None: 1 for a dataset of grey images, else 3
    out=None,
)

ARCHITECTURE = ("blocks", "flows", "hidden")


def resolve_config(options, has_gpu=None):
    """Options given on the command line (None = not given) → (full config, one-line note or None).

    The preset fills what was not given. A square size taken from a preset, or given together with
    a preset whose images are not 64 px, is in the paper's 64-px scale and is scaled to the image
    (20 px at 64×64 is 5 px at 16×16); the note says so.
    """
    given = {k: v for k, v in options.items() if v is not None}
    has_gpu = torch.cuda.is_available() if has_gpu is None else has_gpu
    note = None
    name = given.get("preset")
    if name is None:
        name = "paper" if has_gpu or any(k in given for k in ARCHITECTURE) else "small"
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = dict(DEFAULTS)
    config.update(PRESETS[name])
    config.update(given)
    config["preset"] = name
    size = config["image_size"]
    if "preset" not in given and name == "small":
        faces = ", low-detail synthetic faces" if config["data"] is None and \
            config["synthetic_detail"] == "low" else ""
        note = (f"no GPU and no architecture given: using the `small` preset "
                f"({size}×{size}{faces}, {config['blocks']} blocks × {config['flows']} "
                f"flows, hidden {config['hidden']}, batch {config['batch']}, "
                f"{config['iterations']:,} iterations)")
    if "square" not in given or ("image_size" not in given and size != PAPER_SIZE):
        paper_square = config["square"]
        config["square"] = max(1, round(paper_square * size / PAPER_SIZE)) if paper_square else 0
        if config["square"] != paper_square:
            scaled = (f"square {paper_square} px at {PAPER_SIZE}×{PAPER_SIZE} is "
                      f"{config['square']} px at {size}×{size}")
            note = f"{note}; {scaled}" if note else scaled
    validate(config)
    return config, note


def validate(config):
    """UserErrors for settings that cannot train."""
    size, blocks = config["image_size"], config["blocks"]
    checks = [
        (size >= 2 and size % 2 ** blocks == 0,
         f"image size {size} must be divisible by 2^blocks = {2 ** blocks}"),
        (blocks >= 1 and config["flows"] >= 1 and config["hidden"] >= 1,
         "blocks, flows and hidden must be at least 1"),
        (1 <= config["n_bits"] <= 8, f"n_bits must be 1 to 8, not {config['n_bits']}"),
        (config["batch"] >= 1, f"batch must be at least 1, not {config['batch']}"),
        (config["iterations"] >= 0, "iterations must be 0 or more"),
        (config["lr"] > 0, f"learning rate must be positive, not {config['lr']}"),
        (0 <= config["square"] <= size, f"a {config['square']}-px square does not fit a "
                                        f"{size}×{size} image; choose --square ≤ {size}"),
        (config["squares"] >= 0, "--squares (squares per image) must be 0 or more"),
        (config["impl"] in (None, "fused", "reference"), "impl must be fused or reference"),
        (config.get("channels") in (None, 1, 3), "channels must be 1 or 3"),
        (config["synthetic_detail"] in DETAILS,
         f"--synthetic-detail must be {' or '.join(DETAILS)}, not {config['synthetic_detail']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
