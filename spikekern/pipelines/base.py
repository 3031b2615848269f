"""What every image-generating pipeline shares, read off its ``model_config``."""

import torch


def unwrapped(model):
    """The network itself under the wrappers training may put around it: ``torch.compile``'s (outermost,
    as PyTorch advises for DDP) and ``DistributedDataParallel``'s. A loss calls the wrapper for the forward
    it trains and reaches the network's other parts (a frozen first stage, say) through this."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class ImagePipeline:
    """Mixin for pipelines with a ``model_config`` holding ``image_channels``, ``image_size`` and ``neuron``."""

    @property
    def image_shape(self):
        c = self.model_config
        return (c.image_channels, c.image_size, c.image_size)

    @property
    def is_spiking(self):
        return self.model_config.neuron != "relu"

    def init_differences(self, init_config):
        """The network-config fields in which a checkpoint's config (``--init``) differs from this one's, the
        number of spike steps left out: the weights are shared over the steps, so a network trained at one T
        initialises the same network at another (fine-tuning at a larger T)."""
        theirs, ours = init_config.get("model", {}), self.config()["model"]
        keys = (theirs.keys() | ours.keys()) - {"time_steps"}
        return sorted(key for key in keys if theirs.get(key) != ours.get(key))
