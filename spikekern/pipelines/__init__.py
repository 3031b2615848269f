"""What each model family trains and samples: the network, its diffusion and its loss, behind one
interface that ``python -m spikekern.train`` / ``sample`` / ``evaluate`` drive.

A pipeline is built from a preset (``Pipeline.from_preset``) or from a checkpoint's config
(``Pipeline.from_config``) and provides ``build_model``, ``loss``, ``sample``, ``config`` and
``sampling_defaults``.
"""

from .fsddim import FSDDIMPipeline
from .sddpm import SDDPMPipeline
from .spiking_diffusion import SpikingDiffusionPipeline

PIPELINES = {SDDPMPipeline.name: SDDPMPipeline}
PIPELINES[SpikingDiffusionPipeline.name] = SpikingDiffusionPipeline
PIPELINES[FSDDIMPipeline.name] = FSDDIMPipeline


def pipeline_class(name):
    if name not in PIPELINES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(PIPELINES)}")
    return PIPELINES[name]


def pipeline_from_config(config):
    """The pipeline a checkpoint's config describes."""
    family = config.get("family")
    if family not in PIPELINES:
        raise ValueError(f"the checkpoint is of an unknown model family {family!r}; known: {sorted(PIPELINES)}")
    return PIPELINES[family].from_config(config)


__all__ = ["PIPELINES", "SDDPMPipeline", "pipeline_class", "pipeline_from_config"]
__all__ += ["SpikingDiffusionPipeline"]
__all__ += ["FSDDIMPipeline"]
