"""Spiking-Diffusion: a spiking VQ-VAE (stage "vq") and, on its frozen codes, a spiking denoiser trained
as an absorbing-state discrete diffusion (stage "diffusion"); sampling unmasks the code grid token by
token and decodes it with the VQ-SVAE.

    python -m spikekern.train --model spiking-diffusion --stage vq --out runs/vq
    python -m spikekern.train --model spiking-diffusion --stage diffusion --init runs/vq/model.safetensors --out runs/sd
    python -m spikekern.sample --checkpoint runs/sd --temperature 1.0

Scales: spikekern's images are in [-1, 1]; the network works on the published code's scale, pixels in
[0, 1] minus 0.5, which is half of spikekern's. So the input is halved and the decoder's tanh output
doubled (clamped to [-1, 1]) on the way out.

The published training is AdamW (lr 1e-3, weight decay 1e-3), batch 32, 100 epochs for stage 1 and 200
for stage 2 on precomputed codes; ``spikekern.train`` uses Adam without weight decay plus an EMA of the
weights, and encodes every batch with the frozen VQ-SVAE (the same codes: it is in eval mode).

The energy report of ``spikekern.sample`` counts one network call per denoiser call (K per image);
the decoder's one call per image is added into those totals, its transposed convolutions left out.
"""

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..diffusion import AbsorbingDiffusion, denoiser
from ..diffusion._checks import check_real
from ..models.layers import neuron_threshold
from ..models.spiking_diffusion import PRESETS, STAGES, SpikingDiffusion, SpikingDiffusionConfig, preset_config
from .base import ImagePipeline, unwrapped

GAUSSIAN_OPTIONS = ("sampler", "steps", "eta")


@dataclass
class SpikingDiffusionPipeline(ImagePipeline):
    model_config: SpikingDiffusionConfig
    stage: str = "vq"
    # The temperature of the reported FIDs was not found (the code sweeps 0.001 ... 1.0): 1.0 samples the
    # model's own distribution.
    sampling: dict = field(default_factory=lambda: {"temperature": 1.0})

    name = "spiking-diffusion"
    presets = PRESETS
    default_preset = "digits"

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {self.stage!r}")
        # One diffusion step per token, as the code (49 steps for 7x7 codes).
        self.diffusion = AbsorbingDiffusion(self.model_config.codebook_size, self.model_config.num_tokens)

    @classmethod
    def from_preset(cls, preset, *, stage=None, **overrides):
        """The pipeline of a network preset (stage "vq" unless told); ``overrides`` (None values ignored)
        change config fields (``neuron``, ``time_steps``, ``base_channels``, ...)."""
        config = preset_config(preset, **{k: v for k, v in overrides.items() if v is not None})
        return cls(config, stage=stage or "vq")

    @classmethod
    def from_config(cls, config):
        return cls(
            SpikingDiffusionConfig(**config["model"]), stage=config["stage"],
            sampling=config.get("sampling", {"temperature": 1.0}),
        )  # fmt: skip

    def config(self):
        return {
            "family": self.name,
            "stage": self.stage,
            "model": self.model_config.to_dict(),
            "diffusion": {
                "kind": "absorbing", "num_steps": self.diffusion.num_steps, "mask_id": self.diffusion.mask_id,
                "loss": "reweighted_elbo",
            },
            "sampling": dict(self.sampling),
        }  # fmt: skip

    @property
    def can_sample(self):
        """Stage "vq" trains the VQ-SVAE alone; only a stage-"diffusion" model generates."""
        return self.stage == "diffusion"

    @property
    def requires_init(self):
        """Why a fresh run needs ``--init`` (None when it does not): stage "diffusion" learns the codes
        of a trained VQ-SVAE."""
        if self.stage == "diffusion":
            return (
                "stage 'diffusion' trains on the codes of a trained stage-1 VQ-SVAE: pass --init with the "
                "stage-1 run's model.safetensors"
            )
        return None

    def init_differences(self, init_config):
        """As every pipeline's, except that a stage-1 checkpoint has no denoiser to differ in."""
        differences = super().init_differences(init_config)
        if init_config.get("stage") == "vq":
            differences = [key for key in differences if key != "denoiser_channels"]
        return differences

    def build_model(self, spike_conv=True):
        """The ``SpikingDiffusion`` container of this stage (in stage "diffusion" its VQ-SVAE is frozen)."""
        return SpikingDiffusion(self.model_config, stage=self.stage, spike_conv=spike_conv)

    @staticmethod
    def to_model_scale(images):
        """spikekern's [-1, 1] -> the code's pixels in [0, 1] minus 0.5."""
        return images / 2

    @staticmethod
    def from_model_scale(images):
        return (images * 2).clamp(-1.0, 1.0)

    def loss(self, model, x0, **options):
        """Stage "vq": the reconstruction MSE over the data variance plus the quantisation terms. Stage
        "diffusion": the absorbing loss of the denoiser on the frozen VQ-SVAE's codes of ``x0``
        (``options``: ``t``, ``generator``)."""
        x = self.to_model_scale(x0)
        if self.stage == "vq":
            if options:
                raise TypeError(f"stage 'vq' takes no loss options, got {sorted(options)}")
            output = model(x)
            reconstruction_loss = F.mse_loss(output.reconstruction, x) / self.model_config.data_variance
            return reconstruction_loss + output.quantization_loss
        with torch.no_grad():
            tokens = unwrapped(model).vq.encode(x)
        return self.diffusion.training_loss(model, tokens, **options)

    def sampling_options(self, temperature=None, v_threshold=None, **gaussian_options):
        """The sampling settings in force: the given ones, the checkpoint's defaults for those left None.
        ``v_threshold`` (threshold guidance of the denoiser's neurons) is None when off."""
        unknown = sorted(set(gaussian_options) - set(GAUSSIAN_OPTIONS))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}")
        given = sorted(name for name, value in gaussian_options.items() if value is not None)
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to the DDPM/DDIM samplers; {self.name} unmasks its "
                f"{self.diffusion.num_steps} tokens over {self.diffusion.num_steps} steps (set temperature instead)"
            )
        if not self.can_sample:
            raise ValueError(
                f"this is a stage-1 {self.name} model (the VQ-SVAE alone), which cannot generate: train stage 2 "
                "with --stage diffusion --init <its model.safetensors> and sample from that"
            )
        temperature = check_real("temperature", self.sampling["temperature"] if temperature is None else temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: the most likely token), got {temperature}")
        return {"temperature": temperature, "v_threshold": v_threshold}

    def sample(self, model, n, *, generator=None, device=None, progress=False, cuda_graphs=False, **options):
        """``n`` images in [-1, 1] from a stage-"diffusion" ``model`` (put in eval mode by the caller):
        unmask a code grid, then decode it; ``options`` as ``sampling_options`` takes them;
        ``cuda_graphs`` replays the denoiser from CUDA graphs (``spikekern.diffusion.cuda_graphs``)."""
        options = self.sampling_options(**options)
        if device is None:
            device = next(model.parameters()).device
        grid = self.model_config.token_grid
        v_threshold = options["v_threshold"]
        guidance = nullcontext() if v_threshold is None else neuron_threshold(model.denoiser, v_threshold)
        with torch.no_grad(), guidance:
            tokens = self.diffusion.sample(
                denoiser(model, cuda_graphs), (n, grid, grid), temperature=options["temperature"], generator=generator, device=device,
                progress=progress,
            )  # fmt: skip
            return self.from_model_scale(model.vq.decode_indices(tokens))
