"""Pieces the spiking diffusion U-Nets share: the diffusion-step embedding and the neuron factory."""

import contextlib
import dataclasses
import math

import torch
import torch.distributed as dist
from torch import nn

from ..nn import BaseNode, IFNode, Leaky, LIFNode, SpikeConv2d
from ..nn.stateless import Conv2d
from ..surrogate import ATan


def sinusoidal_embedding(t, dim, max_period=10000.0, *, endpoint=False):
    """Transformer-style embedding of diffusion steps ``t`` [B] -> [B, dim], as the DDPM code lays it out:
    frequencies ``exp(-log(max_period) * 2i / dim)``, sine and cosine interleaved per frequency.

    ``endpoint=True`` spaces the exponents as ``i / (dim/2 - 1)`` instead, so that the lowest frequency is
    exactly ``1 / max_period``: the layout of the TensorFlow DDPM code and of FSDDIM's table."""
    if dim % 2:
        raise ValueError(f"the embedding dimension must be even, got {dim}")
    if endpoint and dim < 4:
        raise ValueError(f"endpoint=True needs at least two frequencies (dim >= 4), got dim={dim}")
    if endpoint:
        exponents = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    else:
        exponents = torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * exponents)[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


class TimeEmbedding(nn.Module):
    """Sinusoid(``dim``) -> Linear -> Swish -> Linear, the DDPM U-Net's diffusion-step embedding."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(sinusoidal_embedding(t, self.dim))


NEURONS = ("if", "lif", "relu")


def make_neuron(kind, v_threshold=1.0):
    """A multi-step neuron over ``[T, B, ...]`` that starts every call from rest (``keep_state=False``):
    each network call is a whole spike sequence, so nothing needs resetting between calls. ``relu``
    stands in for the neuron in the ANN counterpart."""
    if kind == "if":
        return IFNode(v_threshold, 0.0, ATan(), step_mode="m", keep_state=False)
    if kind == "lif":
        return LIFNode(2.0, True, v_threshold, 0.0, ATan(), step_mode="m", keep_state=False)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"neuron must be one of {list(NEURONS)}, got {kind!r}")


def conv_after_neuron(neuron_kind, spike_conv, in_channels, out_channels, kernel_size, stride=1, padding=0):
    """The convolution that reads a neuron's output ``[T, B, C, H, W]``: ``SpikeConv2d`` (1 bit per input
    saved for backward) when the neuron spikes and ``spike_conv`` is set, else a time-folded ``Conv2d``.
    Both hold the same parameters under the same names, so checkpoints load either way."""
    if spike_conv and neuron_kind != "relu":
        return SpikeConv2d(in_channels, out_channels, kernel_size, stride, padding, step_mode="m")
    return Conv2d(in_channels, out_channels, kernel_size, stride, padding, step_mode="m")


def cat_channels(*tensors):
    """Concatenate ``[T, B, C, H, W]`` tensors along C. The cat runs on the ``[T*B, C, H, W]`` views, which
    keeps channels-last activations channels-last; a 5-D cat returns a contiguous tensor, which every
    convolution reading it would transpose back."""
    return torch.cat([t.flatten(0, 1) for t in tensors], dim=1).unflatten(0, tensors[0].shape[:2])


def xavier_init(module, gain=1.0):
    """Xavier-uniform weights and zero biases for every convolution and linear layer in ``module``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over all processes, differentiable: every process's input feeds every process's
    output, so the gradient is the sum of the output gradients over all processes. (torch's
    ``torch.distributed.nn.functional.all_reduce`` does this too, but is deprecated since torch 2.13.)"""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        total = grad_output.clone()
        dist.all_reduce(total)
        return total


class TimeFoldedBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over ``[T, B, C, H, W]`` with time folded into the batch (statistics shared over the T
    steps, as SDDPM's code normalises ``[T*B, C, H, W]``); ``[B, C, H, W]`` is taken as it is.

    In training under ``torch.distributed`` with more than one process, the batch statistics are those of
    the global batch on every device, CPU (gloo) included, which ``nn.SyncBatchNorm`` refuses: so a DDP
    step equals the single-process step on the whole batch. The all-reduces are differentiable, giving
    the gradient of the global-batch normalisation.
    """

    def forward(self, x):
        folded = x.flatten(0, 1) if x.dim() == 5 else x
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            y = self._global_batch_norm(folded)
        else:
            y = super().forward(folded)
        return y.unflatten(0, x.shape[:2]) if x.dim() == 5 else y

    def _global_batch_norm(self, x):
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), device=x.device)
        count = _AllReduceSum.apply(count)
        mean = _AllReduceSum.apply(x.sum(dims, dtype=torch.float32)) / count
        centred = x - mean.to(x.dtype)[None, :, None, None]
        # Two passes (mean, then squared deviations) instead of E[x^2] - E[x]^2, which cancels badly.
        var = _AllReduceSum.apply(centred.square().sum(dims, dtype=torch.float32)) / count
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.num_batches_tracked += 1
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:
            return centred * scale.to(x.dtype)[None, :, None, None]
        weight, bias = (scale * self.weight).to(x.dtype), self.bias.to(x.dtype)
        return centred * weight[None, :, None, None] + bias[None, :, None, None]


@contextlib.contextmanager
def neuron_threshold(model, v_threshold):
    """Run ``model`` with one firing threshold in every spikekern neuron (``BaseNode``'s ``v_threshold``,
    ``Leaky``'s ``threshold``), restoring the trained ones afterwards: the training-free threshold-guided
    strategy of SDDPM (Cao et al.; "inhibitory" guidance below the trained 1.0, "excitatory" above it)."""
    if isinstance(v_threshold, bool) or not isinstance(v_threshold, (int, float)) or not math.isfinite(v_threshold) or v_threshold <= 0:  # fmt: skip
        raise ValueError(f"v_threshold must be a positive finite float, got {v_threshold!r}")
    neurons = [module for module in model.modules() if isinstance(module, (BaseNode, Leaky))]
    if not neurons:
        raise ValueError("threshold guidance needs a spiking model; this one has no spikekern neurons")
    trained = [_threshold_of(neuron) for neuron in neurons]
    try:
        for neuron in neurons:
            _set_threshold(neuron, float(v_threshold))
        yield model
    finally:
        for neuron, threshold in zip(neurons, trained):
            _set_threshold(neuron, threshold)


def _threshold_of(neuron):
    return neuron.threshold.detach().clone() if isinstance(neuron, Leaky) else neuron.v_threshold


def _set_threshold(neuron, threshold):
    if isinstance(neuron, Leaky):
        # In place: Leaky's threshold is a buffer, or a parameter when learnable, and stays one.
        with torch.no_grad():
            neuron.threshold.copy_(torch.as_tensor(threshold))
    else:
        neuron.v_threshold = threshold


def configured_preset(presets, name, **overrides):
    """The config ``presets[name]`` with fields overridden; ``neuron="relu"`` starts from its ANN
    counterpart where the family has one. An unknown preset raises ValueError, an unknown field TypeError."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    config = presets[name]
    unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(config)})
    if unknown:
        raise TypeError(f"{', '.join(unknown)}: not a setting of the {name!r} network")
    if overrides.get("neuron") == "relu" and hasattr(config, "ann_counterpart"):
        config = config.ann_counterpart()
    return dataclasses.replace(config, **overrides)


def check_positive_ints(config, *names):
    """Refuse a config whose fields ``names`` are not positive ints (bools excluded), and a ``channel_mult``
    that is not a non-empty tuple of them, where the config has one."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    mult = getattr(config, "channel_mult", None)
    if mult is not None and (not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult)):
        raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {mult!r}")


class UNetConfigMixin:
    """What the spiking U-Net configs (SDDPM's and FSDDIM's frozen dataclasses) share: ``channel_mult``
    resolution levels that each halve ``image_size``, and ``neuron="relu"`` for the one-step ANN counterpart."""

    def check_unet_fields(self, neurons, min_base_channels):
        """Refuse sizes that build no U-Net and an unknown neuron; ``channel_mult`` becomes a tuple.
        ``min_base_channels``: the smallest (even) width the model's sinusoidal embedding takes."""
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        check_positive_ints(self, "image_channels", "image_size", "base_channels", "num_res_blocks", "time_steps")
        if self.base_channels % 2 or self.base_channels < min_base_channels:
            at_least = f" and at least {min_base_channels}" if min_base_channels > 2 else ""
            raise ValueError(
                f"base_channels must be even{at_least} (it sizes the sinusoidal embedding), got {self.base_channels}"
            )
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2^{len(self.channel_mult) - 1} "
                f"for {len(self.channel_mult)} resolution levels"
            )
        if self.neuron not in neurons:
            raise ValueError(f"neuron must be one of {list(neurons)}, got {self.neuron!r}")
        if self.neuron == "relu" and self.time_steps != 1:
            raise ValueError("neuron='relu' (the ANN counterpart) runs one step: time_steps must be 1")

    def to_dict(self):
        return dataclasses.asdict(self) | {"channel_mult": list(self.channel_mult)}

    def ann_counterpart(self):
        """The same layout with ReLU for the neurons and one step: the dense baseline."""
        return dataclasses.replace(self, neuron="relu", time_steps=1)
