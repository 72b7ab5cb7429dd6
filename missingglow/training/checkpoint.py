"""Checkpoints: written atomically, loaded with weights_only=True, validated before use.

A run folder holds `checkpoints/ckpt-XXXXXXXX.pt` and a `latest` file naming the newest one. Each
file is written to a temp file in the same folder and renamed, and `latest` is updated the same way
after it, so a run killed at any moment (SIGKILL included) leaves the previous checkpoint intact and
`latest` pointing at a whole file.
"""

import os

import torch

from ..atomic import atomic_write
from ..errors import UserError
from ..flow.model import Glow
from ..progress import echo

FORMAT = "missingglow-checkpoint"
VERSION = 1
LATEST = "latest"
FOLDER = "checkpoints"


def save_checkpoint(run_dir, payload, keep=3):
    """Write payload as checkpoints/ckpt-<iteration>.pt, point `latest` at it, keep the newest
    `keep`."""
    payload = dict(payload, format=FORMAT, version=VERSION)
    name = f"ckpt-{payload['iteration']:08d}.pt"
    path = os.path.join(run_dir, FOLDER, name)
    atomic_write(path, lambda f: _save(payload, f))
    atomic_write(os.path.join(run_dir, LATEST), lambda f: f.write(f"{FOLDER}/{name}\n".encode()))
    old = sorted(
        n
        for n in os.listdir(os.path.join(run_dir, FOLDER))
        if n.startswith("ckpt-") and n.endswith(".pt")
    )[:-keep]
    for n in old:
        os.remove(os.path.join(run_dir, FOLDER, n))
    return path


class _Writes:
    """A file as torch.save sees it, remembering the OSError a write raised: torch reports a full
    disk as its own RuntimeError, which would hide the reason."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.file.flush()


def _save(payload, file):
    writes = _Writes(file)
    try:
        torch.save(payload, writes)
    except RuntimeError:
        if writes.error is not None:
            raise writes.error from None
        raise


def resolve(path):
    """A run folder (through its `latest` pointer) or a checkpoint file → the checkpoint file."""
    if os.path.isdir(path):
        pointer = os.path.join(path, LATEST)
        if not os.path.isfile(pointer):
            raise UserError(
                f"{path} is a folder without a `latest` checkpoint; pass a run folder "
                "written by `missingglow train`, or a checkpoint file"
            )
        with open(pointer, errors="replace") as f:
            path = os.path.join(path, f.read().strip().replace("\0", ""))
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found; pass a run folder or a .pt checkpoint file")
    return path


def _read(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint {path} ({type(err).__name__}); it may be "
            "truncated or not a PyTorch file: pass another checkpoint"
        ) from None


def _validate(payload, path):
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a missingglow checkpoint; pass a run folder or a "
            "checkpoint written by `missingglow train`"
        )
    if payload.get("version", 0) > VERSION:
        raise UserError(
            f"{path} has checkpoint format {payload['version']}, newer than this "
            f"missingglow reads ({VERSION}); upgrade missingglow"
        )
    return payload


def _load(path, say):
    """(file, what it holds) for a checkpoint file, or for a run folder through `latest`.

    A run folder whose `latest` pointer is missing, damaged or names a checkpoint that does not
    load falls back to the newest checkpoint in `checkpoints/` that does, and says so."""
    if not os.path.isdir(path):
        resolved = resolve(path)
        return resolved, _read(resolved)
    try:
        resolved = resolve(path)
        return resolved, _validate(_read(resolved), resolved)
    except UserError:
        folder = os.path.join(path, FOLDER)
        if not os.path.isdir(folder):
            raise
        for name in sorted(
            (n for n in os.listdir(folder) if n.startswith("ckpt-") and n.endswith(".pt")),
            reverse=True,
        ):
            candidate = os.path.join(folder, name)
            try:
                payload = _validate(_read(candidate), candidate)
            except UserError:
                continue
            say(
                f"{os.path.join(path, LATEST)} is missing or names no checkpoint that loads; "
                f"using {FOLDER}/{name}, the newest one that does"
            )
            return candidate, payload
        raise


def load_checkpoint(path, say=echo):
    """The validated payload of a missingglow checkpoint (a run folder or a file)."""
    resolved, raw = _load(path, say)
    return _validate(raw, resolved)


def build_model(model_config, state_dict=None):
    """A Glow from its stored config, with weights loaded strictly (a mismatch is a UserError)."""
    try:
        model = Glow(**model_config)
    except TypeError as err:
        raise UserError(
            f"the checkpoint's model options are not understood ({err}); "
            "it was written by another missingglow version"
        ) from None
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise UserError(
                f"the checkpoint's weights do not fit its stated architecture "
                f"({model_config}): {details[0] if details else err}"
            ) from None
    return model


def load_model(path, image_size=None, say=echo):
    """(model in eval mode, payload) from a run folder, a missingglow checkpoint, or a
    rosinality/glow-pytorch state dict (payload is then None; image_size defaults to 64)."""
    resolved, raw = _load(path, say)
    if (
        isinstance(raw, dict)
        and raw.get("format") != FORMAT
        and any(k.split("module.")[-1].startswith("blocks.") for k in raw)
    ):
        from ..flow.rosinality import from_rosinality

        return from_rosinality(raw, image_size=image_size or 64).eval(), None
    payload = _validate(raw, resolved)
    config = dict(payload["model_config"])
    if image_size is not None:
        config["image_size"] = image_size
    return build_model(config, payload["model"]).eval(), payload
