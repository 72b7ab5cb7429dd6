"""missingglow: Glow normalizing flows trained on images with missing squares."""

import warnings

# torch warns at import when NumPy is absent; missingglow never uses NumPy, so that is expected.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

from .api import Flow, load
from .errors import UserError
from .flow.model import Glow
from .flow.preprocess import bits_per_dim, dequantize, quantize, to_unit_range
from .flow.rosinality import from_rosinality

__all__ = [
    "Flow",
    "Glow",
    "UserError",
    "bits_per_dim",
    "dequantize",
    "from_rosinality",
    "load",
    "quantize",
    "to_unit_range",
]
