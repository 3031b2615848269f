"""Spiking-Diffusion (Liu et al., "Spiking-Diffusion: Vector Quantized Discrete Diffusion Model with
Spiking Neural Networks", arXiv 2308.10187): a spiking VQ-VAE (VQ-SVAE, stage 1) that turns an image into
a grid of codebook indices, and a spiking denoiser (SDID, stage 2) that predicts the masked indices of an
absorbing-state discrete diffusion (``spikekern.diffusion.AbsorbingDiffusion``).

Followed: the published code (github.com/Arktis2022/Spiking-Diffusion, ``snn_model/vae_model.py``,
``vq_diffusion.py``, ``snn_layers.py``), as recorded in ``shared/papers/spiking-diffusion.md``; only the
paper's abstract was found, so everything here is the code's.

- T = 16 steps of SpikingJelly's LIF neuron (tau 2, decay_input, threshold 1, hard reset to 0, ATan
  surrogate), every call a whole sequence (``keep_state=False``); BatchNorm over the folded
  ``[T*B, C, H, W]`` (statistics shared over the steps); time-first ``[T, B, C, H, W]`` tensors.
- Images enter in the code's scale, pixels in [0, 1] shifted by -0.5, the same at every step (direct
  encoding); the decoder ends in tanh on that scale. ``SpikingDiffusionPipeline`` converts from and to
  spikekern's [-1, 1].
- Encoder: conv3x3 s2 -> BN -> LIF, conv3x3 s2 -> BN -> LIF, conv1x1 -> BN -> LIF, giving the code
  spikes ``s_t`` on a grid a quarter of the image's side.
- VQ feature per position: ``z = (1 - alpha) * sum_t 0.8^(T-1-t) s_t + alpha * mean_t s_t``, alpha a
  learnable scalar starting at 0.5; nearest codebook entry in L2 (ties to the lowest index), the
  straight-through estimator passing the gradient to ``z``.
- Adaptive spike generator (the code's ``poisson``, deterministic): the quantised vector, the same at
  every step, -> conv1x1 -> BN -> LIF: the spike train the decoder reads.
- Decoder: convT3x3 s2 -> BN -> LIF, convT3x3 s2 -> BN -> LIF, convT3x3 s1; the membrane readout
  ``sum_t 0.8^(T-1-t) y_t``; tanh.
- Stage-1 losses (``VQSVAEOutput.quantization_loss``; the reconstruction term is the pipeline's, as it
  needs the data variance): codebook + 0.25 x commitment MSE on ``z``, and the same pair on the
  postsynaptic potentials ``p_t = p_{t-1} + (s_t - p_{t-1}) / 2`` of the generator's spikes against the
  encoder's.
- SDID: the token index and the diffusion step as two raw float channels (no embeddings), the same at
  every step; conv3x3 chain 2 -> 2b -> 4b -> 8b -> 16b -> 8b (b = ``base_channels``, 32 in the paper),
  each followed by BN and LIF; a head conv3x3 on the concatenated spikes of the last and first layers
  -> one logit per codebook entry; logits = the head's mean over the T steps. No down-sampling.

Not in the notes or the code, chosen here:

- ``base_channels`` scales every width (encoder b, 2b; decoder 2b, b; SDID as above): the paper's
  network is b = 32. ``denoiser_channels`` gives the SDID a b of its own, as the stage-2 network is
  trained on a frozen stage 1 and may be sized apart from it. Initialisation is torch's default
  everywhere, as the code's (SpikingJelly layers and ``nn.Embedding``, whose N(0, 1) codebook the code
  keeps).
- The layers fed by the static input (first encoder conv, generator conv, first SDID conv) run once on
  ``[B, C, H, W]`` and their BN output is repeated over the T steps instead of convolving T identical
  copies: the same values, except that the running variance is corrected by ``n / (n - 1)`` with
  n = B*H*W rather than T*B*H*W.
- ``neuron="if"`` swaps in IF neurons; there is no ANN counterpart (the VQ feature and both readouts
  are defined over spike trains).
- The transposed convolutions stay dense (spikekern has no spike-driven transposed convolution); the
  other convolutions that read spikes are ``SpikeConv2d`` when ``spike_conv`` is set.
- The reconstruction MSE is divided by the training set's pixel variance, which the code computes at
  start-up; the presets store it (MNIST and Fashion-MNIST: their published pixel std squared; digits:
  measured on the 16x16 images).
- Which sampling temperature the reported FIDs use was not found (the code sweeps 0.001 ... 1.0 and
  previews at 0.65): the pipeline samples at 1.0, the model's own distribution, unless told.
- CIFAR-10 is not reproducible: the repository has a loader but no wiring, and the network is hard-coded
  to 1 channel at 28x28; the paper's CIFAR-10 architecture was not found.
"""

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.stateless import StepModeMixin
from .layers import (
    TimeFoldedBatchNorm, cat_channels, check_positive_ints, configured_preset, conv_after_neuron, make_neuron,
)  # fmt: skip

NEURONS = ("lif", "if")
STAGES = ("vq", "diffusion")
PSP_TAU = 2.0
ALPHA_INIT = 0.5


@dataclass(frozen=True)
class SpikingDiffusionConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    # The SDID's own b; None takes ``base_channels`` (the paper's network uses one b for both stages).
    denoiser_channels: int | None = None
    embedding_dim: int = 16
    codebook_size: int = 128
    time_steps: int = 16
    neuron: str = "lif"
    readout_decay: float = 0.8
    commitment_cost: float = 0.25
    # Variance of the training images (pixels in [0, 1]); it divides the reconstruction MSE.
    data_variance: float = 0.3081**2
    preset: str = field(default="", compare=False)

    def __post_init__(self):
        check_positive_ints(
            self, "image_channels", "image_size", "base_channels", "embedding_dim", "codebook_size", "time_steps"
        )  # fmt: skip
        if self.denoiser_channels is not None:
            check_positive_ints(self, "denoiser_channels")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two stride-2 encoder layers), got {self.image_size}")
        if self.neuron not in NEURONS:
            raise ValueError(
                f"neuron must be one of {list(NEURONS)} (Spiking-Diffusion has no ANN counterpart), got {self.neuron!r}"
            )
        bounds = {"readout_decay": 1.0, "commitment_cost": float("inf"), "data_variance": float("inf")}
        for name, high in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= high:
                raise ValueError(f"{name} must be a number in (0, {high}], got {value!r}")

    @property
    def token_grid(self):
        """The side of the square grid of code indices: a quarter of the image's."""
        return self.image_size // 4

    @property
    def num_tokens(self):
        return self.token_grid**2

    @property
    def sdid_channels(self):
        """The SDID's b: ``denoiser_channels``, else ``base_channels``."""
        return self.base_channels if self.denoiser_channels is None else self.denoiser_channels

    def to_dict(self):
        return asdict(self)


PRESETS = {
    # The paper's network on MNIST / Fashion-MNIST at 28x28: 7x7 = 49 tokens, 50.7 k VQ-SVAE and 3.10 M
    # SDID parameters. The variances are the data sets' published pixel std (0.3081, 0.3530) squared.
    "spiking-diffusion-mnist": SpikingDiffusionConfig(data_variance=0.3081**2, preset="spiking-diffusion-mnist"),
    "spiking-diffusion-fmnist": SpikingDiffusionConfig(data_variance=0.3530**2, preset="spiking-diffusion-fmnist"),
    # scikit-learn's digits at 16x16: 4x4 = 16 tokens, 64 codes, trainable on a CPU: a quarter of the widths in
    # the VQ-SVAE, half in the SDID (at a quarter, the embedded model's denoiser reached 78.8% confident samples
    # in 12,000 steps; at half, 80.1% in 6,000).
    "digits": SpikingDiffusionConfig(
        image_size=16, base_channels=8, denoiser_channels=16, codebook_size=64, data_variance=0.1017, preset="digits"
    ),
}


def preset_config(name, **overrides):
    """The config of a named preset, with fields overridden (``layers.configured_preset``)."""
    return configured_preset(PRESETS, name, **overrides)


def membrane_readout(x_seq, decay):
    """``sum_t decay^(T-1-t) x_t`` over the leading time dimension: the membrane of a non-firing LIF
    neuron at the last step (FSVAE's readout)."""
    steps_to_end = torch.arange(x_seq.shape[0] - 1, -1, -1, device=x_seq.device, dtype=x_seq.dtype)
    return torch.einsum("t,t...->...", decay**steps_to_end, x_seq)


def postsynaptic_potential(spikes, tau=PSP_TAU):
    """``p_t = p_{t-1} + (s_t - p_{t-1}) / tau`` from ``p_{-1} = 0`` over the leading time dimension,
    as one product with the filter's lower-triangular kernel ``(1/tau) (1 - 1/tau)^(t-k)``."""
    steps = torch.arange(spikes.shape[0], device=spikes.device)
    lag = steps[:, None] - steps[None, :]
    kernel = torch.where(lag >= 0, (1 - 1 / tau) ** lag.clamp(min=0).to(spikes.dtype) / tau, 0.0)
    return torch.einsum("tk,k...->t...", kernel.to(spikes.dtype), spikes)


class ConvTranspose2d(StepModeMixin, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` with ``step_mode`` ('m' folds ``[T, N]`` into the batch)."""


class ConvBNNeuron(nn.Module):
    """conv -> BN (statistics shared over T) -> neuron, over ``[T, B, C, H, W]``. A static input
    ``[B, C, H, W]`` (the same at every step) is convolved once and repeated over the ``time_steps``."""

    def __init__(self, conv, channels, neuron, time_steps):
        super().__init__()
        self.conv = conv
        self.bn = TimeFoldedBatchNorm(channels)
        self.neuron = make_neuron(neuron)
        self.time_steps = time_steps

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.dim() == 4:
            h = h.expand(self.time_steps, *h.shape)
        return self.neuron(h)


class VQSVAEOutput(NamedTuple):
    reconstruction: torch.Tensor  # [B, C, H, W], tanh of the membrane readout, on the input's scale
    indices: torch.Tensor  # [B, h, w] int64 codebook indices
    quantization_loss: torch.Tensor  # codebook + commitment terms, on the features and on the spike PSPs


def _check_images(x, config):
    expected = (config.image_channels, config.image_size, config.image_size)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"x must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")


def _check_config(config):
    if not isinstance(config, SpikingDiffusionConfig):
        raise TypeError(f"config must be a SpikingDiffusionConfig, got {type(config).__name__}")


class VQSVAE(nn.Module):
    """The spiking VQ-VAE (stage 1): ``forward(x [B, C, H, W]) -> VQSVAEOutput``; ``encode`` gives the code
    indices, ``decode_indices`` the image of an index grid. Images are on the code's scale (pixels in
    [0, 1] minus 0.5). ``spike_conv`` as in ``SpikingUNet``: SpikeConv2d for the convolutions that read
    spikes; the parameters are the same either way."""

    def __init__(self, config: SpikingDiffusionConfig, *, spike_conv=True):
        super().__init__()
        _check_config(config)
        self.config = config
        n, b, d, steps = config.neuron, config.base_channels, config.embedding_dim, config.time_steps
        self.encoder = nn.Sequential(
            ConvBNNeuron(nn.Conv2d(config.image_channels, b, 3, 2, 1), b, n, steps),
            ConvBNNeuron(conv_after_neuron(n, spike_conv, b, 2 * b, 3, 2, 1), 2 * b, n, steps),
            ConvBNNeuron(conv_after_neuron(n, spike_conv, 2 * b, d, 1), d, n, steps),
        )  # fmt: skip
        self.alpha = nn.Parameter(torch.tensor(ALPHA_INIT))
        self.codebook = nn.Embedding(config.codebook_size, d)
        self.spike_generator = ConvBNNeuron(nn.Conv2d(d, d, 1), d, n, steps)
        self.decoder = nn.Sequential(
            ConvBNNeuron(ConvTranspose2d(d, 2 * b, 3, 2, 1, output_padding=1, step_mode="m"), 2 * b, n, steps),
            ConvBNNeuron(ConvTranspose2d(2 * b, b, 3, 2, 1, output_padding=1, step_mode="m"), b, n, steps),
            ConvTranspose2d(b, config.image_channels, 3, 1, 1, step_mode="m"),
        )  # fmt: skip

    def features(self, spikes):
        """The VQ feature ``z`` [B, D, h, w] of the encoder spikes [T, B, D, h, w]: the alpha-mix of their
        membrane readout and firing rate."""
        readout = membrane_readout(spikes, self.config.readout_decay)
        return (1 - self.alpha) * readout + self.alpha * spikes.mean(0)

    def nearest_codes(self, z):
        """The index [B, h, w] of the codebook entry nearest (L2) to each position's vector of ``z``, in
        float32 even under autocast, so that the codes do not depend on the precision."""
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            codebook = self.codebook.weight.float()
            distances = flat.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * flat @ codebook.t()
        return distances.argmin(1).view(z.shape[0], *z.shape[2:])

    def codes(self, indices):
        """The codebook vectors [B, D, h, w] of an index grid [B, h, w]."""
        return self.codebook(indices).permute(0, 3, 1, 2)

    def decode_spikes(self, spikes):
        """The image [B, C, H, W] the decoder reads from the generator's spikes [T, B, D, h, w]."""
        return torch.tanh(membrane_readout(self.decoder(spikes), self.config.readout_decay))

    def decode_indices(self, indices):
        """The image [B, C, H, W] of a grid of code indices [B, h, w] (generation's last step)."""
        return self.decode_spikes(self.spike_generator(self.codes(indices)))

    def encode(self, x):
        """The code indices [B, h, w] of images ``x`` [B, C, H, W]."""
        _check_images(x, self.config)
        return self.nearest_codes(self.features(self.encoder(x)))

    def forward(self, x):
        _check_images(x, self.config)
        beta = self.config.commitment_cost
        spikes = self.encoder(x)
        z = self.features(spikes)
        indices = self.nearest_codes(z)
        quantized = self.codes(indices)
        feature_loss = F.mse_loss(quantized, z.detach()) + beta * F.mse_loss(z, quantized.detach())
        code_spikes = self.spike_generator(z + (quantized - z).detach())  # straight-through estimator
        code_psp, encoder_psp = postsynaptic_potential(code_spikes), postsynaptic_potential(spikes)
        spike_loss = F.mse_loss(code_psp, encoder_psp.detach()) + beta * F.mse_loss(encoder_psp, code_psp.detach())
        return VQSVAEOutput(self.decode_spikes(code_spikes), indices, feature_loss + spike_loss)


class SDID(nn.Module):
    """The spiking diffusion image decoder (stage 2's denoiser, the code's ``DummyModel``):
    ``forward(tokens [B, h, w] int64, t [B]) -> logits [B, codebook_size, h, w]``. ``tokens`` may hold the
    mask id ``codebook_size``; tokens and steps enter as raw floats, as in the code."""

    def __init__(self, config: SpikingDiffusionConfig, *, spike_conv=True):
        super().__init__()
        _check_config(config)
        self.config = config
        n, b, steps = config.neuron, config.sdid_channels, config.time_steps
        widths = (2 * b, 4 * b, 8 * b, 16 * b, 8 * b)
        self.stem = ConvBNNeuron(nn.Conv2d(2, widths[0], 3, 1, 1), widths[0], n, steps)
        self.body = nn.Sequential(*(
            ConvBNNeuron(conv_after_neuron(n, spike_conv, cin, cout, 3, 1, 1), cout, n, steps)
            for cin, cout in pairwise(widths)
        ))  # fmt: skip
        # The head also reads the first layer's spikes, a skip around the chain.
        self.head = conv_after_neuron(n, spike_conv, widths[-1] + widths[0], config.codebook_size, 3, 1, 1)

    def forward(self, tokens, t):
        grid = self.config.token_grid
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (grid, grid):
            raise ValueError(f"tokens must have shape [B, {grid}, {grid}], got {tuple(tokens.shape)}")
        if t.shape != tokens.shape[:1]:
            raise ValueError(f"t must have shape [B] = [{tokens.shape[0]}], got {tuple(t.shape)}")
        dtype = self.stem.conv.weight.dtype
        steps = t.to(dtype)[:, None, None].expand(tokens.shape)
        first = self.stem(torch.stack((tokens.to(dtype), steps), dim=1))
        return self.head(cat_channels(self.body(first), first)).mean(0)


class SpikingDiffusion(nn.Module):
    """Both stages in one module, what checkpoints hold and sampling uses: ``.vq`` (``VQSVAE``) and, in
    stage "diffusion", ``.denoiser`` (``SDID``; None in stage "vq").

    In stage "diffusion" the VQ-SVAE is frozen: its parameters need no gradient and it stays in eval
    mode (its BN keeps the stage-1 statistics) whatever ``train()`` is asked. ``forward`` runs the
    stage's trainable network, the VQ-SVAE's ``forward(x)`` in stage "vq" and the denoiser's
    ``forward(tokens, t)`` in stage "diffusion", so that DDP wraps the part that learns.
    """

    def __init__(self, config: SpikingDiffusionConfig, *, stage="diffusion", spike_conv=True):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        self.config = config
        self.stage = stage
        self.vq = VQSVAE(config, spike_conv=spike_conv)
        self.denoiser = SDID(config, spike_conv=spike_conv) if stage == "diffusion" else None
        if self.denoiser is not None:
            self.vq.requires_grad_(False)

    @classmethod
    def from_preset(cls, name, *, stage="diffusion", spike_conv=True, **overrides):
        return cls(preset_config(name, **overrides), stage=stage, spike_conv=spike_conv)

    def train(self, mode=True):
        super().train(mode)
        if self.denoiser is not None:
            self.vq.eval()
        return self

    def forward(self, *inputs):
        return (self.vq if self.denoiser is None else self.denoiser)(*inputs)
