"""``spikekern.convert(model)``: swap an existing SpikingJelly or snnTorch model's neurons for
spikekern's, in place.

Every SpikingJelly ``IFNode``, ``LIFNode`` and ``ParametricLIFNode`` and every snnTorch ``Leaky`` whose
configuration the fused kernels reproduce exactly is replaced by the spikekern module with the same
arguments, the same parameters and buffers (the same ``Parameter`` objects, so optimizers keep
working) and the same state. Everything else is left as it was, and the report says why.
"""

from dataclasses import dataclass, field

import torch

from .nn.leaky import Leaky, snntorch_surrogate_spec
from .nn.neuron import BaseNode, IFNode, LIFNode, ParametricLIFNode
from .nn.spike_layers import SpikeConv2d, SpikeLinear
from .ops import BACKENDS
from .surrogate import surrogate_spec


@dataclass
class ConversionReport:
    replaced: list = field(default_factory=list)  # (qualified name, old class, new class)
    left: list = field(default_factory=list)  # (qualified name, class, reason)

    def __str__(self):
        lines = [f"replaced {len(self.replaced)} module(s), left {len(self.left)}"]
        lines += [f"  replaced {name or '<model>'}: {old} -> {new}" for name, old, new in self.replaced]
        lines += [f"  left {name or '<model>'} ({cls}): {reason}" for name, cls, reason in self.left]
        return "\n".join(lines)


def _class_name(module):
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _neuron_kind(module):
    """'IFNode', 'LIFNode', 'ParametricLIFNode' (SpikingJelly) or 'Leaky' (snnTorch), else None."""
    cls = type(module)
    if cls.__module__.startswith("spikingjelly.") and cls.__name__ in ("IFNode", "LIFNode", "ParametricLIFNode"):
        return cls.__name__
    if cls.__module__.startswith("snntorch.") and cls.__name__ == "Leaky":
        return "Leaky"
    return None


def _why_not_convertible(module, kind):
    try:
        if kind == "Leaky":
            snntorch_surrogate_spec(module.spike_grad)
        else:
            surrogate_spec(module.surrogate_function)
    except TypeError as error:
        return str(error)
    if kind == "Leaky":
        for name, default in (("inhibition", False), ("state_quant", False), ("surrogate_disable", False), ("reset_delay", True)):
            if getattr(module, name, default) != default:
                return f"{name}={getattr(module, name)!r} is not supported"
    elif getattr(module, "_neuron_precision", None) is not None:
        return "a custom neuron precision (set_neuron_precision) is not supported"
    return None


def _spikekern_leaky(module, backend):
    new = Leaky(
        module.beta, module.threshold, module.spike_grad, init_hidden=module.init_hidden, output=module.output,
        reset_mechanism=module.reset_mechanism, graded_spikes_factor=module.graded_spikes_factor, backend=backend,
    )  # fmt: skip
    for name in ("beta", "threshold", "graded_spikes_factor"):
        setattr(new, name, getattr(module, name))  # the same Parameter or buffer tensor
    new.mem = module.mem
    new.train(module.training)
    return new


def _spikekern_neuron(module, kind, backend):
    common = dict(
        v_threshold=module.v_threshold, v_reset=module.v_reset, surrogate_function=module.surrogate_function,
        detach_reset=module.detach_reset, step_mode=module.step_mode, store_v_seq=module.store_v_seq,
        backend=backend,
    )  # fmt: skip
    if kind == "IFNode":
        new = IFNode(**common)
    elif kind == "LIFNode":
        new = LIFNode(tau=module.tau, decay_input=module.decay_input, **common)
    else:
        new = ParametricLIFNode(decay_input=module.decay_input, **common)
        new.w = module.w
    new.v = module.v
    new.v_seq = getattr(module, "v_seq", None)
    new.train(module.training)
    return new


def _emits_binary_spikes(module):
    """Whether a (converted) neuron's output is exactly 0/1: what a spike-driven layer may read."""
    if isinstance(module, BaseNode):
        return True
    if isinstance(module, Leaky):
        returns_spikes_only = module.init_hidden and not module.output
        return returns_spikes_only and bool(torch.all(module.graded_spikes_factor == 1))
    return False


# Layers whose output is binary whenever their input is: spikes pass through them unchanged in value.
_BINARY_PRESERVING = (torch.nn.Flatten, torch.nn.Unflatten, torch.nn.Identity, torch.nn.MaxPool1d, torch.nn.MaxPool2d)


def _why_not_spike_layer(layer):
    if isinstance(layer, torch.nn.Conv2d):
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} (only 'zeros' is supported)"
        if isinstance(layer.padding, str):
            return f"padding={layer.padding!r} (explicit padding only)"
    return None


def _spike_layer(layer, backend):
    step_mode = getattr(layer, "step_mode", "s")
    if backend not in SpikeLinear.supported_backends:
        backend = None  # "compiled" is the neurons' CPU path alone: the spike layer picks its best
    with torch.device("meta"):  # the parameters are taken over from the layer, so none are allocated here
        if isinstance(layer, torch.nn.Conv2d):
            new = SpikeConv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                layer.groups, layer.bias is not None, step_mode=step_mode, backend=backend,
            )  # fmt: skip
        else:
            new = SpikeLinear(layer.in_features, layer.out_features, layer.bias is not None, step_mode=step_mode, backend=backend)
    new.weight, new.bias = layer.weight, layer.bias
    new.train(layer.training)
    return new


def _convert_spike_layers(model, backend, report):
    """In every nn.Sequential, a Conv2d or Linear after a spikekern neuron whose output is binary (with
    only flattening or max pooling in between) becomes a SpikeConv2d / SpikeLinear (same Parameters)."""
    for parent_name, parent in list(model.named_modules()):
        if not isinstance(parent, torch.nn.Sequential):
            continue
        spikes_in = False
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            is_layer = isinstance(child, (torch.nn.Conv2d, torch.nn.Linear))
            is_spike_layer = isinstance(child, (SpikeConv2d, SpikeLinear))
            if is_layer and not is_spike_layer and spikes_in:
                reason = _why_not_spike_layer(child)
                if reason is not None:
                    report.left.append((name, _class_name(child), reason))
                else:
                    new = _spike_layer(child, backend)
                    setattr(parent, child_name, new)
                    report.replaced.append((name, _class_name(child), _class_name(new)))
            spikes_in = _emits_binary_spikes(child) or (spikes_in and isinstance(child, _BINARY_PRESERVING))


def convert(model: torch.nn.Module, backend=None, spike_layers=True) -> ConversionReport:
    """Replace SpikingJelly and snnTorch neurons in ``model`` (in place) with spikekern's; return what was done.

    backend: the backend of the new neurons and spike layers (None: the best available per call; "compiled",
        the neurons' CPU fast path, leaves the spike layers on None).
    spike_layers: also replace every ``Conv2d``/``Linear`` that follows a spikekern neuron with binary
        output in an ``nn.Sequential``, directly or through flattening/max pooling (so its input is
        provably spikes), with ``SpikeConv2d`` / ``SpikeLinear``, which keep only the input's bits.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {list(BACKENDS)}, got {backend!r}")
    if not isinstance(spike_layers, bool):
        raise TypeError(f"spike_layers must be a bool, got {type(spike_layers).__name__}")
    report = ConversionReport()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            kind = _neuron_kind(child)
            if kind is None:
                continue
            reason = _why_not_convertible(child, kind)
            if reason is not None:
                report.left.append((name, _class_name(child), reason))
                continue
            new = _spikekern_leaky(child, backend) if kind == "Leaky" else _spikekern_neuron(child, kind, backend)
            setattr(parent, child_name, new)
            report.replaced.append((name, _class_name(child), _class_name(new)))
    if _neuron_kind(model) is not None:
        report.left.append(("", _class_name(model), "the model itself is a neuron: wrap it to convert it"))
    if spike_layers:
        _convert_spike_layers(model, backend, report)
    return report
