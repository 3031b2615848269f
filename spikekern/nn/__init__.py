"""Drop-in modules: SpikingJelly-compatible neurons backed by spikekern's fused ops."""

from .neuron import BaseNode, IFNode, LIFNode, ParametricLIFNode

__all__ = ["BaseNode", "IFNode", "LIFNode", "ParametricLIFNode"]
