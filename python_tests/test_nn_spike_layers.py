"""SpikeLinear / SpikeConv2d as modules, and convert() putting them after neurons."""

import copy

import pytest
import torch
from conftest import assert_bit_equal, training_losses

import spikekern
import spikekern.nn as sknn


def spikes(shape, rate=0.3, seed=0):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < rate).float()


def test_spike_linear_module_equals_linear_for_any_leading_dims():
    layer = sknn.SpikeLinear(7, 3, step_mode="m")
    reference = torch.nn.Linear(7, 3)
    reference.load_state_dict(layer.state_dict())
    for shape in [(5, 7), (2, 4, 7), (2, 3, 4, 7)]:
        s = spikes(shape)
        assert_bit_equal(layer(s), reference(s), f"output for {shape}")
    layer.load_state_dict(reference.state_dict())


@pytest.mark.parametrize("step_mode,shape", [("s", (2, 3, 6, 6)), ("m", (2, 2, 3, 6, 6))])
def test_spike_conv2d_module_equals_conv2d(step_mode, shape):
    layer = sknn.SpikeConv2d(3, 4, 3, stride=2, padding=1, step_mode=step_mode)
    reference = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    reference.load_state_dict(layer.state_dict())
    s = spikes(shape).requires_grad_()
    out = layer(s)
    expected = reference(s.flatten(0, 1)).unflatten(0, shape[:2]) if step_mode == "m" else reference(s)
    assert_bit_equal(out, expected, "output")
    with pytest.raises(ValueError, match="step_mode"):
        layer(spikes(shape[1:] if step_mode == "m" else (1,) + shape))


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: sknn.SpikeConv2d(3, 4, 3, padding_mode="reflect"), "padding_mode"),
        (lambda: sknn.SpikeConv2d(3, 4, 3, padding="same"), "padding"),
        (lambda: sknn.SpikeLinear(3, 4, path="fast"), "path"),
        (lambda: sknn.SpikeLinear(3, 4, step_mode="x"), "step_mode"),
        (lambda: sknn.SpikeLinear(3, 4, backend="cupy"), "backend"),
    ],
)
def test_bad_arguments(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def test_non_binary_input_is_refused():
    with pytest.raises(ValueError):
        sknn.SpikeLinear(3, 2)(torch.full((2, 3), 0.5))


def spiking_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),  # reads images: stays
        sknn.LIFNode(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # reads spikes, unsupported padding
        sknn.IFNode(),
        torch.nn.Conv2d(4, 6, 3, padding=1),  # reads spikes
        sknn.LIFNode(),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 3 * 3, 10),  # reads spikes through Flatten
    )


def test_convert_replaces_layers_that_read_spikes_and_trains_the_same():
    original = spiking_net()
    converted = copy.deepcopy(original)
    report = spikekern.convert(converted)
    assert sorted(name for name, _, _ in report.replaced) == ["5", "8"]
    assert [(name, reason) for name, _, reason in report.left] == [("3", "padding_mode='reflect' (only 'zeros' is supported)")]
    assert isinstance(converted[5], sknn.SpikeConv2d) and converted[5].weight is not original[5].weight
    assert isinstance(converted[8], sknn.SpikeLinear) and isinstance(converted[0], torch.nn.Conv2d)
    images = torch.rand(8, 1, 6, 6, generator=torch.Generator().manual_seed(1)) * 3
    labels = torch.arange(8) % 10
    losses = {
        name: training_losses(
            model, lambda m: torch.nn.functional.cross_entropy(m(images), labels), 4, 0.5, spikekern.functional.reset_net
        )
        for name, model in (("original", original), ("converted", converted))
    }  # fmt: skip
    assert losses["converted"] == pytest.approx(losses["original"], rel=1e-5, abs=1e-6)
    assert losses["converted"][-1] < losses["converted"][0]


def test_layers_keep_the_same_parameters():
    net = torch.nn.Sequential(sknn.IFNode(), torch.nn.Linear(4, 2))
    weight = net[1].weight
    spikekern.convert(net, backend="torch")
    assert net[1].weight is weight and net[1].backend == "torch"


def test_graded_or_membrane_outputs_are_not_spikes():
    snn = pytest.importorskip("snntorch")
    net = torch.nn.Sequential(
        snn.Leaky(beta=0.5, init_hidden=True, graded_spikes_factor=2.0), torch.nn.Linear(4, 4),
        snn.Leaky(beta=0.5, init_hidden=True), torch.nn.Linear(4, 2),
    )  # fmt: skip
    report = spikekern.convert(net)
    assert isinstance(net[1], torch.nn.Linear) and not isinstance(net[1], sknn.SpikeLinear)
    assert isinstance(net[3], sknn.SpikeLinear)
    assert sorted(name for name, _, _ in report.replaced) == ["0", "2", "3"]
    assert net(torch.rand(3, 4)).shape == (3, 2)
