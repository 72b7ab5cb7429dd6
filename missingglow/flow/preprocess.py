"""Quantisation, dequantisation and the bits-per-dim loss (docs/conventions.md §1; rosinality's
train.py), and the exact way between images and model space.

Images in [0, 1] become multiples of 1/2^b in [−0.5, 0.5); training adds U(0, 1/2^b) noise so the
model sees a continuous density whose integral over each bin is the discrete probability.

Model space counts intensity in 256ths (bin j of width w = 2^(8−b) 8-bit values starts at
j·w/256), so images enter at their bin's centre (`to_model`) and leave by the affine map that sends
each bin's centre to the bin's representative 8-bit value (`from_model`, `bin_representatives`).
Both ways are exact on quantised images and on the grid of centres, so an image written as a PNG,
read back and encoded again lands on the same point, at every n_bits.
"""

import math

import torch


def quantize(images, n_bits=5):
    """[0, 1] images → bin j = floor(k / 2^(8−b)) of their 8-bit value k = round(255·x), as the
    bin's lower edge j/2^b − 0.5; grey 128/255 maps to exactly 0 at 5 bits.

    Rounding to the 8-bit value first keeps k/255 in its bin however the float was made: a product
    such as (k/255)·255 can land a hair below k, and flooring it would drop a whole bin."""
    levels = torch.round(images * 255)
    return torch.floor(levels / 2 ** (8 - n_bits)) / 2**n_bits - 0.5


def bin_representatives(n_bits):
    """The 8-bit value each of the 2^b bins comes out as, (2^b,) int64: the bin's centre (the
    mean of its 8-bit values, for unbiased brightness) rounded up to a whole value, j·w + w//2 with
    w = 2^(8−b); that is the centre on model space's 256ths scale. A whole value is what a PNG
    holds exactly, and it sits at least half a level inside its bin, so float error in a flow's
    round trip cannot carry it into another."""
    w = 2 ** (8 - n_bits)
    return torch.arange(2**n_bits) * w + w // 2


def dequantize(quantized, n_bits=5, generator=None):
    """Add U(0, 1/2^b) noise: the continuous input the flow is trained on."""
    noise = torch.rand(
        quantized.shape, generator=generator, dtype=quantized.dtype, device=quantized.device
    )
    return quantized + noise / 2**n_bits


def to_unit_range(x):
    """Model space [−0.5, 0.5) → displayable [0, 1]; non-finite values are left for the caller to
    count."""
    return (x + 0.5).clamp(0, 1)


def bits_per_dim(log_prob, n_bits, dims):
    """(−log p(x) + D·log 2^b) / (D·log 2): the cost of the discretised image in bits per number."""
    return (-log_prob + dims * math.log(2**n_bits)) / (dims * math.log(2))


def luma(images):
    """RGB [0, 1] images (..., 3, S, S) → grey (..., 1, S, S) on 8-bit values, rounded as Pillow's
    convert("L") rounds: a grey image (R = G = B) keeps its exact values."""
    v = (images.double() * 255).round()
    y = torch.floor(
        (v[..., 0:1, :, :] * 19595 + v[..., 1:2, :, :] * 38470 + v[..., 2:3, :, :] * 7471 + 32768)
        / 65536
    )
    return (y / 255).to(images.dtype)


def match_channels(images, channels):
    """Images in [0, 1] with the channels a model takes: RGB → grey by `luma` for a one-channel
    model, grey → RGB by repetition (docs/conventions.md §1)."""
    have = images.shape[-3]
    if channels is None or have == channels:
        return images
    if have == 3 and channels == 1:
        return luma(images)
    if have == 1 and channels == 3:
        return torch.cat([images] * 3, dim=-3)
    raise ValueError(f"cannot turn {have}-channel images into {channels}-channel ones")


def to_model(images, n_bits, channels=None):
    """[0, 1] images → model space, at the centre of each quantisation bin; `channels`: the
    model's (RGB images meet a one-channel model as their luma)."""
    return quantize(match_channels(images, channels), n_bits) + 0.5 / 2**n_bits


def from_model(x, n_bits):
    """Model space → [0, 1] RGB images (a one-channel model's repeated to R = G = B): the affine map
    that sends each bin's centre exactly to its representative k/255 (`bin_representatives`), and
    points between centres in proportion. Images with any non-finite value become all-NaN (counted
    by callers, drawn as a checkerboard by images.grid)."""
    w = 2 ** (8 - n_bits)
    # 256·(x + 0.5) is the 8-bit scale of model space; at 8 bits a centre is j + ½, so ½ comes off
    out = (((x + 0.5) * 256 + (w // 2 - w / 2)) / 255).clamp(0, 1)
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        out = out.clone()
        out[bad] = float("nan")
    return match_channels(out, 3)
