"""Spiking-Diffusion's networks: the VQ-SVAE and the SDID denoiser, their presets, the VQ feature and
quantiser, the spike readouts and the stage container."""

import pytest
import torch

from spikekern.models import SDID, VQSVAE, SpikingDiffusion, SpikingDiffusionConfig
from spikekern.models.spiking_diffusion import (
    ConvBNNeuron, membrane_readout, postsynaptic_potential, preset_config,
)  # fmt: skip
from spikekern.nn import BaseNode, IFNode, LIFNode, SpikeConv2d
from spikekern.surrogate import ATan

TINY = SpikingDiffusionConfig(image_size=8, base_channels=4, embedding_dim=4, codebook_size=6, time_steps=3)


def _parameters(module):
    return sum(p.numel() for p in module.parameters())


def _images(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.image_channels, config.image_size, config.image_size)
    return torch.rand(shape, generator=generator) - 0.5


# The notes count 50.7 k VQ-SVAE parameters (encoder 20.1 k, decoder 28.2 k, quantiser and generator
# 2.4 k) and 3.10 M SDID parameters for the 28x28 network.
@pytest.mark.parametrize("preset", ["spiking-diffusion-mnist", "spiking-diffusion-fmnist"])
def test_paper_presets_have_the_published_parameter_counts(preset):
    model = SpikingDiffusion.from_preset(preset, spike_conv=False)
    vq = model.vq
    counts = {
        "vq": _parameters(vq), "encoder": _parameters(vq.encoder), "decoder": _parameters(vq.decoder),
        "denoiser": _parameters(model.denoiser),
    }  # fmt: skip
    assert counts == {"vq": 50_658, "encoder": 20_080, "decoder": 28_225, "denoiser": 3_101_504}
    for name, published in (("vq", 50.7e3), ("encoder", 20.1e3), ("decoder", 28.2e3), ("denoiser", 3.10e6)):
        assert abs(counts[name] - published) <= 0.01 * published, name
    assert counts["vq"] - counts["encoder"] - counts["decoder"] == 2_353  # 2.4 k
    config = model.config
    assert (config.time_steps, config.codebook_size, config.embedding_dim, config.num_tokens) == (16, 128, 16, 49)


def test_digits_preset_is_small():
    model = SpikingDiffusion.from_preset("digits", spike_conv=False)
    assert (_parameters(model.vq), _parameters(model.denoiser)) == (6_530, 776_608)
    assert model.config.num_tokens == 16 and model.config.image_size == 16


def test_denoiser_width_is_set_apart_from_the_vq_svae():
    config = preset_config("digits")
    assert (config.base_channels, config.sdid_channels) == (8, 16)
    assert SDID(config, spike_conv=False).stem.conv.out_channels == 32
    narrow = SpikingDiffusion.from_preset("digits", denoiser_channels=None, spike_conv=False)  # None: base_channels
    assert (_parameters(narrow.vq), _parameters(narrow.denoiser)) == (6_530, 217_840)
    assert preset_config("spiking-diffusion-mnist").sdid_channels == 32


@pytest.mark.parametrize("preset", ["digits", "spiking-diffusion-mnist"])
def test_shapes(preset):
    torch.manual_seed(0)  # the initial weights: an untrained decoder may drive tanh to 1.0 in float32
    config = preset_config(preset, time_steps=2)
    vq, denoiser = VQSVAE(config, spike_conv=False), SDID(config, spike_conv=False)
    x = _images(config)
    output = vq(x)
    grid = config.token_grid
    assert output.reconstruction.shape == x.shape and output.reconstruction.abs().max() < 1
    assert output.indices.shape == (2, grid, grid) and output.indices.dtype == torch.int64
    assert 0 <= output.indices.min() and output.indices.max() < config.codebook_size
    assert output.quantization_loss.dim() == 0
    torch.testing.assert_close(vq.encode(x), output.indices, rtol=0, atol=0)
    assert vq.decode_indices(output.indices).shape == x.shape
    tokens = torch.full((2, grid, grid), config.codebook_size)  # all masked
    assert denoiser(tokens, torch.tensor([1, config.num_tokens])).shape == (2, config.codebook_size, grid, grid)


def test_neurons_are_spikingjelly_lif_over_whole_sequences():
    model = SpikingDiffusion(TINY, spike_conv=False)
    neurons = [m for m in model.modules() if isinstance(m, BaseNode)]
    assert len(neurons) == 3 + 1 + 2 + 5  # encoder, generator, decoder, SDID chain
    for neuron in neurons:
        assert isinstance(neuron, LIFNode) and neuron.tau == 2.0 and neuron.decay_input
        assert (neuron.v_threshold, neuron.v_reset, neuron.keep_state) == (1.0, 0.0, False)
        assert isinstance(neuron.surrogate_function, ATan) and neuron.step_mode == "m"
    if_model = SpikingDiffusion(preset_config("digits", neuron="if", time_steps=2), spike_conv=False)
    assert all(isinstance(m, IFNode) for m in if_model.modules() if isinstance(m, BaseNode))


def test_spike_conv_swaps_only_convolutions_that_read_spikes():
    dense, spiking = SpikingDiffusion(TINY, spike_conv=False), SpikingDiffusion(TINY, spike_conv=True)
    spike_convs = [name for name, m in spiking.named_modules() if isinstance(m, SpikeConv2d)]
    # encoder layers 2-3, SDID chain after the stem, and the head; the transposed convolutions stay dense
    assert spike_convs == [
        "vq.encoder.1.conv", "vq.encoder.2.conv", *[f"denoiser.body.{i}.conv" for i in range(4)], "denoiser.head",
    ]  # fmt: skip
    spiking.load_state_dict(dense.state_dict())
    spiking.train(), dense.train()
    x = _images(TINY)
    torch.testing.assert_close(spiking.vq(x).reconstruction, dense.vq(x).reconstruction)
    tokens, t = torch.randint(0, 7, (2, 2, 2)), torch.tensor([1, 4])
    torch.testing.assert_close(spiking(tokens, t), dense(tokens, t))


def test_readouts_match_their_recursions():
    spikes = (torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    membrane, psp, expected_psp = torch.zeros(2, 3), torch.zeros(2, 3), []
    for s in spikes:
        membrane = 0.8 * membrane + s
        psp = psp + (s - psp) / 2
        expected_psp.append(psp)
    torch.testing.assert_close(membrane_readout(spikes, 0.8), membrane)
    torch.testing.assert_close(postsynaptic_potential(spikes), torch.stack(expected_psp))


def test_vq_feature_mixes_membrane_readout_and_firing_rate_with_learnable_alpha():
    vq = VQSVAE(TINY, spike_conv=False)
    assert vq.alpha.item() == 0.5 and vq.alpha.requires_grad
    spikes = (torch.rand(TINY.time_steps, 2, 4, 2, 2, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    readout = sum(0.8 ** (TINY.time_steps - 1 - t) * spikes[t] for t in range(TINY.time_steps))
    rate = spikes.mean(0)
    with torch.no_grad():
        for alpha in (0.0, 0.3, 1.0):
            vq.alpha.fill_(alpha)
            torch.testing.assert_close(vq.features(spikes), (1 - alpha) * readout + alpha * rate)
    vq.features(spikes).sum().backward()
    torch.testing.assert_close(vq.alpha.grad, (rate - readout).sum())


def test_nearest_codes_is_the_l2_nearest_neighbour():
    vq = VQSVAE(TINY, spike_conv=False)
    z = torch.randn(3, TINY.embedding_dim, 2, 2, generator=torch.Generator().manual_seed(2))
    flat = z.permute(0, 2, 3, 1).reshape(-1, TINY.embedding_dim)
    expected = torch.cdist(flat, vq.codebook.weight).argmin(1).view(3, 2, 2)
    assert torch.equal(vq.nearest_codes(z), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # codes do not depend on the precision
        assert torch.equal(vq.nearest_codes(z), expected)
    with torch.no_grad():  # a position equal to a codebook entry maps to that entry
        z[0, :, 1, 0] = vq.codebook.weight[4]
    assert vq.nearest_codes(z)[0, 1, 0] == 4
    assert torch.equal(vq.codes(expected)[:, :, 0, 0], vq.codebook.weight[expected[:, 0, 0]])


def test_straight_through_estimator_feeds_the_encoder_not_the_codebook():
    torch.manual_seed(0)
    vq = VQSVAE(TINY, spike_conv=False).train()
    output = vq(_images(TINY, batch=4))
    output.reconstruction.square().sum().backward()
    assert vq.encoder[0].conv.weight.grad.abs().sum() > 0  # only through the straight-through estimator
    assert vq.codebook.weight.grad is None or not vq.codebook.weight.grad.any()
    vq.zero_grad()
    vq(_images(TINY, batch=4)).quantization_loss.backward()
    assert vq.codebook.weight.grad.abs().sum() > 0


def test_static_input_runs_once_and_equals_running_on_t_copies():
    torch.manual_seed(0)
    unit = ConvBNNeuron(torch.nn.Conv2d(2, 3, 3, padding=1), 3, "lif", time_steps=4).train()
    x = torch.randn(2, 2, 5, 5) * 3
    copies = x.expand(4, *x.shape)
    torch.testing.assert_close(unit(x), unit.neuron(unit.bn(unit.conv(copies.flatten(0, 1)).unflatten(0, (4, 2)))))


def test_container_freezes_the_vq_svae_in_stage_two():
    model = SpikingDiffusion(TINY, stage="diffusion", spike_conv=False).train()
    assert not model.vq.training and model.denoiser.training
    assert not any(p.requires_grad for p in model.vq.parameters())
    assert all(p.requires_grad for p in model.denoiser.parameters())
    stage_one = SpikingDiffusion(TINY, stage="vq", spike_conv=False).train()
    assert stage_one.denoiser is None and stage_one.vq.training
    assert stage_one(_images(TINY)).reconstruction.shape == (2, 1, 8, 8)
    assert set(stage_one.state_dict()) < set(model.state_dict())


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: SpikingDiffusionConfig(image_size=30), ValueError, "divisible by 4"),
        (lambda: SpikingDiffusionConfig(neuron="relu"), ValueError, "no ANN counterpart"),
        (lambda: SpikingDiffusionConfig(time_steps=0), ValueError, "time_steps"),
        (lambda: SpikingDiffusionConfig(data_variance=0.0), ValueError, "data_variance"),
        (lambda: SpikingDiffusionConfig(denoiser_channels=0), ValueError, "denoiser_channels"),
        (lambda: preset_config("cifar10"), ValueError, "unknown preset"),
        (lambda: preset_config("digits", width=3), TypeError, "width"),
        (lambda: SpikingDiffusion(TINY, stage="both"), ValueError, "stage"),
        (lambda: VQSVAE({"image_size": 8}), TypeError, "SpikingDiffusionConfig"),
        (lambda: VQSVAE(TINY).encode(torch.zeros(1, 1, 16, 16)), ValueError, "x must have shape"),
        (lambda: SDID(TINY)(torch.zeros(1, 3, 3, dtype=torch.long), torch.ones(1)), ValueError, "tokens"),
    ],
)
def test_errors_name_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()
