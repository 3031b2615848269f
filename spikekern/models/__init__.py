"""Spiking diffusion models built from spikekern's neurons and spike-driven layers."""

from .fsddim import PRESETS as FSDDIM_PRESETS
from .fsddim import FSDDIMConfig, FSDDIMUNet
from .sddpm import PRESETS as SDDPM_PRESETS
from .sddpm import SpikingUNet, SpikingUNetConfig, preset_config
from .spiking_diffusion import PRESETS as SPIKING_DIFFUSION_PRESETS
from .spiking_diffusion import SDID, VQSVAE, SpikingDiffusion, SpikingDiffusionConfig

__all__ = ["SDDPM_PRESETS", "SpikingUNet", "SpikingUNetConfig", "preset_config"]
__all__ += ["SDID", "SPIKING_DIFFUSION_PRESETS", "SpikingDiffusion", "SpikingDiffusionConfig", "VQSVAE"]
__all__ += ["FSDDIMConfig", "FSDDIMUNet", "FSDDIM_PRESETS"]
