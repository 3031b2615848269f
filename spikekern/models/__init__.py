"""Spiking diffusion models built from spikekern's neurons and spike-driven layers."""

from .sddpm import PRESETS as SDDPM_PRESETS
from .sddpm import SpikingUNet, SpikingUNetConfig, preset_config

__all__ = ["SDDPM_PRESETS", "SpikingUNet", "SpikingUNetConfig", "preset_config"]
