"""The neuron ops' "compiled" backend (the reference under torch.compile: the CPU fast path) against the
reference: spikes and membranes bit-identical, gradients within the fast backends' tolerances, over a
grid of neuron options, step counts (T = 1, the recompute and saved-charge modes), odd and empty shapes,
dtypes; whole spiking U-Nets; nesting under an outer torch.compile; and the refusals.

Every test starts from a cleared dynamo cache and checks that compiled code ran: past dynamo's recompile
limit the backend runs the reference eagerly, which would pass without testing anything. (Empty inputs
never reach a backend.)
"""

import pytest
import torch
import torch._dynamo
import test_leaky_backends as leaky_cases
import test_neuron_backends as neuron_cases
from conftest import DEVICE, assert_bit_equal, assert_close_verbose

from spikekern.models.fsddim import FSDDIMUNet
from spikekern.models.sddpm import SpikingUNet
from spikekern.functional import set_backend
from spikekern.nn import LIFNode, SpikeLinear
from spikekern.ops import available_backends, spike_linear
from spikekern.ops._multistep import RECOMPUTE_MAX_STEPS
from spikekern.pipelines.fsddim import FSDDIMPipeline
from spikekern.pipelines.sddpm import SDDPMPipeline

pytestmark = [
    pytest.mark.skipif(DEVICE != "cpu", reason="the compiled backend is the CPU path; this test device is a GPU"),
    pytest.mark.skipif(
        available_backends(torch.empty(0))["compiled"] is not None,
        reason=f"compiled backend unavailable: {available_backends(torch.empty(0))['compiled']}",
    ),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def assert_compiled():
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "no compiled graph ran"


NEURON_GRID = [
    # kind, decay_input, soft_reset, detach_reset, with_v_init, compact_state, steps
    ("if", True, False, False, True, False, 4),
    ("if", True, True, True, False, True, RECOMPUTE_MAX_STEPS + 2),
    ("lif", True, False, False, True, False, 4),
    ("lif", False, True, False, False, False, RECOMPUTE_MAX_STEPS + 2),
    ("lif", True, False, True, True, True, 1),
    ("plif", True, True, False, True, False, 4),
    ("plif", False, False, True, True, True, RECOMPUTE_MAX_STEPS + 2),
]


@pytest.mark.parametrize("kind,decay_input,soft_reset,detach_reset,with_v_init,compact_state,steps", NEURON_GRID)
def test_neuron_options_match_reference(kind, decay_input, soft_reset, detach_reset, with_v_init, compact_state, steps):
    x_seq, v_init, w = neuron_cases.make_inputs((steps, 3, 37), torch.float32, with_v_init)
    options = dict(v_reset=None if soft_reset else -0.25, detach_reset=detach_reset, compact_state=compact_state)
    if kind == "lif":
        options.update(tau=3.0, decay_input=decay_input)
    elif kind == "plif":
        options.update(decay_input=decay_input)
    (spikes, _), _ = neuron_cases.check_against_reference(kind, "compiled", x_seq, v_init, w, **options)
    assert 0 < spikes.mean() < 1, "the grid must exercise both firing and silence"
    assert_compiled()


@pytest.mark.parametrize("surrogate,alpha", [("atan", None), ("sigmoid", 3.5), ("triangle", None), ("erf", None)])
def test_neuron_surrogates_match_reference(surrogate, alpha):
    x_seq, v_init, w = neuron_cases.make_inputs((3, 2, 29), torch.float32, with_v_init=True)
    neuron_cases.check_against_reference("lif", "compiled", x_seq, v_init, w, surrogate=surrogate, alpha=alpha)
    assert_compiled()


@pytest.mark.parametrize("shape", [(1, 5), (2, 2, 3, 5, 7), (3, 0, 4), (5,)], ids=str)
def test_neuron_shapes_match_reference(shape):
    x_seq, v_init, w = neuron_cases.make_inputs(shape, torch.float32, with_v_init=True)
    outputs, _ = neuron_cases.check_against_reference("lif", "compiled", x_seq, v_init, w, store_v_seq=True)
    assert outputs[0].shape == shape and outputs[1].shape == shape[1:]
    if x_seq.numel():
        assert_compiled()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_neuron_dtypes_match_reference(dtype):
    x_seq, v_init, w = neuron_cases.make_inputs((4, 3, 33), dtype, with_v_init=True)
    neuron_cases.check_against_reference("if", "compiled", x_seq, v_init, w, store_v_seq=True)
    assert_compiled()


@pytest.mark.parametrize(
    "reset_mechanism,output_mem_seq,compact_state,steps",
    [("subtract", False, False, 4), ("zero", True, False, 1), ("none", False, True, RECOMPUTE_MAX_STEPS + 2)],
)
def test_leaky_matches_reference(reset_mechanism, output_mem_seq, compact_state, steps):
    inputs = leaky_cases.make_inputs((steps, 3, 37), torch.float32)
    spikes, _, _ = leaky_cases.check_against_reference(
        "compiled", inputs, reset_mechanism=reset_mechanism, output_mem_seq=output_mem_seq, compact_state=compact_state
    )
    assert 0 < spikes.mean() < 1
    assert_compiled()


def _unet_step(model, x, t):
    """One forward and backward: the output and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    out = model(x, t)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "model_class,pipeline_class", [(SpikingUNet, SDDPMPipeline), (FSDDIMUNet, FSDDIMPipeline)], ids=["sddpm", "fsddim"]
)
def test_spiking_unet_matches_reference(model_class, pipeline_class):
    """A whole digits U-Net (IF neurons; FSDDIM's Leaky) trains the same on the compiled backend."""
    config = pipeline_class.from_preset("digits", base_channels=8).model_config
    torch.manual_seed(0)
    model = model_class(config, spike_conv=False)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 400, 999])
    expected_out, expected_grads = _unet_step(model, x, t)
    assert set_backend(model, "compiled") > 0
    actual_out, actual_grads = _unet_step(model, x, t)
    # The spikes are bit-identical, so everything downstream is: the output, and gradients up to summation order.
    assert_bit_equal(actual_out, expected_out, "output")
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert_close_verbose(actual_grads[name], grad, 1e-5, 1e-6 * max(grad.abs().max().item(), 1.0), name)
    assert_compiled()


def test_nested_under_torch_compile():
    """A model compiled as a whole treats the neuron op as opaque; the op's own compiled code runs inside.
    (ReLU around it: exact in any compiled form, unlike a matmul whose rounding may flip spikes.)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ReLU(), LIFNode(step_mode="m", backend="compiled"), torch.nn.ReLU())
    x = torch.randn(4, 5, 6) * 2
    expected = model(x)
    model[1].reset()  # the neuron keeps its membrane between calls
    actual = torch.compile(model)(x)
    assert_bit_equal(actual, expected, "spikes")
    assert_compiled()


def test_refusals():
    with pytest.raises(RuntimeError, match="backend='compiled' cannot run this input: not implemented for this op"):
        spike_linear(torch.ones(2, 3), torch.ones(4, 3), backend="compiled")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        set_backend(torch.nn.Identity(), "fast")
    with pytest.raises(ValueError, match=r"backend must be None or one of \['cuda', 'triton', 'torch'\]"):
        SpikeLinear(3, 4, backend="compiled")
    net = torch.nn.Sequential(LIFNode(), SpikeLinear(3, 4, backend="torch"))
    assert set_backend(net, "compiled") == 1  # the neuron only: the spike layer keeps its own
    assert net[0].backend == "compiled" and net[1].backend == "torch"
    meta_reason = available_backends(torch.empty(0, device="meta"))["compiled"]
    assert "CPU fast path" in meta_reason
