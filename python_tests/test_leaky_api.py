"""leaky_multistep as a user meets it: bad input, custom-op registration, torch.compile, saved memory."""

import pytest
import torch
from conftest import (
    DEVICE,
    assert_bit_equal,
    assert_close_verbose,
    fast_backends,
    replay_in_cuda_graph,
    saved_bytes_per_element,
)  # fmt: skip

from spikekern.ops import leaky_multistep
from spikekern.ops._multistep import RECOMPUTE_MAX_STEPS, STATE_BF16, STATE_FLOAT, STATE_INPUT, STATE_NONE
from spikekern.ops.leaky import RESET_SUBTRACT, RESET_ZERO


def x_seq_of(shape=(3, 2, 5), dtype=torch.float32):
    return torch.randn(shape, device=DEVICE, dtype=dtype)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: leaky_multistep(x_seq_of().long(), 0.9), TypeError, "x_seq"),
        (lambda: leaky_multistep([1.0, 2.0], 0.9), TypeError, "x_seq"),
        (lambda: leaky_multistep(torch.tensor(1.0), 0.9), ValueError, "x_seq"),
        (lambda: leaky_multistep(x_seq_of(), "0.9"), TypeError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), None), TypeError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), float("nan")), ValueError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), torch.ones(3, device=DEVICE)), ValueError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), torch.ones(3, 2, 5, device=DEVICE)), ValueError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), torch.ones(5, dtype=torch.int32, device=DEVICE)), TypeError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), torch.ones(5, device="meta")), ValueError, "beta"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, threshold=torch.ones(2, device=DEVICE)), ValueError, "threshold"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, threshold=float("inf")), ValueError, "threshold"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, threshold=True), TypeError, "threshold"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, torch.zeros(2, 4, device=DEVICE)), ValueError, "mem_init"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, torch.zeros(2, 5, dtype=torch.int64)), TypeError, "mem_init"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, [0.0]), TypeError, "mem_init"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, reset_mechanism="subtraction"), ValueError, "reset_mechanism"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, reset_mechanism=0), TypeError, "reset_mechanism"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, surrogate="relu"), ValueError, "surrogate"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, alpha=0.0), ValueError, "alpha"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, output_mem_seq=1), TypeError, "output_mem_seq"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, compact_state="yes"), TypeError, "compact_state"),
        (lambda: leaky_multistep(x_seq_of(), 0.9, backend="cupy"), ValueError, "backend"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_beta_broadcasts_like_snntorch():
    """A beta of shape [5] or [1, 5] acts per neuron of the last dimension; gradients keep its shape."""
    x_seq = x_seq_of()
    beta = torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.9]], device=DEVICE, requires_grad=True)
    _, mem = leaky_multistep(x_seq, beta, reset_mechanism="none")
    _, mem_full = leaky_multistep(x_seq, beta.detach().expand(2, 5).contiguous(), reset_mechanism="none")
    assert_bit_equal(mem, mem_full, "mem")
    mem.sum().backward()
    assert beta.grad.shape == beta.shape


def test_unavailable_backend_says_why():
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run"):
        leaky_multistep(torch.zeros(2, 3), 0.5, backend="cuda")
    with pytest.raises(RuntimeError, match="float64"):
        leaky_multistep(torch.zeros(2, 3, dtype=torch.float64, device=DEVICE), 0.5, backend="triton")


def test_parameters_of_other_dtypes_are_cast():
    x_seq = x_seq_of(dtype=torch.float16)
    inputs = [torch.rand(shape, device=DEVICE, dtype=torch.float64, requires_grad=True) for shape in ((5,), (2, 5), ())]
    beta, mem_init, threshold = inputs
    spikes, mem = leaky_multistep(x_seq, beta, mem_init, threshold)
    assert spikes.dtype == mem.dtype == torch.float16
    (spikes.float().sum() + mem.float().sum()).backward()
    assert all(t.grad.dtype == torch.float64 and t.grad.shape == t.shape for t in inputs)


def op_arguments(state_mode, per_neuron_beta, with_mem_init, output_mem_seq, backend):
    generator = torch.Generator().manual_seed(0)
    x_seq = torch.randn(3, 2, 5, generator=generator).to(DEVICE)
    mem_init = torch.randn(2, 5, generator=generator).to(DEVICE) if with_mem_init else None
    beta = (torch.rand(2, 5) if per_neuron_beta else torch.tensor([0.7])).to(DEVICE)
    threshold = torch.tensor([0.5], device=DEVICE)
    reset = RESET_ZERO if per_neuron_beta else RESET_SUBTRACT
    return [x_seq, mem_init, beta, threshold, reset, 1, 2.0, output_mem_seq, state_mode, backend]


def opcheck_samples():
    for backend in [""] + fast_backends():
        for state_mode, per_neuron_beta, with_mem_init, output_mem_seq in (
            (STATE_FLOAT, True, True, False), (STATE_BF16, False, False, True), (STATE_INPUT, True, True, True)
        ):  # fmt: skip
            yield op_arguments(state_mode, per_neuron_beta, with_mem_init, output_mem_seq, backend)


@pytest.mark.parametrize(
    "arguments", list(opcheck_samples()), ids=lambda a: f"state{a[8]}-{'seq' if a[7] else 'last'}-{a[9] or 'auto'}"
)
def test_opcheck_forward_and_backward(arguments):
    x_seq, mem_init, beta, threshold, *params, backend = arguments
    sample = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in arguments]
    torch.library.opcheck(torch.ops.spikekern.leaky_forward.default, tuple(sample))
    with torch.no_grad():
        spikes, mem, state = torch.ops.spikekern.leaky_forward(*arguments)
    saved = x_seq if params[-1] == STATE_INPUT else state
    backward_args = (
        torch.randn_like(spikes), torch.randn_like(mem), saved, mem_init, beta, threshold, *params, True, True,
        backend,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.spikekern.leaky_backward.default, backward_args)


def two_leaky_layers(x_seq, beta, threshold):
    """Learnable per-neuron beta and threshold, then a constant beta with the other reset and surrogate."""
    spikes, _ = leaky_multistep(x_seq, beta, threshold=threshold)
    spikes, mem = leaky_multistep(spikes * 2 - 0.5, 0.9, reset_mechanism="zero", surrogate="fast_sigmoid")
    return spikes.mean(0) + mem


def test_torch_compile_fullgraph_has_no_graph_break():
    torch._dynamo.reset()
    inputs = (
        torch.randn(4, 3, 8, device=DEVICE) * 3,
        torch.full((8,), 0.8, device=DEVICE),
        torch.tensor(0.7, device=DEVICE),
    )
    inputs = [t.requires_grad_() for t in inputs]
    outputs = {}
    for name, function in (("eager", two_leaky_layers), ("compiled", torch.compile(two_leaky_layers, fullgraph=True))):
        out = function(*inputs)
        outputs[name] = (out.detach(), torch.autograd.grad(out.sum(), inputs))
    assert_close_verbose(outputs["compiled"][0], outputs["eager"][0], 1e-6, 1e-6, "compiled output")
    for compiled_grad, eager_grad in zip(outputs["compiled"][1], outputs["eager"][1]):
        assert_close_verbose(compiled_grad, eager_grad, 1e-5, 1e-6, "compiled gradient")
    assert torch._dynamo.explain(two_leaky_layers)(*inputs).graph_break_count == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("steps", [4, RECOMPUTE_MAX_STEPS + 1])
def test_saved_memory_per_element(dtype, steps):
    """Up to RECOMPUTE_MAX_STEPS the input itself is kept; beyond, the float32 membrane; compact: 16 bits.
    (beta, threshold and the per-neuron tensors are small: T * N * 64 elements, 16 * 64 neurons.)"""
    x_seq = torch.randn(steps, 16, 64, device=DEVICE, dtype=dtype, requires_grad=True)
    exact = saved_bytes_per_element(lambda x: leaky_multistep(x, 0.9), x_seq)
    compact = saved_bytes_per_element(lambda x: leaky_multistep(x, 0.9, compact_state=True), x_seq)
    shared_parameters = 2 * 4 / x_seq.numel()  # beta and threshold, one float32 each
    assert exact == (x_seq.element_size() if steps <= RECOMPUTE_MAX_STEPS else 4.0) + shared_parameters
    assert compact == 2.0 + shared_parameters
    with torch.no_grad():
        assert saved_bytes_per_element(lambda x: leaky_multistep(x, 0.9), x_seq) == 0


def test_no_state_is_written_without_grad():
    arguments = op_arguments(STATE_NONE, True, True, False, "")
    _, _, state = torch.ops.spikekern.leaky_forward(*arguments)
    assert state.numel() == 0


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("backend", fast_backends())
def test_cuda_graph_capture(backend):
    x_seq = torch.randn(4, 8, 100, device="cuda", requires_grad=True)
    beta = torch.rand(100, device="cuda", requires_grad=True)
    threshold = torch.tensor(0.5, device="cuda", requires_grad=True)

    def step():
        spikes, mem = leaky_multistep(x_seq, beta, threshold=threshold, backend=backend)
        (spikes.sum() + mem.sum()).backward()
        return spikes

    captured = replay_in_cuda_graph(step, (x_seq, beta, threshold))
    expected = leaky_multistep(x_seq.detach(), beta.detach(), threshold=threshold.detach(), backend="torch")[0]
    assert_bit_equal(captured, expected, "spikes from the replayed graph")
