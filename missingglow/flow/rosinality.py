"""Import checkpoints written by rosinality/glow-pytorch.

Our module names follow its key layout (blocks.i.flows.j.{actnorm,invconv,coupling},
blocks.i.prior), so importing is: strip DataParallel's `module.` prefix, read the architecture
off the keys and shapes, build the matching Glow, load the state dict strictly.
"""

import os
import re

import torch

from ..errors import UserError
from .model import Glow

_FLOW_KEY = re.compile(r"blocks\.(\d+)\.flows\.(\d+)\.")


def strip_prefix(state_dict, prefix="module."):
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def infer_architecture(state_dict):
    """blocks, flows, hidden, affine, lu (per block) and in_channels from rosinality's keys and
    shapes."""
    pairs = {(int(m.group(1)), int(m.group(2))) for k in state_dict if (m := _FLOW_KEY.match(k))}
    if not pairs:
        raise UserError(
            "no Glow flow weights (blocks.N.flows.M.*) in this checkpoint; "
            "pass a model_XXXXXX.pt written by rosinality/glow-pytorch"
        )
    blocks = max(b for b, _ in pairs) + 1
    flows = max(f for _, f in pairs) + 1
    first_conv = state_dict["blocks.0.flows.0.coupling.net.0.weight"]
    hidden, half = first_conv.shape[:2]
    in_channels = half * 2 // 4
    zero_conv_out = state_dict["blocks.0.flows.0.coupling.net.4.conv.weight"].shape[0]
    affine = zero_conv_out == 4 * in_channels
    lu = [f"blocks.{b}.flows.0.invconv.w_s" in state_dict for b in range(blocks)]
    return dict(
        blocks=blocks, flows=flows, hidden=hidden, affine=affine, lu=lu, in_channels=in_channels
    )


def from_rosinality(path_or_state_dict, image_size=64):
    """A Glow with the same log-likelihood and latents as the rosinality checkpoint it is given."""
    state = path_or_state_dict
    if isinstance(state, (str, os.PathLike)):
        try:
            state = torch.load(state, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"checkpoint {state} not found") from None
        except Exception as err:
            raise UserError(
                f"cannot read {state} as a PyTorch checkpoint ({type(err).__name__}); "
                "pass a model_XXXXXX.pt from rosinality/glow-pytorch"
            ) from None
    if not isinstance(state, dict):
        raise UserError(f"a rosinality checkpoint is a state dict; got {type(state).__name__}")
    state = strip_prefix(state)
    arch = infer_architecture(state)
    lu = arch.pop("lu")
    model = Glow(**arch, lu=lu[0] if len(set(lu)) == 1 else lu, image_size=image_size)
    model.to(state["blocks.0.flows.0.coupling.net.0.weight"].dtype)  # keep a float64 import exact
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint does not match the inferred architecture {arch}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model
