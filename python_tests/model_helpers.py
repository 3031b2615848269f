"""What the diffusion-network tests share: seeded inputs, and the check that a network's SpikeConv2d
path computes what its plain-convolution path does."""

import torch


def network_inputs(config, batch=3, seed=0):
    """``(x [B, C, S, S], t [B])`` for a network config, seeded."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.image_channels, config.image_size, config.image_size, generator=generator)
    return x, torch.randint(0, 1000, (batch,), generator=generator)


def assert_spike_conv_matches_plain_conv(network_class, config):
    """The same weights with ``spike_conv`` on and off: the same output, and the same input gradient."""
    torch.manual_seed(0)
    plain = network_class(config, spike_conv=False)
    spiking = network_class(config, spike_conv=True)
    spiking.load_state_dict(plain.state_dict())
    x, t = network_inputs(config)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1, t), spiking(x2, t)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-6)


def sample_embedded_default(family, out, capsys, *options):
    """Two samples of ``family``'s embedded default written to ``out`` (.npy); checks the images and that
    the command named the asset, and returns the asset's JSON config."""
    import json

    import numpy as np

    from spikekern import sample

    sample.main(["--model", family, "--n", "2", *options, "--out", str(out), "--no-progress"])
    images = np.load(out)
    assert images.shape == (2, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    checkpoint = sample.embedded_checkpoint(family)
    assert f"{family}-digits.safetensors" in capsys.readouterr().out
    with open(checkpoint.removesuffix(".safetensors") + ".json") as file:
        return json.load(file)


def copy_of_run(run_dir, out):
    """A new run directory holding ``run_dir``'s training state, to resume."""
    out.mkdir()
    for name in ("last.safetensors", "last.json"):
        (out / name).write_bytes((run_dir / name).read_bytes())
    return out
