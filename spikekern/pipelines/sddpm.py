"""SDDPM: the spiking U-Net trained as an epsilon-predicting DDPM (linear betas, 1000 steps), sampled
with DDPM or DDIM, optionally with the threshold-guided strategy."""

from dataclasses import dataclass, field

from ..diffusion import GaussianDiffusion, denoiser
from ..models.layers import neuron_threshold
from ..models.sddpm import PRESETS, SpikingUNet, SpikingUNetConfig, preset_config
from .base import ImagePipeline

SAMPLERS = ("ddpm", "ddim")


@dataclass
class SDDPMPipeline(ImagePipeline):
    model_config: SpikingUNetConfig
    diffusion_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # What `python -m spikekern.sample` uses unless told otherwise: the paper's DDPM over all steps for the
    # paper presets; checkpoints record their own (the embedded digits model samples with DDIM).
    sampling: dict = field(default_factory=lambda: {"sampler": "ddpm", "steps": None, "eta": 0.0})

    name = "sddpm"
    presets = PRESETS
    default_preset = "digits"

    def __post_init__(self):
        self.diffusion = GaussianDiffusion(
            num_steps=self.diffusion_steps, schedule="linear", prediction="eps", beta_start=self.beta_start,
            beta_end=self.beta_end,
        )  # fmt: skip

    @classmethod
    def from_preset(cls, preset, **overrides):
        """The pipeline of a network preset; ``overrides`` (None values ignored) change config fields."""
        return cls(preset_config(preset, **{k: v for k, v in overrides.items() if v is not None}))

    @classmethod
    def from_config(cls, config):
        diffusion = config.get("diffusion", {})
        return cls(
            SpikingUNetConfig(**config["model"]),
            diffusion_steps=diffusion.get("num_steps", 1000),
            beta_start=diffusion.get("beta_start", 1e-4),
            beta_end=diffusion.get("beta_end", 0.02),
            sampling=config.get("sampling", {"sampler": "ddpm", "steps": None, "eta": 0.0}),
        )

    def config(self):
        return {
            "family": self.name,
            "model": self.model_config.to_dict(),
            "diffusion": {
                "num_steps": self.diffusion_steps, "schedule": "linear", "prediction": "eps",
                "beta_start": self.beta_start, "beta_end": self.beta_end,
            },
            "sampling": dict(self.sampling),
        }  # fmt: skip

    def build_model(self, spike_conv=True):
        return SpikingUNet(self.model_config, spike_conv=spike_conv)

    def loss(self, model, x0, **options):
        """The DDPM objective; ``options`` (``t``, ``noise``, ``generator``) go to ``training_loss``."""
        return self.diffusion.training_loss(model, x0, **options)

    def sampling_options(self, sampler=None, steps=None, eta=None, v_threshold=None):
        """The sampling settings in force: the given ones, the checkpoint's defaults for those left None.
        ``v_threshold`` (threshold guidance) is None when off."""
        sampler = sampler or self.sampling["sampler"]
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        if sampler == "ddpm":
            if steps is not None:
                raise ValueError("steps applies to the DDIM sampler; DDPM runs every diffusion step")
            steps = self.diffusion_steps
        elif steps is None:
            steps = self.sampling.get("steps") or 50
        eta = eta if eta is not None else self.sampling.get("eta", 0.0)
        if v_threshold is not None and not self.is_spiking:
            raise ValueError("threshold guidance needs a spiking model; this is the ANN counterpart")
        return {"sampler": sampler, "steps": steps, "eta": eta, "v_threshold": v_threshold}

    def sample(self, model, n, *, generator=None, device=None, progress=False, cuda_graphs=False, **options):
        """``n`` images in [-1, 1] from ``model`` (put in eval mode by the caller); ``options`` as
        ``sampling_options`` takes them; ``cuda_graphs`` replays the network from CUDA graphs
        (``spikekern.diffusion.cuda_graphs``)."""
        options = self.sampling_options(**options)
        steps = options["steps"] if options["sampler"] == "ddim" else None

        def run():
            return self.diffusion.sample(
                denoiser(model, cuda_graphs), (n, *self.image_shape), sampler=options["sampler"], steps=steps, eta=options["eta"],
                generator=generator, device=device, progress=progress,
            )  # fmt: skip

        if options["v_threshold"] is None:
            return run()
        with neuron_threshold(model, options["v_threshold"]):
            return run()
