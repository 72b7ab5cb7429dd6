"""A trained Glow from Python: images in, images out (docs/api.md).

    flow = missingglow.load("runs/small-…")   # a run folder, a checkpoint, rosinality's model_*.pt
    samples = flow.sample(16, temperature=0.7, seed=0)
    restored = flow.invert(images, hole)
    draws = flow.posterior(images, hole, 16, temperature=1.0, seed=0)

Every method takes and returns float image tensors (N, C, S, S) with values in [0, 1], C = 3 (RGB)
or 1 (grey), and hides the model space (quantisation to the run's n_bits, bin centres) that the
command line uses, so numbers and images match what `missingglow` commands report. The analysis
modules are imported inside the methods, so `import missingglow` stays light.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .errors import UserError
from .flow.preprocess import bits_per_dim as _bits_per_dim
from .flow.preprocess import from_model as _from_model
from .flow.preprocess import match_channels, quantize
from .flow.preprocess import to_model as _to_model
from .seeding import generator

if TYPE_CHECKING:
    from .flow.model import Glow


class Flow:
    """A Glow with the preprocessing it was trained with.

    Images are float tensors (N, C, S, S) in [0, 1]: RGB (C = 3) or grey (C = 1; a grey image meets
    an RGB model as R = G = B, an RGB image meets a one-channel model as its luma). Images come out
    with the model's channels; an image whose flow inverse was not finite comes out all-NaN. Inputs
    are quantised to the run's `n_bits` on the way in, so an image that went out comes back in
    exactly. Methods run without gradients (use `model` in model space for those); an untrained
    Glow initialises its ActNorms on the first images it sees, as in training.
    """

    def __init__(
        self, model: Glow, n_bits: int = 5, config: dict | None = None, path: str | None = None
    ):
        if not 1 <= n_bits <= 8:
            raise UserError(f"n_bits must be 1 to 8, not {n_bits}")
        self.model = model.eval()
        self.n_bits = int(n_bits)
        self.config: dict = dict(config or {})  # the training config; {} for an imported model
        self.path = path

    @property
    def image_size(self) -> int:
        """The side S of the images the model samples (it encodes any side divisible by
        2^blocks)."""
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.in_channels

    @property
    def square(self) -> int | None:
        """The side of the grey squares it was trained with (None when unknown)."""
        return self.config.get("square")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Flow:
        """Move the model; inputs follow it and outputs stay there."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        where = f"{self.path!r}, " if self.path else ""
        return (
            f"Flow({where}{self.channels}×{self.image_size}×{self.image_size}, {self.n_bits} bits)"
        )

    # --- between images and model space -----------------------------------------------------------

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """Images → model space: quantised to n_bits, at the centre of each bin."""
        return self._placed(_to_model(self._images(images), self.n_bits, self.channels))

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model space → images with the model's channels (a bin's centre → its 8-bit value)."""
        return _from_model(x, self.n_bits)[:, : self.channels]

    # --- the model ----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7, seed: int = 0) -> torch.Tensor:
        """n images from ε ~ N(0, t²·I): the samples `missingglow sample` and `missingglow squares`
        draw with the same seed and temperature."""
        from .analysis.runs import sample_images

        if n < 1 or temperature < 0:
            raise UserError(
                f"sample takes n >= 1 and temperature >= 0, not n={n}, temperature={temperature}"
            )
        images = sample_images(self, int(n), temperature, seed)
        return images[:, : self.channels].to(self.device)

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """(N,) bits per dimension of each image as the discrete image the model is trained on:
        −log₂ P(image) / D at the run's n_bits, with P estimated by one seeded draw of the
        dequantisation noise, as training's held-out bits/dim and `evaluate` do (in expectation an
        upper bound on the exact value). D = C·S·S of the model's channels; for the log-probability
        in nats, multiply by −D·ln 2."""
        x = self._placed(
            quantize(match_channels(self._images(images), self.channels), self.n_bits)
        )  # each bin's lower edge
        noise = torch.rand(x.shape, generator=generator(seed, "bits-per-dim"), dtype=x.dtype)
        x = x + noise.to(x.device) / 2**self.n_bits
        return _bits_per_dim(self.model.log_prob(x), self.n_bits, x[0].numel())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Φ(x): the standardised latent, (N, D), N(0, I) under the model; D = C·S·S."""
        return self.model.encode(self.to_model(images))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Φ⁻¹: an (N, D) standardised latent → images (the side follows from D)."""
        if not isinstance(latent, torch.Tensor) or latent.dim() != 2:
            raise UserError(f"decode takes an (N, D) latent tensor, not {_describe(latent)}")
        try:
            x = self.model.decode(self._placed(latent))
        except ValueError as err:
            raise UserError(str(err)) from None
        return self.from_model(x)

    @torch.no_grad()
    def impute(
        self,
        images: torch.Tensor,
        alpha: float = 0.6,
        mask: torch.Tensor | None = None,
        iterations: int = 1,
    ) -> torch.Tensor:
        """The paper's x' = Φ⁻¹(α·Φ(x)): α < 1 pulls the latent toward the centre, where squares
        are absent. With `mask` (True where pixels are missing), pixels outside it keep the input
        and the step repeats `iterations` times."""
        from .analysis.impute import restore

        images = self._images(images)
        mask = None if mask is None else self._mask(mask, images).to(self.device)
        out = restore(self.model, self._placed(images), [alpha], self.n_bits, mask, iterations)
        return out[0][:, : self.channels]

    def invert(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        samples: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> torch.Tensor:
        """Restore the pixels where `mask` is True by latent-norm inversion (docs/imputation.md):
        the image of a small latent that fits every observed pixel, observed pixels kept exactly.

        `samples=None` gives one deterministic completion per image, (N, C, S, S); `samples=k`
        gives k per image, (k, N, C, S, S), the first the deterministic one and the others from
        seeded perturbations of its start. `options`: gamma, steps, lr, alpha, start ("fill" or
        "input"), optimiser ("adam" or "sgd"), spread (completion/invert.py's defaults)."""
        from .completion.invert import invert

        unknown = sorted(set(options) - INVERT_OPTIONS)
        if unknown:
            raise UserError(
                f"invert has no option {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(INVERT_OPTIONS))}"
            )
        if samples is not None and samples < 1:
            raise UserError(f"samples must be at least 1, not {samples}")
        images = self._images(images)
        mask = self._mask(mask, images).to(self.device)
        try:
            out, _ = invert(
                self.model,
                self.to_model(images),
                mask,
                samples=samples or 1,
                generator=generator(seed, "invert"),
                **options,
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        out = torch.stack([self.from_model(completion) for completion in out])
        return out[0] if samples is None else out

    def posterior(
        self,
        images: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        temperature: float | None = None,
        seed: int = 0,
        warmup: int | None = None,
        steps: int | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """n completions per image drawn from the posterior over latents given the observed
        pixels (docs/imputation.md), observed pixels kept exactly: (n, N, C, S, S).

        MALA chains start at `invert`'s completion and run `warmup` steps that adapt their step
        sizes, then `steps` kept ones (`missingglow impute --samples`' defaults). `temperature`
        is the prior's, N(0, t²·I) on the latent. `options`: invert's, for the completion the
        chains start from (its steps as `map_steps`); its gamma also sets the observation noise
        σ² = γ·M/D. The same seed gives the same draws."""
        from .analysis.impute import SAMPLING, map_and_draws

        unknown = sorted(set(options) - POSTERIOR_OPTIONS)
        if unknown:
            raise UserError(
                f"posterior has no option {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(POSTERIOR_OPTIONS))}"
            )
        if n < 1:
            raise UserError(f"n must be at least 1, not {n}")
        sampling = dict(SAMPLING)
        for key, value in (("temperature", temperature), ("warmup", warmup), ("steps", steps)):
            sampling[key] = sampling[key] if value is None else value
        if "map_steps" in options:
            options["steps"] = options.pop("map_steps")
        images = self._images(images)
        mask = self._mask(mask, images).to(self.device)
        try:
            _, draws, _, _ = map_and_draws(
                self.model,
                self.to_model(images),
                mask,
                int(n),
                generator(seed, "posterior"),
                sampling=sampling,
                **options,
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        return torch.stack([self.from_model(draw) for draw in draws])

    # --- checks -------------------------------------------------------------------------------

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        """On the model's device, in its dtype."""
        param = next(self.model.parameters())
        return tensor.to(param.device, param.dtype)

    def _images(self, images: Any) -> torch.Tensor:
        if (
            not isinstance(images, torch.Tensor)
            or images.dim() != 4
            or images.shape[1] not in (1, 3)
        ):
            raise UserError(
                f"expected images as an (N, C, S, S) tensor with C = 1 or 3, not "
                f"{_describe(images)}"
            )
        if not images.is_floating_point():
            raise UserError(
                f"images must be floats in [0, 1], not {images.dtype} (8-bit images: divide by 255)"
            )
        side, step = images.shape[-1], 2 ** len(self.model.blocks)
        if images.shape[-2] != side or side % step:
            raise UserError(
                f"images must be square with a side divisible by {step}, not "
                f"{tuple(images.shape[-2:])}"
            )
        if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
            raise UserError(
                f"image values must be in [0, 1], not {images.min().item():g} to "
                f"{images.max().item():g}"
            )
        return images

    def _mask(self, mask: Any, images: torch.Tensor) -> torch.Tensor:
        """(S, S), (1, S, S) or (N or 1, 1, S, S), True where missing → (N, 1, S, S) bool."""
        n, side = images.shape[0], images.shape[-1]
        if (
            not isinstance(mask, torch.Tensor)
            or mask.shape[-2:] != (side, side)
            or mask.dim() not in (2, 3, 4)
            or mask.shape[:-2].numel() not in (1, n)
            or (mask.dim() == 4 and mask.shape[1] != 1)
        ):
            raise UserError(
                f"the mask must be (S, S), (1, S, S) or (N, 1, S, S) for {n} images "
                f"of side {side}, True where pixels are missing; got "
                f"{_describe(mask)}"
            )
        return mask.bool().reshape(-1, 1, side, side).expand(n, 1, side, side)


INVERT_OPTIONS = {"gamma", "steps", "lr", "alpha", "start", "optimiser", "spread", "on_step"}
POSTERIOR_OPTIONS = {"gamma", "map_steps", "lr", "alpha", "start", "optimiser"}


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} tensor"
    return f"a {type(value).__name__}"


def load(path: str | os.PathLike, image_size: int | None = None) -> Flow:
    """Open a trained model: a run folder, a checkpoint file written by `missingglow train`, or a
    rosinality/glow-pytorch `model_*.pt` state dict (5 bits; its image side, which the file does
    not hold, is `image_size`, default 64). Anything else is a UserError. `image_size` changes the
    side that `sample` draws."""
    from .training.checkpoint import load_model

    def say(message: str) -> None:
        warnings.warn(message, stacklevel=3)

    path = os.fspath(path)
    try:
        model, payload = load_model(path, image_size=image_size, say=say)
    except ValueError as err:  # an image_size the model's blocks cannot halve
        if image_size is None:
            raise
        raise UserError(f"image_size {image_size} does not fit {path}: {err}") from None
    config = dict(payload.get("config") or {}) if payload else {}
    return Flow(model, int(config.get("n_bits", 5)), config, path)
