"""Gaussian diffusion maths and samplers for the spiking diffusion models (SDDPM, FSDDIM): noise
schedules, the forward process and its posterior, ε- and v-parameterisations, the training loss, and
DDPM/DDIM samplers whose single steps work element-wise on any state shape, and the denoiser replayed
from CUDA graphs while sampling."""

from .absorbing import AbsorbingDiffusion
from .cuda_graphs import GraphedDenoiser, denoiser
from .gaussian import DDPM_VARIANCES, DEFAULT_DDIM_STEPS, PREDICTIONS, SAMPLERS, GaussianDiffusion
from .schedules import SCHEDULES, beta_schedule

__all__ = [
    "AbsorbingDiffusion", "DDPM_VARIANCES", "DEFAULT_DDIM_STEPS", "PREDICTIONS", "SAMPLERS", "SCHEDULES",
    "GaussianDiffusion", "GraphedDenoiser", "beta_schedule", "denoiser",
]  # fmt: skip
