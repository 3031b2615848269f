"""The spiking U-Net of SDDPM (Cao et al., "Spiking Denoising Diffusion Probabilistic Models", WACV 2024,
arXiv 2306.17046), built from spikekern neurons and spike-driven convolutions.

Followed: the published code (``model/SpikingUNet.py`` of github.com/AndyCao1125/SDDPM), as recorded in
``shared/papers/sddpm.md`` — where it differs from the issue text, the code wins:

- no attention (the code's ``attn=[]``; the authors found no gain);
- "pre-spike" residual blocks: IF -> conv3x3 -> BN -> + time embedding -> IF -> conv3x3 -> BN, plus a 1x1
  convolution (or identity) of the real-valued block input; the residual stream is real-valued and the
  neurons sit at each block's entry, so every convolution inside a block reads spikes;
- down: IF -> conv3x3 stride 2 -> BN; up: IF -> nearest x2 -> conv3x3 -> BN;
- IF neurons (no leak), threshold 1, hard reset to 0, ATan surrogate (alpha 2), T steps (default 4);
- BatchNorm over the folded ``[T*B, C, H, W]`` (statistics shared across steps);
- the image enters directly (the same real input at every step: conv3x3 -> BN -> IF -> conv3x3 -> BN);
- readout per step BN -> Swish -> conv3x3 (initialised with gain 1e-5), plus Swish(BN(conv3x3)) of that,
  then the membrane readout ``sum_t 0.8^(T-1-t) h_t`` (from FSVAE);
- the diffusion-step embedding is the DDPM one: sinusoid(ch) -> Linear(4ch) -> Swish -> Linear(4ch), and
  each block adds Swish -> Linear(C) of it after its first BN, the same value at every spike step.

Two deliberate deviations, both value-preserving: the first convolution runs once on ``[B, C, H, W]``
instead of on T identical copies (its BN then sees the same statistics), and the readout's
``Conv3d(kernel=(3, 3, 1))`` over ``[B, C, H, W, T]`` is the ``Conv2d(3x3)`` it equals, applied per step.

``neuron="relu"`` builds the ANN counterpart with the same layout (ReLU in place of IF, one step: more
steps would repeat the same computation); ``neuron="lif"`` swaps in LIF neurons (tau 2).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.stateless import Conv2d
from .layers import (
    NEURONS, TimeEmbedding, TimeFoldedBatchNorm, UNetConfigMixin, cat_channels, configured_preset,
    conv_after_neuron, make_neuron, xavier_init,
)  # fmt: skip


@dataclass(frozen=True)
class SpikingUNetConfig(UNetConfigMixin):
    image_channels: int = 3
    image_size: int = 32
    base_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 4)
    num_res_blocks: int = 2
    time_steps: int = 4
    neuron: str = "if"
    readout_decay: float = 0.8
    preset: str = field(default="", compare=False)

    def __post_init__(self):
        self.check_unet_fields(NEURONS, min_base_channels=2)
        if not 0.0 < self.readout_decay <= 1.0:
            raise ValueError(f"readout_decay must be in (0, 1], got {self.readout_decay}")


PRESETS = {
    # The paper's CIFAR-10 network: 66.7 M parameters (the paper's "63.61 M" is that count / 2^20).
    "sddpm-cifar10": SpikingUNetConfig(3, 32, 128, (1, 2, 2, 4), 2, 4, preset="sddpm-cifar10"),
    # CelebA 64x64: the same widths with one more resolution level.
    "sddpm-celeba": SpikingUNetConfig(3, 64, 128, (1, 2, 2, 2, 4), 2, 4, preset="sddpm-celeba"),
    # MNIST / Fashion-MNIST resized to 32x32 as in the papers.
    "sddpm-mnist": SpikingUNetConfig(1, 32, 64, (1, 2, 2), 2, 4, preset="sddpm-mnist"),
    # The embedded default: scikit-learn's digits upscaled to 16x16, small enough to train and sample on a CPU.
    # Width 48 rather than 32: 91.1% confident / FID 2.5 after 6,250 steps against width 32's 88.0% / 5.4
    # after 13,400 (README), and 64 samples still take under a minute on two CPU cores.
    "digits": SpikingUNetConfig(1, 16, 48, (1, 2, 2), 1, 4, preset="digits"),
}


def preset_config(name, **overrides):
    """The config of a named preset, with fields overridden (``layers.configured_preset``)."""
    return configured_preset(PRESETS, name, **overrides)


class NeuronConvBN(nn.Module):
    """Neuron -> (nearest x2) -> conv3x3 -> BN over ``[T, B, C, H, W]``: the unit every block is made of."""

    def __init__(self, neuron, spike_conv, in_channels, out_channels, stride=1, upsample=False):
        super().__init__()
        self.neuron = make_neuron(neuron)
        self.upsample = upsample
        self.conv = conv_after_neuron(neuron, spike_conv, in_channels, out_channels, 3, stride, 1)
        self.bn = TimeFoldedBatchNorm(out_channels)

    def forward(self, x):
        s = self.neuron(x)
        if self.upsample:  # nearest-neighbour upsampling keeps spikes binary, so the conv still reads spikes
            s = F.interpolate(s.flatten(0, 1), scale_factor=2, mode="nearest").unflatten(0, s.shape[:2])
        return self.bn(self.conv(s))


class ResBlock(nn.Module):
    """SDDPM's pre-spike residual block; the shortcut carries the real-valued input."""

    def __init__(self, neuron, spike_conv, in_channels, out_channels, time_channels):
        super().__init__()
        self.block1 = NeuronConvBN(neuron, spike_conv, in_channels, out_channels)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.block2 = NeuronConvBN(neuron, spike_conv, out_channels, out_channels)
        self.shortcut = Conv2d(in_channels, out_channels, 1, step_mode="m") if in_channels != out_channels else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.time_proj(temb)[None, :, :, None, None]
        return self.block2(h) + self.shortcut(x)


class SpikingUNet(nn.Module):
    """SDDPM's spiking U-Net: ``forward(x [B, C, H, W], t [B]) -> noise estimate [B, C, H, W]``.

    ``SpikingUNet(config)`` or ``SpikingUNet.from_preset("sddpm-cifar10" | "sddpm-celeba" | "sddpm-mnist" |
    "digits", **overrides)``. ``spike_conv=True`` makes every convolution that reads spikes a
    ``SpikeConv2d`` (1 bit per input kept for backward, spike-driven kernels on the GPU); ``False`` uses
    plain convolutions, which are faster on a CPU, where SpikeConv2d's reference path unpacks bits
    again. The parameters are the same either way, so a checkpoint loads into both.
    """

    def __init__(self, config: SpikingUNetConfig, *, spike_conv=True):
        super().__init__()
        if not isinstance(config, SpikingUNetConfig):
            raise TypeError(f"config must be a SpikingUNetConfig, got {type(config).__name__}")
        self.config = config
        neuron, ch = config.neuron, config.base_channels
        time_channels = 4 * ch
        self.time_embedding = TimeEmbedding(ch, time_channels)
        self.stem_conv = nn.Conv2d(config.image_channels, ch, 3, padding=1)
        self.stem_bn = TimeFoldedBatchNorm(ch)
        self.stem_spike = NeuronConvBN(neuron, spike_conv, ch, ch)

        def res_block(cin, cout):
            return ResBlock(neuron, spike_conv, cin, cout, time_channels)

        self.down = nn.ModuleList()
        skip_channels, width = [ch], ch
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(res_block(width, ch * mult))
                width = ch * mult
                skip_channels.append(width)
            if level != len(config.channel_mult) - 1:
                self.down.append(NeuronConvBN(neuron, spike_conv, width, width, stride=2))
                skip_channels.append(width)
        self.middle = nn.ModuleList([res_block(width, width), res_block(width, width)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(res_block(skip_channels.pop() + width, ch * mult))
                width = ch * mult
            if level != 0:
                self.up.append(NeuronConvBN(neuron, spike_conv, width, width, upsample=True))
        self.tail = nn.Sequential(
            TimeFoldedBatchNorm(width), nn.SiLU(), Conv2d(width, config.image_channels, 3, padding=1, step_mode="m")
        )  # fmt: skip
        self.readout_conv = Conv2d(config.image_channels, config.image_channels, 3, padding=1, step_mode="m")
        self.readout_bn = TimeFoldedBatchNorm(config.image_channels)
        steps_to_end = torch.arange(config.time_steps - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("readout_weights", config.readout_decay**steps_to_end, persistent=False)
        self._initialize()

    @classmethod
    def from_preset(cls, name, *, spike_conv=True, **overrides):
        return cls(preset_config(name, **overrides), spike_conv=spike_conv)

    def _initialize(self):
        # As the published code: Xavier for the embedding, blocks and the first conv; the readout's last
        # conv starts near zero so the untrained network predicts ~0 noise; the rest keep torch's defaults.
        for module in (self.time_embedding, self.stem_conv, *self.down, *self.middle, *self.up):
            xavier_init(module)
        xavier_init(self.tail[-1], gain=1e-5)

    def forward(self, x, t):
        config = self.config
        if x.dim() != 4 or x.shape[1:] != (config.image_channels, config.image_size, config.image_size):
            raise ValueError(
                f"x must have shape [B, {config.image_channels}, {config.image_size}, {config.image_size}], "
                f"got {tuple(x.shape)}"
            )
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
        temb = self.time_embedding(t)
        h = self.stem_bn(self.stem_conv(x))
        h = self.stem_spike(h.expand(config.time_steps, *h.shape))
        skips = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, temb)
        for layer in self.up:
            h = layer(cat_channels(h, skips.pop()), temb) if isinstance(layer, ResBlock) else layer(h)
        h = self.tail(h)
        h = h + F.silu(self.readout_bn(self.readout_conv(h)))
        return torch.einsum("t,tbchw->bchw", self.readout_weights.to(h.dtype), h)
