"""spikekern.nn neurons and spikekern.convert against SpikingJelly 2.0 itself: outputs and state
bit-identical in float32, gradients to tolerance, over options, step modes and repeated calls."""

import copy
import itertools

import pytest
import torch
from conftest import assert_bit_equal, assert_close_verbose, training_losses

import spikekern
import spikekern.nn as sknn
from spikekern import functional as skfunctional

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402
from spikingjelly.activation_based import layer as sj_layer  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402

SURROGATES = {"sigmoid": sj_surrogate.Sigmoid, "atan": sj_surrogate.ATan, "erf": lambda: sj_surrogate.Erf(alpha=1.5)}


def module_pair(kind, decay_input, v_reset, detach_reset, surrogate, step_mode, store_v_seq=False):
    common = dict(v_reset=v_reset, detach_reset=detach_reset, step_mode=step_mode, store_v_seq=store_v_seq)
    if kind == "if":
        make = lambda lib, sg: lib.IFNode(surrogate_function=sg, **common)  # noqa: E731
    elif kind == "lif":
        make = lambda lib, sg: lib.LIFNode(tau=3.0, decay_input=decay_input, surrogate_function=sg, **common)  # noqa: E731
    else:
        make = lambda lib, sg: lib.ParametricLIFNode(init_tau=3.0, decay_input=decay_input, surrogate_function=sg, **common)  # noqa: E731
    return make(sj_neuron, SURROGATES[surrogate]()), make(sknn, SURROGATES[surrogate]())


def drive(node, inputs, step_mode, reset):
    """Calls the node on each input (a sequence per call in 'm' mode, step by step in 's' mode),
    resets in between when asked, and returns outputs, states and the input/parameter gradients."""
    inputs = [x.clone().requires_grad_() for x in inputs]
    outputs, states = [], []
    for index, x_seq in enumerate(inputs):
        if reset and index == len(inputs) - 1:
            reset(node)
        out = node(x_seq) if step_mode == "m" else torch.stack([node(x) for x in x_seq])
        outputs.append(out)
        states.append(node.v)
    generator = torch.Generator().manual_seed(9)
    loss = sum((out * torch.randn(out.shape, generator=generator)).sum() for out in outputs)
    loss = loss + states[-1].square().sum()
    loss.backward()
    grads = [x.grad for x in inputs] + [p.grad for p in node.parameters()]
    return outputs, states, grads


GRID = [
    (kind, decay_input, v_reset, detach_reset, surrogate, step_mode)
    for kind, decay_input, v_reset, detach_reset, surrogate, step_mode in itertools.product(
        ("if", "lif", "plif"), (True, False), (0.0, None, -0.2), (False, True), ("sigmoid", "atan", "erf"), ("s", "m")
    )
    if not (kind == "if" and not decay_input) and not (surrogate != "sigmoid" and (detach_reset or v_reset == -0.2))
]


@pytest.mark.parametrize("kind,decay_input,v_reset,detach_reset,surrogate,step_mode", GRID)
def test_neurons_match_spikingjelly(kind, decay_input, v_reset, detach_reset, surrogate, step_mode):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 3, 17, generator=generator) * 1.5 + 0.5 for _ in range(3)]
    theirs, ours = module_pair(kind, decay_input, v_reset, detach_reset, surrogate, step_mode)
    expected = drive(theirs, inputs, step_mode, reset=sj_functional.reset_net)
    actual = drive(ours, inputs, step_mode, reset=skfunctional.reset_net)
    for call, (out, out_expected) in enumerate(zip(actual[0], expected[0])):
        assert_bit_equal(out, out_expected.detach(), f"spikes of call {call}")
    for call, (v, v_expected) in enumerate(zip(actual[1], expected[1])):
        assert_bit_equal(v.detach(), v_expected.detach(), f"v after call {call}")
    assert len(actual[2]) == len(expected[2])
    for index, (grad, grad_expected) in enumerate(zip(actual[2], expected[2])):
        scale = max(grad_expected.abs().max().item(), 1.0)
        assert_close_verbose(grad, grad_expected, 1e-5, 1e-5 * scale, f"gradient {index}")


def test_state_carries_over_and_reset_restarts():
    node = sknn.LIFNode(step_mode="m")
    x_seq = torch.ones(2, 5) * 0.8
    node(x_seq)
    v_after_first = node.v.clone()
    node(x_seq)
    assert not torch.equal(node.v, v_after_first)
    skfunctional.reset_net(node)
    assert node.v == 0.0 and node.v_seq is None
    node(x_seq)
    assert torch.equal(node.v, v_after_first)


def test_plif_state_dict_loads_both_ways():
    theirs = sj_neuron.ParametricLIFNode(init_tau=4.0)
    ours = sknn.ParametricLIFNode(init_tau=2.0)
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.w, theirs.w)
    ours.w.data.fill_(0.7)
    theirs.load_state_dict(ours.state_dict())
    assert theirs.w.item() == pytest.approx(0.7)
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"w"}


@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: sknn.LIFNode(tau=1.0), ValueError),
        (lambda: sknn.LIFNode(tau="2"), TypeError),
        (lambda: sknn.LIFNode(step_mode="x"), ValueError),
        (lambda: sknn.LIFNode(backend="cupy"), ValueError),
        (lambda: sknn.IFNode(v_reset="0"), TypeError),
        (lambda: sknn.IFNode(detach_reset=1), TypeError),
        (lambda: sknn.ParametricLIFNode(init_tau=0.5), ValueError),
        (lambda: sknn.IFNode(surrogate_function=torch.nn.ReLU()), TypeError),
        (lambda: sknn.IFNode(surrogate_function=sj_surrogate.Sigmoid(spiking=False)), TypeError),
    ],
)
def test_bad_module_arguments(make, error):
    with pytest.raises(error):
        make()


def spikingjelly_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        sj_layer.Conv2d(1, 4, 3, padding=1, step_mode="m"),
        sj_layer.BatchNorm2d(4, step_mode="m"),
        sj_neuron.LIFNode(tau=2.0, step_mode="m", surrogate_function=sj_surrogate.ATan()),
        sj_layer.Flatten(step_mode="m"),
        sj_layer.Linear(4 * 6 * 6, 32, step_mode="m"),
        sj_neuron.ParametricLIFNode(step_mode="m", v_reset=None),
        sj_neuron.IFNode(step_mode="m", surrogate_function=sj_surrogate.Sigmoid(spiking=False)),
        sj_layer.Linear(32, 10, step_mode="m"),
    )


def test_convert_spikingjelly_network_same_outputs_and_training():
    original = spikingjelly_network()
    converted = copy.deepcopy(original)
    report = spikekern.convert(converted)
    replaced = [name for name, _, _ in report.replaced]
    assert replaced == ["2", "5", "4"]  # the Linear after the LIF (through Flatten) reads spikes
    assert any(name == "6" and "spiking=True" in reason for name, _, reason in report.left)
    assert isinstance(converted[2], sknn.LIFNode) and isinstance(converted[5], sknn.ParametricLIFNode)
    assert isinstance(converted[4], sknn.SpikeLinear) and "replaced 3 module(s)" in str(report)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 8, 1, 6, 6, generator=generator) * 2
    labels = torch.randint(0, 10, (8,), generator=generator)
    losses = {
        name: training_losses(
            model, lambda m: torch.nn.functional.cross_entropy(m(images).mean(0), labels), 6, 0.2, sj_functional.reset_net
        )
        for name, model in (("original", original), ("converted", converted))
    }  # fmt: skip
    assert losses["converted"] == pytest.approx(losses["original"], rel=1e-5, abs=1e-6)
    assert losses["converted"][-1] < losses["converted"][0]
    converted_state = converted.state_dict()
    original.load_state_dict(converted_state)
    converted.load_state_dict(original.state_dict())


def test_convert_keeps_parameters_and_reports():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), sj_neuron.ParametricLIFNode())
    w = model[1].w
    report = spikekern.convert(model, backend="torch", spike_layers=False)
    assert model[1].w is w and model[1].backend == "torch"
    assert report.left == []
    with pytest.raises(ValueError, match="backend"):
        spikekern.convert(model, backend="cupy")
    with pytest.raises(TypeError, match="model"):
        spikekern.convert("not a model")


def test_set_step_mode_and_backend():
    net = torch.nn.Sequential(sknn.LIFNode(), sknn.IFNode())
    skfunctional.set_step_mode(net, "m")
    skfunctional.set_backend(net, "torch")
    assert all(m.step_mode == "m" and m.backend == "torch" for m in net)
    with pytest.raises(ValueError):
        skfunctional.set_step_mode(net, "t")


class SpikingBasicBlock(torch.nn.Module):
    """Spiking ResNet's block (conv-bn-LIF-conv-bn, add the input, LIF) or SEW's (spikes added: ADD)."""

    def __init__(self, channels, sew):
        super().__init__()
        self.sew = sew
        self.conv1 = sj_layer.Conv2d(channels, channels, 3, padding=1, bias=False, step_mode="m")
        self.bn1 = sj_layer.BatchNorm2d(channels, step_mode="m")
        self.sn1 = sj_neuron.LIFNode(step_mode="m", detach_reset=True)
        self.conv2 = sj_layer.Conv2d(channels, channels, 3, padding=1, bias=False, step_mode="m")
        self.bn2 = sj_layer.BatchNorm2d(channels, step_mode="m")
        self.sn2 = sj_neuron.IFNode(step_mode="m", surrogate_function=sj_surrogate.ATan())

    def forward(self, x_seq):
        out = self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x_seq)))))
        return self.sn2(out) + x_seq if self.sew else self.sn2(out + x_seq)


class SpikformerStyleAttention(torch.nn.Module):
    """Spiking self-attention: q, k, v as spikes, q k^T v without softmax, scaled, then a neuron."""

    def __init__(self, dim):
        super().__init__()
        self.q, self.k, self.v = (sj_layer.Linear(dim, dim, step_mode="m") for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif = (sj_neuron.LIFNode(tau=2.0, step_mode="m") for _ in range(3))
        self.attn_lif = sj_neuron.LIFNode(tau=2.0, v_threshold=0.5, step_mode="m")
        self.proj = sj_layer.Linear(dim, dim, step_mode="m")
        self.proj_lif = sj_neuron.ParametricLIFNode(step_mode="m")

    def forward(self, x_seq):  # [T, B, tokens, dim]
        q, k, v = self.q_lif(self.q(x_seq)), self.k_lif(self.k(x_seq)), self.v_lif(self.v(x_seq))
        attention = self.attn_lif(q @ k.transpose(-2, -1) @ v * 0.125)
        return self.proj_lif(self.proj(attention)) + x_seq


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: SpikingBasicBlock(4, sew=False), (4, 2, 4, 6, 6)),
        (lambda: SpikingBasicBlock(4, sew=True), (4, 2, 4, 6, 6)),
        (lambda: SpikformerStyleAttention(16), (4, 2, 5, 16)),
    ],
    ids=["spiking-resnet-block", "sew-resnet-block", "spikformer-attention"],
)
def test_convert_model_zoo_style_blocks(make, shape):
    torch.manual_seed(0)
    original = make()
    converted = copy.deepcopy(original)
    report = spikekern.convert(converted, spike_layers=False)
    assert report.left == [] and len(report.replaced) >= 2
    assert not any(type(m).__module__.startswith("spikingjelly.activation_based.neuron") for m in converted.modules())
    x_seq = torch.rand(shape, generator=torch.Generator().manual_seed(3)) * 3
    outputs = []
    for model in (original, converted):
        x = x_seq.clone().requires_grad_()
        out = model(x)
        out.square().sum().backward()
        outputs.append((out, x.grad, [p.grad for p in model.parameters()]))
    (out, grad, param_grads), (out_expected, grad_expected, param_grads_expected) = outputs[1], outputs[0]
    assert_bit_equal(out, out_expected, "block output")
    assert_close_verbose(grad, grad_expected, 1e-5, 1e-5, "input gradient")
    for index, (g, g_expected) in enumerate(zip(param_grads, param_grads_expected)):
        assert_close_verbose(g, g_expected, 1e-4, 1e-5 * max(g_expected.abs().max().item(), 1.0), f"parameter {index}")


@pytest.mark.parametrize("kind", ["if", "lif", "plif"])
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_store_v_seq_matches_spikingjelly(kind, step_mode):
    theirs, ours = module_pair(kind, True, 0.0, False, "sigmoid", step_mode, store_v_seq=True)
    x_seq = torch.randn(5, 2, 9, generator=torch.Generator().manual_seed(4)) * 1.5 + 0.5
    results = []
    for node in (theirs, ours):
        x = x_seq.clone().requires_grad_()
        node(x) if step_mode == "m" else [node(x_t) for x_t in x]
        node.v_seq.square().sum().backward()
        results.append((node.v_seq.detach(), x.grad))
    assert_bit_equal(results[1][0], results[0][0], "v_seq")
    assert_close_verbose(results[1][1], results[0][1], 1e-5, 1e-5, "gradient through v_seq")
    skfunctional.reset_net(ours)
    assert ours.v_seq is None
