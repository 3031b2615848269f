"""Every fast backend against the PyTorch reference of leaky_multistep: options, surrogates, shapes,
dtypes, layouts, non-finite input.

Spikes and membranes must be bit-identical to the reference (the same float32 operations in the same
order); gradients must agree to the tolerances below. Without a GPU the Triton kernels run under
TRITON_INTERPRET=1 (no bfloat16 there); on a GPU the CUDA and Triton kernels run against the
reference on the same device.
"""

import itertools

import pytest
import torch
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, fast_backends

from spikekern.ops import SURROGATES, leaky_multistep
from spikekern.ops._multistep import RECOMPUTE_MAX_STEPS
from spikekern.ops.leaky import RESET_MECHANISMS

BACKENDS = fast_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no Triton or CUDA backend can run here")

# Relative to each gradient's scale. beta's and threshold's gradients are sums over all steps and
# neurons, whose order differs between backends.
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}
INPUT_NAMES = ("x_seq", "beta", "mem_init", "threshold")


def run_leaky(backend, inputs, grad_seed=1, **options):
    """Forward, then backward with fixed random output gradients; returns outputs and all grads."""
    inputs = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
    spikes, mem = leaky_multistep(*inputs, backend=backend, **options)
    generator = torch.Generator().manual_seed(grad_seed)
    grad_spikes = torch.randn(spikes.shape, generator=generator).to(spikes)
    grad_mem = torch.randn(mem.shape, generator=generator).to(mem)
    ((spikes.float() * grad_spikes.float()).sum() + (mem.float() * grad_mem.float()).sum()).backward()
    grads = {name: t.grad for name, t in zip(INPUT_NAMES, inputs) if isinstance(t, torch.Tensor)}
    return spikes, mem, grads


def make_inputs(shape, dtype, per_neuron_beta=True, with_mem_init=True, seed=0):
    """(x_seq, beta, mem_init, threshold); beta per neuron of the last dimension, partly outside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    # Mean 0.5 and spread 1.5 with a threshold of 0.9 give both firing and silence.
    x_seq = (torch.randn(shape, generator=generator) * 1.5 + 0.5).to(DEVICE, dtype)
    mem_init = (torch.randn(shape[1:], generator=generator) * 0.5).to(DEVICE, dtype) if with_mem_init else None
    beta_shape = shape[-1:] if per_neuron_beta and len(shape) > 1 else (1,)
    beta = (torch.rand(beta_shape, generator=generator) * 1.2 - 0.1).to(DEVICE)
    threshold = torch.tensor(0.9, device=DEVICE)
    return x_seq, beta, mem_init, threshold


def check_against_reference(backend, inputs, **options):
    expected = run_leaky("torch", inputs, **options)
    actual = run_leaky(backend, inputs, **options)
    assert_bit_equal(actual[0], expected[0], "spikes")
    assert_bit_equal(actual[1], expected[1], "mem")
    rtol, atol = GRAD_TOLERANCE[inputs[0].dtype]
    for name, grad in expected[2].items():
        scale = max(grad.abs().max().item(), 1.0) if grad.numel() else 1.0
        assert_close_verbose(actual[2][name], grad, rtol, atol * scale, f"grad {name}")
    return expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reset_mechanism,per_neuron_beta,with_mem_init,output_mem_seq,compact_state",
    list(itertools.product(sorted(RESET_MECHANISMS), (True, False), (True, False), (True, False), (False, True))),
)
@pytest.mark.parametrize("steps", [1, 4, RECOMPUTE_MAX_STEPS + 2], ids=["one-step", "recompute", "saved-membrane"])
def test_options_match_reference(
    backend, reset_mechanism, per_neuron_beta, with_mem_init, output_mem_seq, compact_state, steps
):  # fmt: skip
    inputs = make_inputs((steps, 3, 37), torch.float32, per_neuron_beta, with_mem_init)
    spikes, _, _ = check_against_reference(
        backend, inputs, reset_mechanism=reset_mechanism, output_mem_seq=output_mem_seq, compact_state=compact_state
    )
    assert 0 < spikes.mean() < 1, "the grid must exercise both firing and silence"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 3.5])
def test_surrogates_match_reference(backend, surrogate, alpha):
    check_against_reference(backend, make_inputs((3, 2, 29), torch.float32), surrogate=surrogate, alpha=alpha)


SHAPES = [(1, 5), (1, 2, 3), (7, 1), (4, 3, 1025), (2, 2, 3, 5, 7), (3, 0, 4), (0, 4, 3), (5,), (16, 3, 5), (17, 3, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_neuron_beta", [True, False])
def test_shapes_match_reference(backend, shape, per_neuron_beta):
    inputs = make_inputs(shape, torch.float32, per_neuron_beta)
    spikes, mem, _ = check_against_reference(backend, inputs)
    assert spikes.shape == shape and mem.shape == shape[1:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [4, RECOMPUTE_MAX_STEPS + 2])
def test_constant_beta_and_threshold(backend, steps):
    """Floats for beta and threshold: no gradient for them, so the kernels skip those sums."""
    x_seq, _, mem_init, _ = make_inputs((steps, 3, 37), torch.float32)
    check_against_reference(backend, (x_seq, 0.85, mem_init, 0.75))


def test_empty_time_returns_initial_state():
    x_seq, beta, mem_init, threshold = make_inputs((0, 4, 3), torch.float32)
    spikes, mem = leaky_multistep(x_seq, beta, mem_init, threshold)
    assert spikes.shape == (0, 4, 3)
    assert torch.equal(mem, mem_init) and mem.data_ptr() != mem_init.data_ptr()
    _, mem_default = leaky_multistep(x_seq, beta)
    assert torch.equal(mem_default, torch.zeros(4, 3, device=DEVICE))
    _, mem_seq = leaky_multistep(x_seq, beta, mem_init, output_mem_seq=True)
    assert mem_seq.shape == (0, 4, 3)


def dtypes_for_device():
    return [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", dtypes_for_device(), ids=str)
@pytest.mark.parametrize("compact_state", [False, True])
@pytest.mark.parametrize("output_mem_seq", [False, True])
def test_half_precision_matches_reference(backend, dtype, compact_state, output_mem_seq):
    check_against_reference(
        backend, make_inputs((4, 3, 33), dtype), compact_state=compact_state, output_mem_seq=output_mem_seq
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    x_seq, _, mem_init, threshold = make_inputs((4, 9, 6), torch.float32)
    x_strided, mem_strided = x_seq.transpose(1, 2), mem_init.t()
    beta_strided = torch.rand(9, 6, generator=torch.Generator().manual_seed(2)).to(DEVICE).t()
    assert not (x_strided.is_contiguous() or mem_strided.is_contiguous() or beta_strided.is_contiguous())
    expected = check_against_reference(backend, (x_strided, beta_strided, mem_strided, threshold))
    contiguous = run_leaky("torch", [t.contiguous() for t in (x_strided, beta_strided, mem_strided, threshold)])
    assert_bit_equal(expected[0], contiguous[0], "spikes of strided vs contiguous input")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_neuron_beta", [True, False])
@pytest.mark.parametrize("output_mem_seq", [True, False])
def test_channels_last_input_keeps_its_layout(backend, per_neuron_beta, output_mem_seq):
    x_seq, beta, mem_init, threshold = make_inputs((4, 2, 5, 3, 7), torch.float32, per_neuron_beta)
    x_channels_last = x_seq.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, x_seq.shape[:2])
    laid_out = (x_channels_last, beta, mem_init, threshold)
    check_against_reference(backend, laid_out, output_mem_seq=output_mem_seq)
    spikes, mem, grads = run_leaky(backend, laid_out, output_mem_seq=output_mem_seq)
    contiguous = (x_seq, beta, mem_init, threshold)
    expected_spikes, expected_mem, expected_grads = run_leaky(backend, contiguous, output_mem_seq=output_mem_seq)
    assert_bit_equal(spikes, expected_spikes, "spikes of channels-last vs contiguous input")
    assert_bit_equal(mem, expected_mem, "mem of channels-last vs contiguous input")
    for name in ("x_seq", "mem_init"):  # per neuron: the same operations; beta's and threshold's sums differ in order
        assert_bit_equal(grads[name], expected_grads[name], f"grad {name} of channels-last vs contiguous input")
    for name in ("beta", "threshold"):
        assert_close_verbose(grads[name], expected_grads[name], 1e-5, 1e-5, f"grad {name}")
    assert spikes.stride() == x_channels_last.stride()
    assert mem.stride() == (x_channels_last.stride() if output_mem_seq else x_channels_last.stride()[1:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset_mechanism", sorted(RESET_MECHANISMS))
def test_non_finite_input_policy(backend, reset_mechanism):
    """NaN never fires and poisons the membrane; +inf fires; every backend agrees (docs/leaky_op.md)."""
    inf, nan = float("inf"), float("nan")
    x_seq = torch.tensor([[0.2, nan, inf, -inf, 0.5], [0.9, 0.5, 0.5, 0.5, 0.5]], device=DEVICE)
    beta = torch.tensor([0.5, 0.5, 0.5, 0.5, nan], device=DEVICE)
    options = dict(reset_mechanism=reset_mechanism)
    expected = leaky_multistep(x_seq, beta, backend="torch", **options)
    actual = leaky_multistep(x_seq, beta, backend=backend, **options)
    assert_bit_equal(actual[0], expected[0], "spikes")
    assert_bit_equal(actual[1], expected[1], "mem")
    spikes, mem = expected
    assert spikes[:, 1].tolist() == [0.0, 0.0] and mem[1].isnan()
    # +inf fires; after its reset, subtract keeps inf (inf - 1), zero computes 0 * inf = NaN, none keeps inf.
    if reset_mechanism == "zero":
        assert spikes[:, 2].tolist() == [1.0, 0.0] and mem[2].isnan()
    else:
        assert spikes[:, 2].tolist() == [1.0, 1.0] and mem[2] == inf
    assert spikes[:, 3].tolist() == [0.0, 0.0] and mem[3] == -inf
    assert spikes[:, 4].tolist() == [0.0, 0.0] and mem[4].isnan()  # NaN beta


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_compact_state_keeps_spikes_of_tiny_and_zero_margins(backend):
    """snnTorch fires on mem - threshold > 0. A margin of +0 (no spike) and one of 1e-45, which bfloat16
    flushes to zero (a spike), must both come back right from the compact state, spikes and resets."""
    tiny = torch.finfo(torch.float32).smallest_normal * 2**-23  # the smallest subnormal
    # Every membrane is exact in bfloat16 (but the tiny one), so the surrogate sees the same margins.
    x_seq = torch.tensor([[tiny, 0.0, -0.0, 0.25], [0.125, 0.125, 0.125, 0.125]], device=DEVICE)
    results = []
    for compact_state in (False, True):
        inputs = [t.clone().requires_grad_() for t in (x_seq, torch.tensor(0.5, device=DEVICE))]
        threshold = torch.tensor(0.0, device=DEVICE, requires_grad=True)
        spikes, mem = leaky_multistep(*inputs, threshold=threshold, compact_state=compact_state, backend=backend)
        (spikes.sum() + mem.sum()).backward()
        results.append((spikes, inputs[0].grad, threshold.grad))
    assert results[0][0][0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert_bit_equal(results[1][0], results[0][0], "spikes")
    assert_bit_equal(results[1][1], results[0][1], "grad x_seq")
    assert_bit_equal(results[1][2], results[0][2], "grad threshold (the subtracted resets)")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU with more than 16 GB")
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_math_beyond_2_pow_31(backend):
    """T * M > 2^31: the last neurons are computed like the first (64-bit offsets)."""
    neurons = 2**30 + 3
    x_seq = torch.randn(2, neurons, device="cuda", dtype=torch.float16)
    beta = torch.rand(neurons, device="cuda")
    spikes, mem = leaky_multistep(x_seq, beta, backend=backend)
    tail = slice(neurons - 1000, neurons)
    expected_spikes, expected_mem = leaky_multistep(x_seq[:, tail], beta[tail], backend="torch")
    assert_bit_equal(spikes[:, tail], expected_spikes, "spikes at the end")
    assert_bit_equal(mem[tail], expected_mem, "mem at the end")
