"""The SDDPM spiking U-Net: presets, layout, spike flow, options, validation."""

import pytest
import torch
from model_helpers import assert_spike_conv_matches_plain_conv, network_inputs

from spikekern.models import SpikingUNet, SpikingUNetConfig, preset_config
from spikekern.models.layers import TimeFoldedBatchNorm, cat_channels, neuron_threshold, sinusoidal_embedding
from spikekern.nn import BaseNode, IFNode, LIFNode, SpikeConv2d

TINY = SpikingUNetConfig(image_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, time_steps=2)


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


# The published CIFAR-10 network has 66.70 M parameters counting its frozen 1000x128 sinusoid table
# (nn.Embedding.from_pretrained); spikekern computes the sinusoid instead, so 128,000 fewer.
@pytest.mark.parametrize(
    "preset, parameters",
    [("sddpm-cifar10", 66_568_413), ("sddpm-celeba", 76_475_613), ("sddpm-mnist", 6_108_365), ("digits", 2_368_909)],
)
def test_preset_parameter_counts(preset, parameters):
    model = SpikingUNet.from_preset(preset, spike_conv=False)
    assert _parameters(model) == parameters
    if preset == "sddpm-cifar10":
        assert abs(parameters + 1000 * 128 - 66.70e6) < 0.005e6


@pytest.mark.parametrize("preset", ["digits", "sddpm-mnist"])
def test_preset_output_shape(preset):
    model = SpikingUNet.from_preset(preset, spike_conv=False)
    x, t = network_inputs(model.config, batch=2)
    assert model(x, t).shape == x.shape


def test_ann_counterpart_has_the_same_parameters_and_no_neurons():
    spiking = SpikingUNet.from_preset("digits", spike_conv=False)
    ann = SpikingUNet.from_preset("digits", neuron="relu")
    assert ann.config.time_steps == 1
    assert not any(isinstance(m, BaseNode) for m in ann.modules())
    assert {k: v.shape for k, v in ann.state_dict().items()} == {k: v.shape for k, v in spiking.state_dict().items()}


def _spike_reading_convs(model):
    return [m for name, m in model.named_modules() if name.endswith(".conv") and isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("spike_conv", [False, True])
def test_every_block_convolution_reads_spikes_of_a_spikekern_neuron(spike_conv):
    model = SpikingUNet(TINY, spike_conv=spike_conv)
    neurons = [m for m in model.modules() if isinstance(m, BaseNode)]
    assert neurons and all(isinstance(m, IFNode) and not m.keep_state for m in neurons)
    # The only other nonlinearities are Swish in the real-valued time embedding and readout.
    others = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.SiLU, torch.nn.ReLU, torch.nn.GELU))}
    assert all(name.startswith(("time_embedding", "tail")) or ".time_proj." in name for name in others)
    convs = _spike_reading_convs(model)
    assert len(convs) == len(neurons) and all(isinstance(c, SpikeConv2d) == spike_conv for c in convs)
    seen = []
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append(i[0])) for c in convs]
    model(*network_inputs(TINY))
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(convs)
    assert all(bool(((s == 0) | (s == 1)).all()) for s in seen)
    assert any(bool(s.any()) for s in seen)


def test_spike_conv_and_plain_conv_give_the_same_network():
    assert_spike_conv_matches_plain_conv(SpikingUNet, TINY)


def test_channels_last_weights_give_the_same_network_in_the_same_layout():
    torch.manual_seed(0)
    model = SpikingUNet(TINY, spike_conv=False).eval()
    x, t = network_inputs(TINY)
    with torch.no_grad():
        expected = model(x, t)
        model.to(memory_format=torch.channels_last)
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in model.modules() if isinstance(m, BaseNode)]
        actual = model(x, t)
    for hook in hooks:
        hook.remove()
    # oneDNN's channels-last convolutions may round differently: a spike can flip, not the picture.
    torch.testing.assert_close(actual, expected, rtol=0, atol=0.05 * expected.abs().max().item())
    channels_last_steps = [s.flatten(0, 1).is_contiguous(memory_format=torch.channels_last) for s in seen]
    assert all(channels_last_steps), "every neuron, after the skip concatenations too, keeps the layout"


def test_cat_channels_concatenates_along_channels_and_keeps_channels_last():
    a, b = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 6, 5, 5)
    torch.testing.assert_close(cat_channels(a, b), torch.cat((a, b), dim=2), rtol=0, atol=0)
    a_last, b_last = (t.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, (2, 3)) for t in (a, b))
    joined = cat_channels(a_last, b_last)
    assert torch.equal(joined, torch.cat((a, b), dim=2))
    assert joined.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def test_calls_are_independent_and_keep_no_membrane():
    model = SpikingUNet(TINY, spike_conv=False)
    x, t = network_inputs(TINY)
    first = model(x, t)
    torch.testing.assert_close(model(x, t), first, rtol=0, atol=0)
    assert all(not isinstance(m.v, torch.Tensor) for m in model.modules() if isinstance(m, BaseNode))


def test_untrained_network_predicts_almost_zero_and_trains():
    torch.manual_seed(0)
    model = SpikingUNet(TINY, spike_conv=False)
    x, t = network_inputs(TINY, batch=8)
    assert model(x, t).abs().max() < 1e-2  # the readout conv starts at gain 1e-5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = (model(x, t) - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_lif_neuron_option():
    model = SpikingUNet(preset_config("digits", neuron="lif", base_channels=8), spike_conv=False)
    assert all(isinstance(m, LIFNode) for m in model.modules() if isinstance(m, BaseNode))


def test_threshold_guidance_sets_and_restores_every_threshold():
    model = SpikingUNet(TINY, spike_conv=False).eval()
    x, t = network_inputs(TINY)
    with torch.no_grad():
        base = model(x, t)
        with neuron_threshold(model, 0.5):
            assert {m.v_threshold for m in model.modules() if isinstance(m, BaseNode)} == {0.5}
            guided = model(x, t)
        restored = model(x, t)
    assert not torch.equal(guided, base)
    torch.testing.assert_close(restored, base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="v_threshold"):
        with neuron_threshold(model, -1.0):
            pass
    with pytest.raises(ValueError, match="no spikekern neurons"):
        with neuron_threshold(SpikingUNet(preset_config("digits", neuron="relu")), 0.9):
            pass


def test_time_folded_batch_norm_matches_batch_norm_over_folded_steps():
    torch.manual_seed(0)
    folded, plain = TimeFoldedBatchNorm(4), torch.nn.BatchNorm2d(4)
    x = torch.randn(3, 5, 4, 6, 6)
    torch.testing.assert_close(folded(x), plain(x.flatten(0, 1)).unflatten(0, (3, 5)))
    torch.testing.assert_close(folded.running_var, plain.running_var)


def test_sinusoidal_embedding_layout():
    emb = sinusoidal_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 1.0] * 4))
    frequencies = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(emb[1, 0::2], torch.sin(5 * frequencies))
    torch.testing.assert_close(emb[1, 1::2], torch.cos(5 * frequencies))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"neuron": "tanh"}, "neuron"),
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, "divisible"),
        ({"base_channels": 7}, "even"),
        ({"time_steps": 0}, "time_steps"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"readout_decay": 0.0}, "readout_decay"),
        ({"neuron": "relu", "time_steps": 4}, "time_steps must be 1"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        SpikingUNetConfig(**({"image_channels": 1, "image_size": 16} | overrides))


def test_bad_inputs_raise():
    model = SpikingUNet(TINY, spike_conv=False)
    x, t = network_inputs(TINY)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :, :4], t)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:1])
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("sddpm-imagenet")
    with pytest.raises(TypeError, match="SpikingUNetConfig"):
        SpikingUNet({"image_size": 8})
