"""spikekern: fused Triton and CUDA kernels for spiking neural networks and spiking diffusion models."""

from . import functional, nn, ops, surrogate
from .convert import ConversionReport, convert
from .ops import set_validation

__version__ = "0.1.0"
__all__ = ["ConversionReport", "convert", "functional", "nn", "ops", "set_validation", "surrogate", "__version__"]
