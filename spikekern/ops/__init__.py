"""spikekern's ops: each is a ``torch.library`` custom op with a PyTorch reference, a Triton kernel
and a CUDA kernel, chosen per call (``backend=``) by the rules in ``spikekern.ops._dispatch``."""

from ._dispatch import BACKENDS, available_backends
from .leaky import leaky_multistep
from .neuron import if_multistep, lif_multistep, plif_multistep
from .surrogate import SURROGATES

__all__ = [
    "BACKENDS", "SURROGATES", "available_backends", "if_multistep", "leaky_multistep", "lif_multistep", "plif_multistep"
]
