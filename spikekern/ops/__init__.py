"""spikekern's ops: each is a ``torch.library`` custom op with a PyTorch reference, a Triton kernel
and, for the neuron ops, a CUDA C++ kernel, chosen per call (``backend=``) by rules that say why a
backend cannot run (``available_backends``, and the spike ops' ``*_plan`` functions)."""

from ._dispatch import BACKENDS, available_backends
from .conv_bn_lif import conv_bn_lif_inference
from .leaky import leaky_multistep
from .neuron import if_multistep, lif_multistep, plif_multistep
from .spike_conv2d import spike_conv2d, spike_conv2d_plan
from .spike_linear import spike_linear, spike_linear_plan
from .spike_pack import pack_spikes, set_validation, unpack_spikes
from .surrogate import SURROGATES

__all__ = [
    "BACKENDS", "SURROGATES", "available_backends", "conv_bn_lif_inference", "if_multistep", "leaky_multistep", "lif_multistep",
    "pack_spikes", "plif_multistep", "set_validation", "spike_conv2d", "spike_conv2d_plan", "spike_linear",
    "spike_linear_plan", "unpack_spikes",
]  # fmt: skip
