"""Quantisation, dequantisation and the bits-per-dim loss (docs/conventions.md §1; rosinality's
train.py).

Images in [0, 1] become multiples of 1/2^b in [−0.5, 0.5); training adds U(0, 1/2^b) noise so the
model sees a continuous density whose integral over each bin is the discrete probability.
"""
import math

import torch


def quantize(images, n_bits=5):
    """[0, 1] images → floor(x·255 / 2^(8−b)) / 2^b − 0.5; grey 128/255 maps to exactly 0 at 5 bits.
    """
    bins = 2 ** n_bits
    return torch.floor(images * 255 / 2 ** (8 - n_bits)) / bins - 0.5


def dequantize(quantized, n_bits=5, generator=None):
    """Add U(0, 1/2^b) noise: the continuous input the flow is trained on."""
    noise = torch.rand(quantized.shape, generator=generator, dtype=quantized.dtype,
                       device=quantized.device)
    return quantized + noise / 2 ** n_bits


def to_unit_range(x):
    """Model space [−0.5, 0.5) → displayable [0, 1]; non-finite values are left for the caller to
    count."""
    return (x + 0.5).clamp(0, 1)


def bits_per_dim(log_prob, n_bits, dims):
    """(−log p(x) + D·log 2^b) / (D·log 2): the cost of the discretised image in bits per number."""
    return (-log_prob + dims * math.log(2 ** n_bits)) / (dims * math.log(2))


def luma(images):
    """RGB [0, 1] images (..., 3, S, S) → grey (..., 1, S, S) on 8-bit values, rounded as Pillow's
    convert("L") rounds: a grey image (R = G = B) keeps its exact values."""
    v = (images.double() * 255).round()
    y = torch.floor((v[..., 0:1, :, :] * 19595 + v[..., 1:2, :, :] * 38470
                     + v[..., 2:3, :, :] * 7471 + 32768) / 65536)
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
    return quantize(match_channels(images, channels), n_bits) + 0.5 / 2 ** n_bits


def from_model(x, n_bits):
    """Model space → [0, 1] RGB images (a one-channel model's repeated to R = G = B); images
    with any non-finite value become all-NaN (counted by callers, drawn as a checkerboard by
    images.grid)."""
    out = to_unit_range(x - 0.5 / 2 ** n_bits)
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        out = out.clone()
        out[bad] = float("nan")
    return match_channels(out, 3)
