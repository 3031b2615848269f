"""What every image-generating pipeline shares, read off its ``model_config``."""


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
        """The network-config fields in which a checkpoint's config (``--init``) differs from this one's."""
        theirs, ours = init_config.get("model", {}), self.config()["model"]
        return sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
