"""Gaussian diffusion maths and samplers for the spiking diffusion models (SDDPM, FSDDIM): noise
schedules, the forward process and its posterior, ε- and v-parameterisations, the training loss, and
DDPM/DDIM samplers whose single steps work element-wise on any state shape."""

from .absorbing import AbsorbingDiffusion
from .gaussian import DDPM_VARIANCES, DEFAULT_DDIM_STEPS, PREDICTIONS, SAMPLERS, GaussianDiffusion
from .schedules import SCHEDULES, beta_schedule

__all__ = [
    "AbsorbingDiffusion", "DDPM_VARIANCES", "DEFAULT_DDIM_STEPS", "PREDICTIONS", "SAMPLERS", "SCHEDULES",
    "GaussianDiffusion", "beta_schedule",
]  # fmt: skip
