"""The FSDDIM spiking U-Net: presets, layout, its neuron against the notes' equations, tdBN, spike flow,
the Leaky ``keep_state`` option and threshold guidance on Leaky neurons, validation."""

import math

import pytest
import torch
from model_helpers import assert_spike_conv_matches_plain_conv, network_inputs
from conftest import assert_bit_equal

from spikekern.models import FSDDIM_PRESETS, FSDDIMConfig, FSDDIMUNet
from spikekern.models.fsddim import ThresholdScaledBatchNorm, make_neuron, preset_config
from spikekern.models.layers import TimeFoldedBatchNorm, neuron_threshold, sinusoidal_embedding
from spikekern.nn import Leaky, SpikeConv2d
from spikekern.surrogate import Triangle

TINY = FSDDIMConfig(image_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, time_steps=2)


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


def _leaky_neurons(model):
    return [m for m in model.modules() if isinstance(m, Leaky)]


# ------------------------------------------------------------------------------------------------
# Presets and layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, parameters",
    [("fsddim-cifar10", 52_540_547), ("fsddim-celeba", 52_540_547), ("fsddim-mnist", 52_536_705), ("digits", 1_439_281)],
)
def test_preset_parameter_counts(preset, parameters):
    with torch.device("meta"):  # counts only: no memory, no initialisation
        model = FSDDIMUNet.from_preset(preset, spike_conv=False)
    assert _parameters(model) == parameters
    if preset == "fsddim-cifar10":
        assert abs(parameters - 52.54e6) < 0.01 * 52.54e6  # the count of the published code, shared/papers/fsddim.md


def test_presets_follow_the_configs():
    sizes = {name: (c.image_channels, c.image_size, c.time_steps) for name, c in FSDDIM_PRESETS.items()}
    assert sizes == {"fsddim-cifar10": (3, 32, 8), "fsddim-celeba": (3, 64, 4), "fsddim-mnist": (1, 32, 8), "digits": (1, 16, 4)}
    assert all(c.channel_mult == (1, 2, 3, 4) and c.base_channels == 128 for n, c in FSDDIM_PRESETS.items() if n != "digits")
    assert all(c.beta == 0.8 and c.neuron == "lif" for c in FSDDIM_PRESETS.values())


def test_cifar10_layout_is_the_codes():
    with torch.device("meta"):
        model = FSDDIMUNet.from_preset("fsddim-cifar10", spike_conv=False)
    down_blocks = [block for level in model.down for block in level[:-1]]
    assert [b.conv1.in_channels for b in down_blocks] == [128, 128, 128, 128, 256, 256, 384, 384]
    assert [level[-1][-1].out_channels for level in model.down[:-1]] == [128, 256, 384]  # AvgPool -> 1x1 conv
    assert isinstance(model.down[-1][-1].neuron, Leaky) and model.down[-1][-1].conv.out_channels == 512
    assert [b.conv1.in_channels for b in model.middle] == [512, 512]
    up_blocks = [block for level in model.up for block in level[:-1]]
    assert [(b.conv1.in_channels, b.conv1.out_channels) for b in up_blocks] == [
        (896, 512), (896, 512), (640, 384), (640, 384), (384, 256), (384, 256), (256, 128), (256, 128)
    ]  # fmt: skip
    assert (model.final_block.conv1.in_channels, model.final_block.conv1.out_channels) == (256, 128)
    assert (model.conv_out.in_channels, model.conv_out.out_channels, model.conv_out.kernel_size) == (768, 3, (1, 1))
    assert (model.time_embedding.linear1.in_features, model.time_embedding.linear2.out_features) == (128, 512)
    scales = [m.scale for m in model.modules() if isinstance(m, ThresholdScaledBatchNorm)]
    residual_blocks = len(down_blocks) + len(model.middle) + len(up_blocks) + 1
    assert scales.count(pytest.approx(1 / math.sqrt(2))) == 2 * residual_blocks  # second conv and shortcut
    assert scales.count(1.0) == residual_blocks + 2  # first conv of each block, the two conv-tdBN-LIF layers


@pytest.mark.parametrize("spike_conv", [False, True])
def test_output_is_per_step_currents_for_both_input_layouts(spike_conv):
    model = FSDDIMUNet(TINY, spike_conv=spike_conv)
    x, t = network_inputs(TINY)
    currents = model(x, t)
    assert currents.shape == (TINY.time_steps, *x.shape)
    # Direct encoding is the same input at every step.
    torch.testing.assert_close(model(x.expand(TINY.time_steps, *x.shape), t), currents, rtol=1e-6, atol=1e-6)
    assert FSDDIMUNet.decode(currents).shape == x.shape


def test_calls_are_independent_and_keep_no_membrane():
    model = FSDDIMUNet(TINY, spike_conv=False).eval()
    x, t = network_inputs(TINY)
    with torch.no_grad():
        first = model(x, t)
        torch.testing.assert_close(model(x, t), first, rtol=0, atol=0)
    neurons = _leaky_neurons(model)
    assert neurons and all(not n.keep_state and n.mem.numel() == 0 for n in neurons)


def test_ann_counterpart_has_the_same_parameters_and_no_neurons():
    spiking = FSDDIMUNet.from_preset("digits", spike_conv=False)
    ann = FSDDIMUNet.from_preset("digits", neuron="relu")
    assert ann.config.time_steps == 1 and not _leaky_neurons(ann)
    assert {k: v.shape for k, v in ann.named_parameters()} == {k: v.shape for k, v in spiking.named_parameters()}
    x, t = network_inputs(ann.config, batch=2)
    assert ann(x, t).shape == (1, *x.shape)


def test_if_neuron_is_the_same_neuron_without_leak():
    model = FSDDIMUNet(preset_config("digits", neuron="if", base_channels=8), spike_conv=False)
    assert {float(n.beta) for n in _leaky_neurons(model)} == {1.0}
    assert {float(n.beta) for n in _leaky_neurons(FSDDIMUNet(TINY))} == {torch.tensor(0.8).item()}


# ------------------------------------------------------------------------------------------------
# The neuron, against the equations of shared/papers/fsddim.md
# ------------------------------------------------------------------------------------------------


class _NotesSpike(torch.autograd.Function):
    """o = [u > V_th]; do/du = max(0, 1 - 2 |u - V_th|), as written in the notes."""

    @staticmethod
    def forward(ctx, u, v_threshold):
        ctx.save_for_backward(u)
        ctx.v_threshold = v_threshold
        return (u > v_threshold).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * torch.clamp(1 - 2 * (u - ctx.v_threshold).abs(), min=0), None


def _notes_lif(currents, tau=0.8, v_threshold=1.0):
    """u_t = tau u_{t-1} (1 - o_{t-1}) + I_t with a detached reset, u_0 = 0."""
    u = torch.zeros_like(currents[0])
    o = torch.zeros_like(u)
    spikes = []
    for current in currents:
        u = tau * u * (1 - o.detach()) + current
        o = _NotesSpike.apply(u, v_threshold)
        spikes.append(o)
    return torch.stack(spikes)


def test_neuron_matches_the_notes_equations_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    currents = torch.randn(8, 6, 33, generator=generator) * 1.2 + 0.4
    mine, notes = currents.clone().requires_grad_(), currents.clone().requires_grad_()
    spikes, expected = make_neuron(TINY)(mine), _notes_lif(notes)
    assert_bit_equal(spikes, expected, "spikes")
    assert 0.1 < float(expected.detach().mean()) < 0.9
    weights = torch.randn(spikes.shape, generator=generator)
    (spikes * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(mine.grad, notes.grad, rtol=1e-5, atol=1e-6)
    assert mine.grad.abs().sum() > 0


def test_triangle_surrogate_gradient():
    x = torch.linspace(-1, 1, 81, dtype=torch.float64, requires_grad=True)
    Triangle()(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.clamp(1 - 2 * x.detach().abs(), min=0))
    assert Triangle().alpha == 2.0 and Triangle(4.0).alpha == 4.0


def test_leaky_keep_state_false_starts_every_call_from_rest():
    x = torch.full((3, 2, 5), 0.6)  # spikes 0, 1, 0 from rest; the membrane ends at 0.6
    options = {"reset_mechanism": "zero", "init_hidden": True, "step_mode": "m"}
    fresh, stateful = Leaky(0.8, **options, keep_state=False), Leaky(0.8, **options)
    first = fresh(x)
    assert_bit_equal(first, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand_as(x), "from rest")
    assert_bit_equal(fresh(x), first, "second call")
    assert fresh.mem.numel() == 0
    assert_bit_equal(stateful(x), first, "stateful first call")
    assert not torch.equal(stateful(x), first)  # carries 0.6 over
    # Without init_hidden a given membrane is the start, and it is not kept either.
    explicit = Leaky(0.8, reset_mechanism="zero", step_mode="m", keep_state=False)
    spikes, mem = explicit(x, torch.full((2, 5), 0.6))
    assert_bit_equal(spikes[0], torch.ones(2, 5), "from the given membrane")
    assert mem.shape == x.shape and explicit.mem.numel() == 0
    with pytest.raises(TypeError, match="keep_state"):
        Leaky(0.8, keep_state=1)


# ------------------------------------------------------------------------------------------------
# tdBN, the embedding, spike flow
# ------------------------------------------------------------------------------------------------


def test_threshold_scaled_batch_norm_is_tdbn():
    torch.manual_seed(0)
    alpha = 1 / math.sqrt(2)
    bn = ThresholdScaledBatchNorm(4, alpha)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 4, 6, 6) * 2 + 1
    dims = (0, 1, 3, 4)  # over (T, B, H, W), per channel
    mean, var = x.mean(dims), x.var(dims, unbiased=False)

    def expected(mean, var):
        normalised = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
        return normalised * alpha * 1.0 * bn.weight[:, None, None] + bn.bias[:, None, None]

    torch.testing.assert_close(bn(x), expected(mean, var), rtol=1e-5, atol=1e-5)
    n = x.numel() / 4
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var * n / (n - 1))
    bn.eval()
    torch.testing.assert_close(bn(x), expected(bn.running_mean, bn.running_var), rtol=1e-5, atol=1e-5)
    plain, scaled = TimeFoldedBatchNorm(4), ThresholdScaledBatchNorm(4)  # alpha 1 is the parent exactly
    assert_bit_equal(scaled(x), plain(x), "alpha 1")


def test_sinusoid_is_the_codes_table():
    t = torch.tensor([0, 7, 500])
    embedding = sinusoidal_embedding(t, 16, endpoint=True)
    frequencies = torch.exp(torch.arange(8) * (-math.log(10000.0) / 7))  # the code's div_term, half_dim - 1 = 7
    # float32 arguments up to 500 rad: their rounding differs by a few 1e-5 between the two spacings
    torch.testing.assert_close(embedding[:, 0::2], torch.sin(t[:, None] * frequencies), rtol=0, atol=1e-4)
    torch.testing.assert_close(embedding[:, 1::2], torch.cos(t[:, None] * frequencies), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="dim >= 4"):
        sinusoidal_embedding(t, 2, endpoint=True)


@pytest.mark.parametrize("spike_conv", [False, True])
def test_spike_driven_layers_read_spikes_and_the_others_do_not(spike_conv):
    model = FSDDIMUNet(TINY, spike_conv=spike_conv)  # training mode: batch statistics, neurons fire
    inputs = {}
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    def record(module, args, output):
        inputs[module] = args[0]

    hooks = [m.register_forward_hook(record) for m in layers]
    model(*network_inputs(TINY, batch=4))
    for hook in hooks:
        hook.remove()
    assert set(inputs) == set(layers)

    def binary(x):
        return bool(((x == 0) | (x == 1)).all())

    spike_input = {m for m, x in inputs.items() if binary(x)}
    spike_convs = {m for m in layers if isinstance(m, SpikeConv2d)}
    if spike_conv:
        assert spike_convs == {m for m in spike_input if isinstance(m, torch.nn.Conv2d)}
    else:
        assert not spike_convs
    # Every block's second conv reads spikes; the first conv, the time embedding's first Linear and the output conv do not.
    assert all(block.conv2 in spike_input for block in model.modules() if hasattr(block, "conv2"))
    assert not {model.conv_in, model.conv_out, model.time_embedding.linear1} & spike_input
    assert any(bool(inputs[m].any()) for m in spike_input)


def test_spike_conv_and_plain_conv_give_the_same_network():
    assert_spike_conv_matches_plain_conv(FSDDIMUNet, TINY)


def test_threshold_guidance_sets_and_restores_leaky_thresholds():
    model = FSDDIMUNet(TINY, spike_conv=False).eval()
    x, t = network_inputs(TINY)
    with torch.no_grad():
        base = model(x, t)
        with neuron_threshold(model, 0.5):
            assert {float(n.threshold) for n in _leaky_neurons(model)} == {0.5}
            guided = model(x, t)
        restored = model(x, t)
    assert not torch.equal(guided, base)
    torch.testing.assert_close(restored, base, rtol=0, atol=0)
    assert {float(n.threshold) for n in _leaky_neurons(model)} == {1.0}
    learnable = Leaky(0.8, threshold=0.9, learn_threshold=True)
    with neuron_threshold(learnable, 1.3):
        assert learnable.threshold.item() == pytest.approx(1.3)
    assert isinstance(learnable.threshold, torch.nn.Parameter) and learnable.threshold.item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="no spikekern neurons"), neuron_threshold(FSDDIMUNet(preset_config("digits", neuron="relu")), 0.9):  # fmt: skip
        pass


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"neuron": "tanh"}, "neuron"),
        ({"image_size": 12, "channel_mult": (1, 2, 2, 2)}, "divisible"),
        ({"base_channels": 7}, "base_channels"),
        ({"base_channels": 2}, "base_channels"),
        ({"time_steps": 0}, "time_steps"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"beta": 0.0}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"neuron": "relu", "time_steps": 4}, "time_steps must be 1"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        FSDDIMConfig(**({"image_channels": 1, "image_size": 16} | overrides))


def test_bad_inputs_raise():
    model = FSDDIMUNet(TINY, spike_conv=False)
    x, t = network_inputs(TINY)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :, :4], t)
    with pytest.raises(ValueError, match=r"x must have shape .*T=2"):
        model(x.expand(3, *x.shape), t)
    with pytest.raises(ValueError, match=r"t must be a tensor of shape \[B\] = \[3\], got \(1,\)"):
        model(x, t[:1])
    with pytest.raises(ValueError, match="t must be a tensor of shape .* got int"):
        model(x, 5)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("fsddim-imagenet")
    with pytest.raises(TypeError, match="FSDDIMConfig"):
        FSDDIMUNet({"image_size": 8})
