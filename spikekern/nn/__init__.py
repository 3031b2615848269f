"""Drop-in modules: SpikingJelly-compatible neurons and snnTorch's ``Leaky``, backed by spikekern's
fused ops, and stateless layers with ``step_mode``."""

from .fused import ConvBNLIFInference, fuse_conv_bn_lif
from .leaky import Leaky
from .neuron import BaseNode, IFNode, LIFNode, ParametricLIFNode
from .spike_layers import SpikeConv2d, SpikeLinear
from .stateless import (
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, GroupNorm, Linear, MaxPool2d,
    StepModeMixin, Upsample,
)  # fmt: skip

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BaseNode", "BatchNorm1d", "BatchNorm2d", "Conv2d", "ConvBNLIFInference", "Dropout", "fuse_conv_bn_lif", "Flatten",
    "GroupNorm", "IFNode", "Leaky", "LIFNode", "Linear", "MaxPool2d", "ParametricLIFNode", "SpikeConv2d", "SpikeLinear", "StepModeMixin", "Upsample",
]  # fmt: skip
