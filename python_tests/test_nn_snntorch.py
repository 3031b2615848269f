"""spikekern.nn.Leaky and convert() against snnTorch 1.0 itself: spikes and membranes bit-identical in
float32, gradients to tolerance, step by step and as whole sequences, before and after conversion."""

import copy
import itertools

import pytest
import torch
from conftest import assert_bit_equal, assert_close_verbose, training_losses

import spikekern
import spikekern.nn as sknn

snn = pytest.importorskip("snntorch")
from snntorch import surrogate as snn_surrogate  # noqa: E402
from snntorch import utils as snn_utils  # noqa: E402

SPIKE_GRADS = {
    "default": lambda: None,
    "fast_sigmoid": lambda: snn_surrogate.fast_sigmoid(slope=25),
    "atan": lambda: snn_surrogate.atan(alpha=3.0),
    "sigmoid": lambda: snn_surrogate.sigmoid(slope=10),
}


def make_pair(beta, **options):
    spike_grad = options.pop("spike_grad")
    theirs = snn.Leaky(beta=beta.clone() if torch.is_tensor(beta) else beta, spike_grad=SPIKE_GRADS[spike_grad](), **options)
    ours = sknn.Leaky(beta=beta.clone() if torch.is_tensor(beta) else beta, spike_grad=SPIKE_GRADS[spike_grad](), **options)
    return theirs, ours


def run_steps(node, x_seq, sequence=False):
    """snnTorch's tutorial loop (or one multi-step call); returns spikes, membranes and gradients."""
    x_seq = x_seq.clone().requires_grad_()
    if sequence:
        spikes, mems = node(x_seq)
    else:
        outputs = [node(x) for x in x_seq]
        spikes = torch.stack([spk for spk, _ in outputs])
        mems = torch.stack([mem for _, mem in outputs])
    generator = torch.Generator().manual_seed(2)
    loss = (spikes * torch.randn(spikes.shape, generator=generator)).sum() + mems.square().sum() * 0.1
    loss.backward()
    return spikes, mems, [x_seq.grad] + [p.grad for p in node.parameters()]


GRID = list(itertools.product(("subtract", "zero", "none"), (False, True), (False, True), sorted(SPIKE_GRADS)))


@pytest.mark.parametrize("reset_mechanism,learn_beta,learn_threshold,spike_grad", GRID)
def test_leaky_matches_snntorch(reset_mechanism, learn_beta, learn_threshold, spike_grad):
    generator = torch.Generator().manual_seed(0)
    x_seq = torch.randn(6, 4, 11, generator=generator) * 1.2 + 0.4
    options = dict(threshold=0.9, reset_mechanism=reset_mechanism, learn_beta=learn_beta, learn_threshold=learn_threshold, spike_grad=spike_grad)
    theirs, ours = make_pair(0.85, **options)
    expected = run_steps(theirs, x_seq)
    for sequence in (False, True):
        _, ours = make_pair(0.85, **options)
        ours.step_mode = "m" if sequence else "s"
        actual = run_steps(ours, x_seq, sequence)
        assert 0 < expected[0].mean() < 1
        assert_bit_equal(actual[0], expected[0].detach(), "spikes")
        assert_bit_equal(actual[1].detach(), expected[1].detach(), "membranes")
        assert len(actual[2]) == len(expected[2])
        for index, (grad, grad_expected) in enumerate(zip(actual[2], expected[2])):
            scale = max(grad_expected.abs().max().item(), 1.0)
            assert_close_verbose(grad, grad_expected, 1e-5, 1e-5 * scale, f"gradient {index} (sequence={sequence})")


def test_per_neuron_beta_and_init_hidden():
    beta = torch.rand(11) * 0.9
    theirs, ours = make_pair(beta, spike_grad="default", init_hidden=True, learn_beta=True)
    ours.step_mode = "m"
    x_seq = torch.randn(5, 3, 11) * 1.5
    spikes_theirs = torch.stack([theirs(x) for x in x_seq])
    spikes_ours = ours(x_seq)
    assert_bit_equal(spikes_ours, spikes_theirs, "spikes")
    assert_bit_equal(ours.mem, theirs.mem, "membrane kept in the module")
    spikes_theirs.sum().backward()
    spikes_ours.sum().backward()
    assert_close_verbose(ours.beta.grad, theirs.beta.grad, 1e-5, 1e-5, "beta gradient")


def test_state_dict_loads_both_ways_and_reset():
    theirs, ours = make_pair(0.7, spike_grad="default", learn_threshold=True)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    ours(torch.ones(3) * 2)
    assert ours.mem.abs().sum() > 0
    spikekern.functional.reset_net(ours)
    assert ours.mem.abs().sum() == 0


@pytest.mark.parametrize(
    "options",
    [dict(inhibition=True), dict(reset_delay=False), dict(state_quant=True), dict(reset_mechanism="hold"),
     dict(spike_grad=snn_surrogate.triangular())],  # fmt: skip
)
def test_unsupported_options_are_refused(options):
    with pytest.raises((ValueError, TypeError)):
        sknn.Leaky(beta=0.5, **options)


def snntorch_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        snn.Leaky(beta=0.9, init_hidden=True, learn_beta=True),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 10),
        snn.Leaky(beta=0.8, init_hidden=True, output=True, spike_grad=snn_surrogate.fast_sigmoid(25)),
    )


def test_convert_snntorch_network_same_outputs_and_training():
    original = snntorch_network()
    converted = copy.deepcopy(original)
    report = spikekern.convert(converted, spike_layers=False)
    assert [name for name, _, _ in report.replaced] == ["1", "4"] and report.left == []
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, 8, 1, 6, 6, generator=generator) * 2
    labels = torch.randint(0, 10, (8,), generator=generator)
    def loss_of(model):
        membranes = torch.stack([model(x)[1] for x in images])
        return torch.nn.functional.cross_entropy(membranes.mean(0), labels)

    # snnTorch's own reset only knows its classes; spikekern's reset_net resets both.
    losses = {
        "original": training_losses(original, loss_of, 5, 0.2, snn_utils.reset),
        "converted": training_losses(converted, loss_of, 5, 0.2, spikekern.functional.reset_net),
    }
    assert losses["converted"] == pytest.approx(losses["original"], rel=1e-5, abs=1e-6)
    assert losses["converted"][-1] < losses["converted"][0]


def test_functional_helpers_reach_leaky():
    net = torch.nn.Sequential(sknn.Leaky(beta=0.5), sknn.LIFNode())
    spikekern.functional.set_backend(net, "torch")
    spikekern.functional.set_step_mode(net, "m")
    assert net[0].backend == "torch" and net[0].step_mode == "m" and net[0].supported_backends == net[1].supported_backends
    with pytest.raises(ValueError, match="backend"):
        net[0].backend = "cupy"
