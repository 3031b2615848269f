"""spikekern: fused Triton and CUDA kernels for spiking neural networks and spiking diffusion models."""

from . import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
