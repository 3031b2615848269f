"""FSDDIM: the fully spiking U-Net trained with synaptic current learning as a v-predicting diffusion
model (cosine schedule, 1000 steps), sampled with DDIM (eta = 0) in the per-step domain.

Training (``loss``), as ``p_losses`` of the code's ``gaussian_diffusion.py`` with its configs' losses:
the network's per-step currents I_t, decoded by their mean over T, against the v target, each sample's
squared error weighted by SNR / (SNR + 1) = ᾱ_t; plus the consistency of every step's current with that
mean, MSE(I_t, mean_T I), each sample weighted by |sqrt(1 - ᾱ_t) c1(t)| normalised to a largest weight of
1, where c1(t) = sqrt(ᾱ_{t-1}) - sqrt(ᾱ_t) sqrt(1 - ᾱ_{t-1}) / sqrt(1 - ᾱ_t) is the DDIM coefficient of
x̂_0 (so the weight is the factor by which a current's deviation moves x_{t-1}). The two are summed with
weight 1 each; the code's third, per-step loss against the target is off in every config.

Sampling (``sample``), as ``snn_sample_loop``: the state has one image per spike step, ``[T, B, C, H,
W]``, starting from one standard normal draw copied to every step; the network reads step k's state at
spike step k, and the DDIM step is applied to every spike step with that step's current as v̂, x̂_0 not
clipped. After the last step the mean over T, clamped to [-1, 1], is the image. The code visits all 1000
steps; ``steps`` visits a strided subset (the ``ddim_timesteps`` of spikekern's diffusion).

``eta`` > 0, beyond the paper: stochastic DDIM in the per-step domain, with one noise draw per step shared
by every spike step. The update is linear in the state and the current, so the mean over T then follows
the ordinary DDIM-η update of the decoded output, as η = 0 follows the deterministic one.
"""

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..diffusion import GaussianDiffusion, denoiser
from ..models.fsddim import PRESETS, FSDDIMConfig, FSDDIMUNet, preset_config
from ..models.layers import neuron_threshold
from .base import ImagePipeline

SAMPLERS = ("ddim",)
# DDIM steps `python -m spikekern.sample` uses by default; None: every diffusion step, as the code.
DEFAULT_SAMPLING_STEPS = {"digits": 50}


def _sampling_defaults(steps=None):
    return {"sampler": "ddim", "steps": steps, "eta": 0.0}


def consistency_weights(diffusion):
    """|sqrt(1 - ᾱ_t) c1(t)| / max over t, for every diffusion step t (float64): how strongly a change
    of the model's output at step t moves the DDIM update x_{t-1}, relative to the step it moves most."""
    alpha_bar = diffusion.alphas_cumprod
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    x_t_coefficient = ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt()
    x0_coefficient = alpha_bar_prev.sqrt() - alpha_bar.sqrt() * x_t_coefficient
    weights = ((1 - alpha_bar).sqrt() * x0_coefficient).abs()
    return weights / weights.max()


@dataclass
class FSDDIMPipeline(ImagePipeline):
    model_config: FSDDIMConfig
    diffusion_steps: int = 1000
    # What `python -m spikekern.sample` uses unless told otherwise; `steps` None visits every diffusion step.
    sampling: dict = field(default_factory=_sampling_defaults)

    name = "fsddim"
    presets = PRESETS
    default_preset = "digits"

    def __post_init__(self):
        self.diffusion = GaussianDiffusion(num_steps=self.diffusion_steps, schedule="cosine", prediction="v")
        self._consistency_weights = consistency_weights(self.diffusion)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """The pipeline of a network preset; ``overrides`` (None values ignored) change config fields."""
        config = preset_config(preset, **{k: v for k, v in overrides.items() if v is not None})
        return cls(config, sampling=_sampling_defaults(DEFAULT_SAMPLING_STEPS.get(preset)))

    @classmethod
    def from_config(cls, config):
        diffusion = config.get("diffusion", {})
        recorded = (diffusion.get("schedule", "cosine"), diffusion.get("prediction", "v"))
        if recorded != ("cosine", "v"):
            raise ValueError(f"an fsddim checkpoint has a cosine schedule and v-prediction, this one records {recorded}")
        return cls(
            FSDDIMConfig(**config["model"]),
            diffusion_steps=diffusion.get("num_steps", 1000),
            sampling=config.get("sampling", _sampling_defaults()),
        )

    def config(self):
        return {
            "family": self.name,
            "model": self.model_config.to_dict(),
            "diffusion": {"num_steps": self.diffusion_steps, "schedule": "cosine", "prediction": "v"},
            "sampling": dict(self.sampling),
        }

    def build_model(self, spike_conv=True):
        return FSDDIMUNet(self.model_config, spike_conv=spike_conv)

    def loss_terms(self, model, x0, *, t=None, noise=None, generator=None):
        """``{"velocity": ..., "consistency": ...}``, the two losses of synaptic current learning (module
        docstring) on the batch ``x0``; t uniform in 0..N-1 and ε standard normal (drawn from ``generator``,
        t first) where not given."""
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"x0 must be a tensor, got {type(x0).__name__}")
        if x0.dim() != 4 or tuple(x0.shape[1:]) != self.image_shape:
            raise ValueError(f"x0 must have shape [B, {', '.join(map(str, self.image_shape))}], got {tuple(x0.shape)}")
        if t is None:
            t = torch.randint(0, self.diffusion_steps, (x0.shape[0],), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.diffusion.q_sample(x0, t, noise)
        currents = model(x_t, t).float()
        decoded = FSDDIMUNet.decode(currents)
        target = self.diffusion.training_target(x0, noise, t).float()
        snr = self.diffusion.snr(t)
        velocity = ((decoded - target).square().flatten(1).mean(1) * (snr / (snr + 1))).mean()
        step_weights = self._consistency_weights.to(device=currents.device, dtype=currents.dtype)[t]
        consistency = ((currents - decoded).square().mean((0, 2, 3, 4)) * step_weights).mean()
        return {"velocity": velocity, "consistency": consistency}

    def loss(self, model, x0, **options):
        """The training loss: the sum of ``loss_terms`` (``options``: ``t``, ``noise``, ``generator``)."""
        terms = self.loss_terms(model, x0, **options)
        return terms["velocity"] + terms["consistency"]

    def sampling_options(self, sampler=None, steps=None, eta=None, v_threshold=None):
        """The sampling settings in force: the given ones, the checkpoint's defaults for those left None.
        ``steps`` None in the defaults means every diffusion step; ``v_threshold`` (threshold guidance) is
        None when off."""
        sampler = sampler or self.sampling.get("sampler", "ddim")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)} (FSDDIM samples with DDIM in the per-step domain), got {sampler!r}")  # fmt: skip
        if steps is None:
            steps = self.sampling.get("steps") or self.diffusion_steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int, got {type(steps).__name__}")
        if not 1 <= steps <= self.diffusion_steps:
            raise ValueError(f"steps must lie in 1..{self.diffusion_steps}, got {steps}")
        eta = eta if eta is not None else self.sampling.get("eta", 0.0)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            raise TypeError(f"eta must be a float, got {eta!r}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1] (0: the paper's deterministic DDIM), got {eta}")
        if v_threshold is not None and not self.is_spiking:
            raise ValueError("threshold guidance needs a spiking model; this is the ANN counterpart")
        return {"sampler": sampler, "steps": steps, "eta": float(eta), "v_threshold": v_threshold}

    def sample(self, model, n, *, generator=None, device=None, progress=False, cuda_graphs=False, **options):
        """``n`` images in [-1, 1] from ``model`` (put in eval mode by the caller); ``options`` as
        ``sampling_options`` takes them; ``cuda_graphs`` replays the network from CUDA graphs
        (``spikekern.diffusion.cuda_graphs``)."""
        options = self.sampling_options(**options)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        run = (model, n, options["steps"], options["eta"], generator, device, progress, cuda_graphs)
        if options["v_threshold"] is None:
            return self._sample(*run)
        with neuron_threshold(model, options["v_threshold"]):
            return self._sample(*run)

    @torch.no_grad()
    def _sample(self, model, n, steps, eta, generator, device, progress, cuda_graphs):
        network = denoiser(model, cuda_graphs)
        timesteps = self.diffusion.ddim_timesteps(steps).tolist()
        noise = torch.randn((n, *self.image_shape), generator=generator, device=device)
        state = noise.expand(self.model_config.time_steps, *noise.shape)
        pairs = list(zip(timesteps, timesteps[1:] + [-1]))
        for step, previous in tqdm(pairs, desc="FSDDIM sampling", disable=not progress):
            currents = network(state, torch.full((n,), step, dtype=torch.int64, device=state.device))
            shared_noise = None
            if eta > 0:
                shared_noise = torch.randn(noise.shape, generator=generator, device=state.device).expand_as(state)
            state = self.diffusion.ddim_step(
                state, step, previous, currents.to(state.dtype), eta=eta, clip_x0=False, noise=shared_noise
            )
        return FSDDIMUNet.decode(state).clamp(-1.0, 1.0)
