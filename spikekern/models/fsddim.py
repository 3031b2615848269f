"""The fully spiking U-Net of FSDDIM (Watanabe, Mukuta, Harada, "Fully Spiking Denoising Diffusion Implicit
Models", arXiv 2312.01742), built from spikekern neurons and spike-driven convolutions.

Followed: the published code (``SpikingUNetV2`` in ``snn_model.py`` and ``snn_layers.py`` of
github.com/mil-tokyo/FSDDIM, with its configs' ``activate_first_conv: false``, ``spike_up_down: false``,
``downsampling: avg_pool``, dropout 0), as recorded in ``shared/papers/fsddim.md``:

- residual blocks whose outputs are spikes: conv3x3 -> + Linear(LIF(time embedding)) -> tdBN -> LIF ->
  conv3x3 -> tdBN(alpha 1/sqrt 2), plus a shortcut (1x1 conv -> tdBN(alpha 1/sqrt 2), or tdBN(alpha 1/sqrt
  2) alone), then a LIF on the sum;
- every level runs its residual blocks at its input width; between levels AvgPool 2x2 -> 1x1 conv (no BN,
  no neuron); the lowest level ends in conv3x3 -> tdBN -> LIF to the widest width instead;
- on the way up, residual blocks on the concatenation with the skip, then nearest x2 -> conv3x3 (no BN, no
  neuron); the highest level ends in conv3x3 -> tdBN -> LIF; a last residual block on the concatenation
  with the first convolution's output;
- the first convolution (conv3x3) reads the real-valued input directly (no BN, no neuron);
- output: a 1x1 convolution of the concatenation of the last block, the first convolution's output, the
  highest level's residual blocks on the way down and on the way up. Its per-step output ``I_t`` is a
  real-valued synaptic current; the image is its mean over the T steps (synaptic current learning);
- the diffusion-step embedding: a sinusoid over ``base_channels`` (the code's table, lowest frequency
  exactly 1/10000), the same at every spike step -> Linear(4 ch) -> LIF -> Linear(4 ch); each block reads
  LIF(embedding) through its own Linear;
- the neuron: u_t = beta u_{t-1} (1 - o_{t-1}) + I_t, o_t = [u_t > V_th], beta 0.8, V_th 1, u_0 = 0, the
  reset detached; the triangle surrogate max(0, 1 - 2 |u - V_th|). That is snnTorch's
  ``Leaky(beta=0.8, threshold=1.0, reset_mechanism="zero")``, here ``spikekern.nn.Leaky`` over all T steps
  in one call, from rest at every call;
- tdBN: per-channel statistics over (T, B, H, W) (global under DDP), the normalised value times
  alpha V_th, then the affine; PyTorch's default initialisation everywhere, as the code.

Layout: time first, ``[T, B, C, H, W]``, convolutions and tdBN applied to the folded ``[T*B, C, H, W]``
(the code is time-last with ``Conv3d(kernel=(k, k, 1))``, the same per-step convolution).

Deliberate deviations, all value-preserving: the first convolution runs once when the input is the same
at every step (a ``[B, C, H, W]`` input, the code's direct encoding), as do the embedding's sinusoid and
first Linear; and the code's per-block LIF(embedding), which all see the same input with the same
parameters and so fire identically, is one LIF shared by the blocks (the gradient is the same sum).

Decisions where the notes found nothing: dropout is left out (0 in every config); for a ``channel_mult``
whose first entry is not 1 the output convolution takes the actual concatenation width (the code's formula
assumes 1); ``neuron="if"`` is the same neuron without leak (beta 1); ``neuron="relu"`` builds the ANN
counterpart with the same layout (ReLU for every neuron, one step; no ANN numbers were found); the paper's
number of sampling steps was not found, so the paper presets sample over all 1000 steps as the code does
and the digits preset over 50 (``spikekern.pipelines.FSDDIMPipeline``); the digits preset (base 48, two
levels, T = 4) is spikekern's, sized to train on a CPU.
"""

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import Leaky
from ..nn.stateless import AvgPool2d, Conv2d, Upsample
from ..surrogate import Triangle
from .layers import (
    TimeFoldedBatchNorm, UNetConfigMixin, cat_channels, configured_preset, conv_after_neuron,
    sinusoidal_embedding,
)  # fmt: skip

NEURONS = ("lif", "if", "relu")
V_THRESHOLD = 1.0
# tdBN's alpha on the two branches that a residual block sums, so their sum keeps the spread of one.
RESIDUAL_BRANCH_ALPHA = 1 / math.sqrt(2)


@dataclass(frozen=True)
class FSDDIMConfig(UNetConfigMixin):
    image_channels: int = 3
    image_size: int = 32
    base_channels: int = 128
    channel_mult: tuple = (1, 2, 3, 4)
    num_res_blocks: int = 2
    time_steps: int = 8
    neuron: str = "lif"
    beta: float = 0.8
    preset: str = field(default="", compare=False)

    def __post_init__(self):
        self.check_unet_fields(NEURONS, min_base_channels=4)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta (the membrane decay) must be in (0, 1], got {self.beta!r}")


PRESETS = {
    # The configs of the code: CIFAR-10 and MNIST / Fashion-MNIST (resized to 32) at T = 8, CelebA 64 at T = 4.
    "fsddim-cifar10": FSDDIMConfig(3, 32, 128, (1, 2, 3, 4), 2, 8, preset="fsddim-cifar10"),
    "fsddim-celeba": FSDDIMConfig(3, 64, 128, (1, 2, 3, 4), 2, 4, preset="fsddim-celeba"),
    "fsddim-mnist": FSDDIMConfig(1, 32, 128, (1, 2, 3, 4), 2, 8, preset="fsddim-mnist"),
    # The embedded default: scikit-learn's digits upscaled to 16x16, small enough to train on a CPU. Width 48
    # rather than 32: past width 32's best after 7,250 steps against its 12,200 (README).
    "digits": FSDDIMConfig(1, 16, 48, (1, 2), 2, 4, preset="digits"),
}


def preset_config(name, **overrides):
    """The config of a named preset, with fields overridden (``layers.configured_preset``)."""
    return configured_preset(PRESETS, name, **overrides)


def make_neuron(config):
    """FSDDIM's LIF over ``[T, B, ...]``, starting from rest at every call (ReLU for the ANN counterpart)."""
    if config.neuron == "relu":
        return nn.ReLU()
    beta = config.beta if config.neuron == "lif" else 1.0
    # init_hidden=True makes Leaky return the spikes alone; keep_state=False keeps no membrane between calls.
    return Leaky(
        beta, V_THRESHOLD, Triangle(), init_hidden=True, reset_mechanism="zero", step_mode="m", keep_state=False
    )  # fmt: skip


class ThresholdScaledBatchNorm(TimeFoldedBatchNorm):
    """tdBN (Zheng et al. 2021) as FSDDIM's code has it: statistics per channel over (T, B, H, W), the
    normalised value times ``alpha * v_threshold``, then the affine transform."""

    def __init__(self, num_features, alpha=1.0, v_threshold=V_THRESHOLD):
        super().__init__(num_features)
        self.scale = alpha * v_threshold

    def forward(self, x):
        y = super().forward(x)  # x_hat * weight + bias, with the DDP-global statistics when distributed
        if self.scale == 1.0:
            return y
        # x_hat * (scale * weight) + bias = bias + scale * (y - bias): the parent's output drawn towards its
        # bias, so that its statistics (DDP-global ones included) and running averages serve unchanged.
        return torch.lerp(self.bias.to(y.dtype)[:, None, None], y, self.scale)

    def extra_repr(self):
        return f"{super().extra_repr()}, scale={self.scale:.6g}"


class ConvNormNeuron(nn.Module):
    """conv3x3 -> tdBN -> neuron: the lowest level's last layer on the way down, the highest's on the way up."""

    def __init__(self, config, spike_conv, in_channels, out_channels):
        super().__init__()
        self.conv = conv_after_neuron(config.neuron, spike_conv, in_channels, out_channels, 3, padding=1)
        self.bn = ThresholdScaledBatchNorm(out_channels)
        self.neuron = make_neuron(config)

    def forward(self, x):
        return self.neuron(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """FSDDIM's residual block; its output is spikes. ``reads_spikes``: whether its input is, so that its
    convolutions of the input may be spike-driven."""

    def __init__(self, config, spike_conv, in_channels, out_channels, time_channels, reads_spikes):
        super().__init__()

        def conv(cin, cout, kernel_size, input_is_spikes):
            padding = kernel_size // 2
            return conv_after_neuron(config.neuron, spike_conv and input_is_spikes, cin, cout, kernel_size, padding=padding)

        self.conv1 = conv(in_channels, out_channels, 3, reads_spikes)
        self.time_proj = nn.Linear(time_channels, out_channels)
        self.bn1 = ThresholdScaledBatchNorm(out_channels)
        self.neuron1 = make_neuron(config)
        self.conv2 = conv(out_channels, out_channels, 3, True)
        self.bn2 = ThresholdScaledBatchNorm(out_channels, RESIDUAL_BRANCH_ALPHA)
        shortcut_bn = ThresholdScaledBatchNorm(out_channels, RESIDUAL_BRANCH_ALPHA)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(conv(in_channels, out_channels, 1, reads_spikes), shortcut_bn)
        else:
            self.shortcut = shortcut_bn
        self.neuron2 = make_neuron(config)

    def forward(self, x, temb_spikes):
        h = self.conv1(x) + self.time_proj(temb_spikes)[..., None, None]
        h = self.bn2(self.conv2(self.neuron1(self.bn1(h))))
        return self.neuron2(h + self.shortcut(x))


class SpikingTimeEmbedding(nn.Module):
    """The diffusion-step embedding over T steps: sinusoid(``dim``), the same at every step -> Linear ->
    neuron -> Linear -> neuron. Returns the last neuron's output ``[T, B, hidden]``, which every residual
    block projects with its own Linear."""

    def __init__(self, config, dim, hidden):
        super().__init__()
        self.dim = dim
        self.linear1 = nn.Linear(dim, hidden)
        self.neuron1 = make_neuron(config)
        self.linear2 = nn.Linear(hidden, hidden)
        self.neuron2 = make_neuron(config)

    def forward(self, t, time_steps):
        h = self.linear1(sinusoidal_embedding(t, self.dim, endpoint=True))
        return self.neuron2(self.linear2(self.neuron1(h.expand(time_steps, *h.shape))))


class FSDDIMUNet(nn.Module):
    """FSDDIM's spiking U-Net: ``forward(x, t [B]) -> synaptic currents [T, B, C, H, W]``; the image (the
    v-prediction) is their mean over T, ``FSDDIMUNet.decode``.

    ``x`` is ``[B, C, H, W]``, fed to every step (direct encoding), or ``[T, B, C, H, W]``, one input per
    step (the per-step state of FSDDIM's sampler). ``FSDDIMUNet(config)`` or
    ``FSDDIMUNet.from_preset("fsddim-cifar10" | "fsddim-celeba" | "fsddim-mnist" | "digits", **overrides)``.
    ``spike_conv=True`` makes every convolution whose input is spikes a ``SpikeConv2d`` (1 bit per input
    kept for backward); ``False`` uses plain convolutions, faster on a CPU. The parameters are the same
    either way, so a checkpoint loads into both. The module docstring lists what follows the code.
    """

    def __init__(self, config: FSDDIMConfig, *, spike_conv=True):
        super().__init__()
        if not isinstance(config, FSDDIMConfig):
            raise TypeError(f"config must be an FSDDIMConfig, got {type(config).__name__}")
        self.config = config
        ch, num_blocks = config.base_channels, config.num_res_blocks
        time_channels = 4 * ch
        widths = [ch] + [ch * mult for mult in config.channel_mult]
        level_widths = list(itertools.pairwise(widths))
        last_level = len(level_widths) - 1

        def res_block(cin, cout, reads_spikes):
            return ResBlock(config, spike_conv, cin, cout, time_channels, reads_spikes)

        def conv_norm_neuron(cin, cout):
            return ConvNormNeuron(config, spike_conv, cin, cout)

        self.time_embedding = SpikingTimeEmbedding(config, ch, time_channels)
        self.conv_in = Conv2d(config.image_channels, ch, 3, padding=1, step_mode="m")
        # Each skip as (channels, whether it is spikes); a block's convolutions read spikes when all its inputs are.
        skips = [(ch, False)]
        self.down = nn.ModuleList()
        for level, (width, next_width) in enumerate(level_widths):
            blocks = nn.ModuleList()
            for index in range(num_blocks):
                blocks.append(res_block(width, width, reads_spikes=index > 0))
                skips.append((width, True))
            if level == last_level:
                blocks.append(conv_norm_neuron(width, next_width))
            else:
                blocks.append(nn.Sequential(AvgPool2d(2, step_mode="m"), Conv2d(width, next_width, 1, step_mode="m")))
            self.down.append(blocks)
        self.middle = nn.ModuleList([res_block(widths[-1], widths[-1], True) for _ in range(2)])
        self.up = nn.ModuleList()
        for level, (width, next_width) in enumerate(reversed(level_widths)):
            blocks = nn.ModuleList()
            input_is_spikes = level == 0  # the middle's output; after an upsampling layer, real values
            for _ in range(num_blocks):
                skip_channels, skip_is_spikes = skips.pop()
                blocks.append(res_block(next_width + skip_channels, next_width, input_is_spikes and skip_is_spikes))
                input_is_spikes = True
            if level == last_level:
                blocks.append(conv_norm_neuron(next_width, width))
            else:
                upsample = conv_after_neuron(config.neuron, spike_conv, next_width, width, 3, padding=1)
                blocks.append(nn.Sequential(Upsample(scale_factor=2, mode="nearest", step_mode="m"), upsample))
            self.up.append(blocks)
        first_channels, first_is_spikes = skips.pop()  # the first convolution's output
        self.final_block = res_block(ch + first_channels, ch, reads_spikes=first_is_spikes)
        readout_channels = ch + first_channels + num_blocks * (widths[0] + widths[1])
        self.conv_out = Conv2d(readout_channels, config.image_channels, 1, step_mode="m")

    @classmethod
    def from_preset(cls, name, *, spike_conv=True, **overrides):
        return cls(preset_config(name, **overrides), spike_conv=spike_conv)

    @staticmethod
    def decode(currents):
        """The image the network outputs: the mean of the synaptic currents over the T steps."""
        return currents.mean(0)

    def forward(self, x, t):
        config = self.config
        image_shape = (config.image_channels, config.image_size, config.image_size)
        steps = config.time_steps
        if x.dim() == 4 and x.shape[1:] == image_shape:
            h = self.conv_in(x[None]).expand(steps, -1, -1, -1, -1)
        elif x.dim() == 5 and x.shape[0] == steps and x.shape[2:] == image_shape:
            h = self.conv_in(x)
        else:
            shape = ", ".join(map(str, image_shape))
            raise ValueError(f"x must have shape [B, {shape}] or [T={steps}, B, {shape}], got {tuple(x.shape)}")
        batch = x.shape[-4]
        if not isinstance(t, torch.Tensor) or t.shape != (batch,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a tensor of shape [B] = [{batch}], got {got}")
        temb = self.time_embedding(t, steps)
        skips, readout = [h], [h]
        for level, (*blocks, transition) in enumerate(self.down):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
                if level == 0:
                    readout.append(h)
            h = transition(h)
        for block in self.middle:
            h = block(h, temb)
        for level, (*blocks, transition) in enumerate(self.up):
            for block in blocks:
                h = block(cat_channels(h, skips.pop()), temb)
                if level == len(self.up) - 1:
                    readout.append(h)
            h = transition(h)
        h = self.final_block(cat_channels(h, skips.pop()), temb)
        return self.conv_out(cat_channels(h, *readout))
