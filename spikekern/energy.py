"""Firing rates and the spike-count energy estimate of the SNN papers.

Convention (Horowitz, 45 nm, as SDDPM/SDM and most SNN papers use it): a multiply-accumulate costs
4.6 pJ, an accumulate 0.9 pJ. A convolution or linear layer whose input is binary performs one
accumulate per spike and fan-out connection (a synaptic operation, SOP = MACs x input firing rate);
one with real-valued input performs MACs. An ANN counterpart performs MACs everywhere.
"""

import weakref
from dataclasses import dataclass, field

import torch

from .nn import BaseNode, Leaky

E_MAC_PJ = 4.6
E_AC_PJ = 0.9


def _all_binary(x):
    return bool(((x == 0) | (x == 1)).all())


def _is_binary(x):
    if not x.is_floating_point():
        return False
    # A row of a real-valued input almost always holds a non-binary value: a view, no full pass.
    first_row = x[(0,) * (x.dim() - 1)] if x.dim() > 1 else x.reshape(-1)[:1]
    return _all_binary(first_row) and _all_binary(x)


def _macs(module, x, y):
    if isinstance(module, torch.nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return y.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    if isinstance(module, torch.nn.ConvTranspose2d):
        # A transposed convolution scatters each input element to out_channels/groups x kernel taps
        # (taps that the output's padding crops away included: the work is done, then discarded).
        kernel_h, kernel_w = module.kernel_size
        return x.numel() * (module.out_channels // module.groups) * kernel_h * kernel_w
    return y.numel() * module.in_features


@dataclass
class LayerActivity:
    spikes: float = 0.0
    elements: float = 0.0

    @property
    def firing_rate(self):
        return self.spikes / self.elements if self.elements else 0.0


@dataclass
class ActivityReport:
    """Totals over everything the monitor saw: ``calls`` network forwards on ``images`` images each."""

    firing_rates: dict = field(default_factory=dict)  # neuron name -> fraction of (step, element) pairs that fired
    macs: float = 0.0  # multiply-accumulates of layers with real-valued input
    sops: float = 0.0  # synaptic operations of layers with binary input
    dense_macs: float = 0.0  # what those binary-input layers would cost as MACs
    calls: int = 0
    images: int = 0

    @property
    def overall_firing_rate(self):
        return self.sops / self.dense_macs if self.dense_macs else 0.0

    def energy_mj_per_image(self):
        """Spiking energy of one network call for one image, in millijoules."""
        per_image = max(self.images, 1)
        return (self.macs * E_MAC_PJ + self.sops * E_AC_PJ) / per_image * 1e-9

    def format(self, ann_macs_per_image=None):
        lines = ["firing rates (fraction of neuron-steps that spiked):"]
        width = max((len(name) for name in self.firing_rates), default=0)
        lines += [f"  {name:<{width}}  {rate:.4f}" for name, rate in self.firing_rates.items()]
        lines.append(f"  overall (synaptic operations / dense MACs of spike-input layers): {self.overall_firing_rate:.4f}")
        per_image = max(self.images, 1)
        lines.append(
            f"energy per network call per image: {self.energy_mj_per_image():.4f} mJ "
            f"({self.sops / per_image / 1e6:.1f} M SOPs x {E_AC_PJ} pJ + {self.macs / per_image / 1e6:.1f} M MACs x {E_MAC_PJ} pJ)"
        )
        if ann_macs_per_image:
            ann_mj = ann_macs_per_image * E_MAC_PJ * 1e-9
            lines.append(
                f"ANN counterpart: {ann_mj:.4f} mJ ({ann_macs_per_image / 1e6:.1f} M MACs x {E_MAC_PJ} pJ); "
                f"ratio SNN/ANN {self.energy_mj_per_image() / ann_mj:.3f}"
            )
        return "\n".join(lines)


class ActivityMonitor:
    """Counts spikes of every spikekern neuron and the operations of every Conv2d/ConvTranspose2d/Linear in ``model``
    while in a ``with`` block; the report divides by the number of forwards of ``model`` itself."""

    def __init__(self, model):
        self.model = model
        self.report = ActivityReport()
        self._activity = {}
        self._handles = []
        # id(neuron output) -> (weak reference to it, its spike count), for the current network call: a layer
        # that reads a neuron's output as it is needs neither the binary check nor a count of its own.
        self._neuron_outputs = {}

    def __enter__(self):
        self._handles.append(self.model.register_forward_hook(self._count_call))
        for name, module in self.model.named_modules():
            if isinstance(module, (BaseNode, Leaky)):
                self._activity[name] = LayerActivity()
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                self._handles.append(module.register_forward_hook(self._layer_hook))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        # Neurons that never ran (an encoder while sampling, say) have no rate to report.
        self.report.firing_rates = {
            name: activity.firing_rate for name, activity in self._activity.items() if activity.elements
        }

    def _count_call(self, module, inputs, output):
        self.report.calls += 1
        self._neuron_outputs.clear()
        # Images are [..., B, C, H, W]: a per-step state [T, B, C, H, W] (FSDDIM's sampler) is still B images;
        # a token grid [B, h, w] (Spiking-Diffusion's denoiser) is B images.
        x = inputs[0]
        self.report.images += x.shape[-4] if x.dim() >= 4 else x.shape[0]

    def _neuron_hook(self, name):
        def hook(module, inputs, output):
            spikes = output[0] if isinstance(output, tuple) else output
            count = float(spikes.detach().float().sum())
            self._neuron_outputs[id(spikes)] = (weakref.ref(spikes), count)
            activity = self._activity[name]
            activity.spikes += count
            activity.elements += spikes.numel()

        return hook

    def _spike_count(self, x):
        """The number of spikes in ``x`` if it is binary, else None."""
        reference, count = self._neuron_outputs.get(id(x), (None, None))
        if reference is not None and reference() is x:
            return count
        return float(x.detach().float().sum()) if _is_binary(x.detach()) else None

    def _layer_hook(self, module, inputs, output):
        x = inputs[0]
        macs = _macs(module, x, output)
        spikes = self._spike_count(x)
        if spikes is None:
            self.report.macs += macs
        else:
            self.report.sops += macs * spikes / x.numel() if x.numel() else 0.0
            self.report.dense_macs += macs
