"""Importing rosinality/glow-pytorch checkpoints.

The state dicts here are built by hand in rosinality's key layout, and the expected numbers come
from a separate functional forward pass written from docs/conventions.md §1 that reads those keys
directly, so the import is checked against the format, not against our own module tree.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from missingglow import UserError, from_rosinality


def rosinality_state(gen, blocks=3, flows=2, hidden=6, affine=True, lu=(True, True, True), c=3):
    """A random, non-degenerate state dict with rosinality's keys (prefixed as DataParallel
    saves)."""

    def rnd(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    sd = {}
    for b in range(blocks):
        ch = c * 4 * 2**b
        for f in range(flows):
            p = f"blocks.{b}.flows.{f}."
            sd[p + "actnorm.loc"] = rnd(1, ch, 1, 1)
            sd[p + "actnorm.scale"] = 1 + rnd(1, ch, 1, 1)
            sd[p + "actnorm.initialized"] = torch.tensor(1, dtype=torch.uint8)
            if lu[b]:
                perm = torch.randperm(ch, generator=gen)
                sd[p + "invconv.w_p"] = torch.eye(ch, dtype=torch.float64)[perm]
                sd[p + "invconv.u_mask"] = torch.triu(torch.ones(ch, ch, dtype=torch.float64), 1)
                sd[p + "invconv.l_mask"] = sd[p + "invconv.u_mask"].T.contiguous()
                sd[p + "invconv.s_sign"] = torch.sign(torch.randn(ch, generator=gen)).double()
                sd[p + "invconv.l_eye"] = torch.eye(ch, dtype=torch.float64)
                sd[p + "invconv.w_l"] = rnd(ch, ch) / ch**0.5
                sd[p + "invconv.w_s"] = rnd(ch)
                sd[p + "invconv.w_u"] = rnd(ch, ch) / ch**0.5
            else:
                sd[p + "invconv.weight"] = torch.linalg.qr(rnd(ch, ch))[0].view(ch, ch, 1, 1)
            out = ch if affine else ch // 2
            sd[p + "coupling.net.0.weight"] = rnd(hidden, ch // 2, 3, 3)
            sd[p + "coupling.net.0.bias"] = rnd(hidden)
            sd[p + "coupling.net.2.weight"] = rnd(hidden, hidden, 1, 1)
            sd[p + "coupling.net.2.bias"] = rnd(hidden)
            sd[p + "coupling.net.4.conv.weight"] = rnd(out, hidden, 3, 3)
            sd[p + "coupling.net.4.conv.bias"] = rnd(out)
            sd[p + "coupling.net.4.scale"] = rnd(1, out, 1, 1)
        last = b == blocks - 1
        prior_in, prior_out = (ch, 2 * ch) if last else (ch // 2, ch)
        sd[f"blocks.{b}.prior.conv.weight"] = rnd(prior_out, prior_in, 3, 3)
        sd[f"blocks.{b}.prior.conv.bias"] = rnd(prior_out)
        sd[f"blocks.{b}.prior.scale"] = rnd(1, prior_out, 1, 1)
    return {"module." + k: v for k, v in sd.items()}


def spec_forward(sd, x, blocks, flows, affine):
    """log p(x) and Φ(x) computed straight from the keys, following docs/conventions.md §1–2
    line by line."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    n = x.shape[0]
    out, logdet, log_p, eps = x, torch.zeros(n, dtype=x.dtype), torch.zeros(n, dtype=x.dtype), []

    def zero_conv(prefix, h):
        h = F.conv2d(
            F.pad(h, [1, 1, 1, 1], value=1), sd[prefix + "conv.weight"], sd[prefix + "conv.bias"]
        )
        return h * torch.exp(3 * sd[prefix + "scale"])

    for b in range(blocks):
        _, c, s, _ = out.shape
        out = out.view(n, c, s // 2, 2, s // 2, 2).permute(0, 1, 3, 5, 2, 4)
        out = out.reshape(n, 4 * c, s // 2, s // 2)
        hw = (s // 2) ** 2
        for f in range(flows):
            p = f"blocks.{b}.flows.{f}."
            out = sd[p + "actnorm.scale"] * (out + sd[p + "actnorm.loc"])
            logdet = logdet + hw * torch.log(sd[p + "actnorm.scale"].abs()).sum()
            if p + "invconv.w_s" in sd:

                def g(k, p=p):
                    return sd[p + "invconv." + k]

                w = (
                    g("w_p")
                    @ (g("w_l") * g("l_mask") + g("l_eye"))
                    @ (g("w_u") * g("u_mask") + torch.diag(g("s_sign") * torch.exp(g("w_s"))))
                )
                logdet = logdet + hw * g("w_s").sum()
            else:
                w = sd[p + "invconv.weight"][:, :, 0, 0]
                logdet = logdet + hw * torch.linalg.slogdet(w)[1]
            out = F.conv2d(out, w[:, :, None, None])
            xa, xb = out.chunk(2, 1)
            h = F.relu(
                F.conv2d(
                    xa, sd[p + "coupling.net.0.weight"], sd[p + "coupling.net.0.bias"], padding=1
                )
            )
            h = F.relu(F.conv2d(h, sd[p + "coupling.net.2.weight"], sd[p + "coupling.net.2.bias"]))
            h = zero_conv(p + "coupling.net.4.", h)
            if affine:
                log_s, t = h.chunk(2, 1)
                scale = torch.sigmoid(log_s + 2)
                xb = (xb + t) * scale
                logdet = logdet + torch.log(scale).flatten(1).sum(1)
            else:
                xb = xb + h
            out = torch.cat([xa, xb], 1)
        if b < blocks - 1:
            out, z = out.chunk(2, 1)
            mean, log_sd = zero_conv(f"blocks.{b}.prior.", out).chunk(2, 1)
        else:
            z = out
            mean, log_sd = zero_conv(f"blocks.{b}.prior.", torch.zeros_like(out)).chunk(2, 1)
        log_p = log_p + (
            -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (z - mean) ** 2 / torch.exp(2 * log_sd)
        ).flatten(1).sum(1)
        eps.append(((z - mean) / torch.exp(log_sd)).flatten(1))
    return log_p + logdet, torch.cat(eps, 1)


@pytest.mark.parametrize(
    "affine,lu",
    [
        (True, (True, True, True)),
        (False, (True, True, True)),
        (
            True,
            (False, False, True),
        ),  # rosinality builds its last block in LU form even with --no_lu
    ],
)
def test_import_matches_the_spec_forward(gen, affine, lu):
    sd = rosinality_state(gen, affine=affine, lu=lu)
    model = from_rosinality(sd, image_size=16).double()
    assert (model.config["blocks"], model.config["flows"], model.config["hidden"]) == (3, 2, 6)
    assert model.config["affine"] is affine
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64) - 0.5
    expected_lp, expected_eps = spec_forward(sd, x, 3, 2, affine)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected_lp, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(model.encode(x), expected_eps, rtol=1e-10, atol=1e-9)


def test_import_from_file_without_prefix(gen, tmp_path):
    sd = {k.removeprefix("module."): v.float() for k, v in rosinality_state(gen).items()}
    path = tmp_path / "model_000100.pt"
    torch.save(sd, path)
    model = from_rosinality(str(path), image_size=16)
    x = torch.rand(1, 3, 16, 16, generator=gen) - 0.5
    expected, _ = spec_forward(sd, x, 3, 2, True)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-4, atol=1e-3)


def test_our_state_dict_round_trips(gen):
    sd = rosinality_state(gen)
    model = from_rosinality(sd, image_size=16)
    again = from_rosinality(model.state_dict(), image_size=16)
    x = torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(again.double().log_prob(x), model.double().log_prob(x))


def test_foreign_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        from_rosinality(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        from_rosinality(str(junk))
    with pytest.raises(UserError, match="no Glow flow weights"):
        from_rosinality({"encoder.weight": torch.zeros(2)})
