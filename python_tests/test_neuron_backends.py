"""Every fast backend against the PyTorch reference, over options, surrogates, shapes, dtypes, layouts.

Spikes and ``v_last`` must be bit-identical to the reference (all backends do the same float32
operations in the same order); gradients must agree to the tolerances below. On a machine without a
GPU the Triton kernels run under TRITON_INTERPRET=1 (no bfloat16 there); on a GPU the CUDA and
Triton kernels run against the reference on the same device.
"""

import itertools

import pytest
import torch
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, fast_backends

from spikekern.ops import SURROGATES, if_multistep, lif_multistep, plif_multistep
from spikekern.ops.neuron import RECOMPUTE_MAX_STEPS

BACKENDS = fast_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no Triton or CUDA backend can run here")

# Gradient tolerances (relative to the gradient's scale): float32 kernels differ from the reference
# only by approximate exp/division and FMA contraction in backward.
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}


def run_neuron(kind, backend, x_seq, v_init, w, grad_seed=1, **options):
    """Forward, then backward with fixed random output gradients; returns outputs and all grads."""
    x_seq = x_seq.detach().clone().requires_grad_()
    v_init = None if v_init is None else v_init.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    if kind == "if":
        spikes, v_last = if_multistep(x_seq, v_init, backend=backend, **options)
    elif kind == "lif":
        spikes, v_last = lif_multistep(x_seq, v_init, backend=backend, **options)
    else:
        spikes, v_last = plif_multistep(x_seq, w, v_init, backend=backend, **options)
    generator = torch.Generator().manual_seed(grad_seed)
    grad_spikes = torch.randn(spikes.shape, generator=generator).to(spikes)
    grad_v = torch.randn(v_last.shape, generator=generator).to(v_last)
    ((spikes.float() * grad_spikes.float()).sum() + (v_last.float() * grad_v.float()).sum()).backward()
    grads = {"x_seq": x_seq.grad, "v_init": None if v_init is None else v_init.grad, "w": None if w is None else w.grad}
    return spikes, v_last, grads


def make_inputs(shape, dtype, with_v_init, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Mean 0.5 and spread 1.5 give a firing rate near 30% with thresholds of 1: both branches occur.
    x_seq = (torch.randn(shape, generator=generator) * 1.5 + 0.5).to(DEVICE, dtype)
    v_init = (torch.randn(shape[1:], generator=generator) * 0.5).to(DEVICE, dtype) if with_v_init else None
    w = torch.tensor(-0.4, device=DEVICE)
    return x_seq, v_init, w


def check_against_reference(kind, backend, x_seq, v_init, w, **options):
    expected = run_neuron(kind, "torch", x_seq, v_init, w, **options)
    actual = run_neuron(kind, backend, x_seq, v_init, w, **options)
    assert_bit_equal(actual[0], expected[0], "spikes")
    assert_bit_equal(actual[1], expected[1], "v_last")
    rtol, atol = GRAD_TOLERANCE[x_seq.dtype]
    for name, grad in expected[2].items():
        if grad is None:
            continue
        scale = max(grad.abs().max().item(), 1.0) if grad.numel() else 1.0
        assert_close_verbose(actual[2][name], grad, rtol, atol * scale, f"grad {name}")
    return expected


def option_grid():
    for kind in ("if", "lif", "plif"):
        for decay_input, soft_reset, detach_reset, with_v_init, compact_state in itertools.product(
            (True, False), (False, True), (False, True), (True, False), (False, True)
        ):
            if kind == "if" and not decay_input:
                continue  # IF has no decay_input
            yield kind, decay_input, soft_reset, detach_reset, with_v_init, compact_state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,decay_input,soft_reset,detach_reset,with_v_init,compact_state", list(option_grid()))
@pytest.mark.parametrize("steps", [4, RECOMPUTE_MAX_STEPS + 2], ids=["recompute", "saved-charge"])
def test_options_match_reference(backend, kind, decay_input, soft_reset, detach_reset, with_v_init, compact_state, steps):
    x_seq, v_init, w = make_inputs((steps, 3, 37), torch.float32, with_v_init)
    options = dict(v_reset=None if soft_reset else -0.25, detach_reset=detach_reset, compact_state=compact_state)
    if kind == "lif":
        options.update(tau=3.0, decay_input=decay_input)
    elif kind == "plif":
        options.update(decay_input=decay_input)
    spikes, _, _ = check_against_reference(kind, backend, x_seq, v_init, w, **options)
    assert 0 < spikes.mean() < 1, "the grid must exercise both firing and silence"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "plif"])
@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 3.5])
def test_surrogates_match_reference(backend, kind, surrogate, alpha):
    x_seq, v_init, w = make_inputs((3, 2, 29), torch.float32, with_v_init=True)
    check_against_reference(kind, backend, x_seq, v_init, w, surrogate=surrogate, alpha=alpha)


SHAPES = [(1, 5), (1, 2, 3), (7, 1), (4, 3, 1025), (2, 2, 3, 5, 7), (3, 0, 4), (0, 4, 3), (5,), (16, 3, 5), (17, 3, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["if", "lif", "plif"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes_match_reference(backend, kind, shape):
    x_seq, v_init, w = make_inputs(shape, torch.float32, with_v_init=True)
    spikes, v_last, grads = check_against_reference(kind, backend, x_seq, v_init, w)
    assert spikes.shape == shape and v_last.shape == shape[1:]


def test_empty_time_returns_initial_state():
    x_seq, v_init, _ = make_inputs((0, 4, 3), torch.float32, with_v_init=True)
    spikes, v_last = lif_multistep(x_seq, v_init)
    assert spikes.shape == (0, 4, 3)
    assert torch.equal(v_last, v_init) and v_last.data_ptr() != v_init.data_ptr()
    _, v_default = if_multistep(x_seq, v_reset=-0.5)
    assert torch.equal(v_default, torch.full((4, 3), -0.5, device=DEVICE))


def dtypes_for_device():
    return [torch.float16, torch.bfloat16] if DEVICE == "cuda" else [torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["if", "lif", "plif"])
@pytest.mark.parametrize("dtype", dtypes_for_device(), ids=str)
@pytest.mark.parametrize("compact_state", [False, True])
def test_half_precision_matches_reference(backend, kind, dtype, compact_state):
    x_seq, v_init, w = make_inputs((4, 3, 33), dtype, with_v_init=True)
    check_against_reference(kind, backend, x_seq, v_init, w, compact_state=compact_state)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "plif"])
def test_non_contiguous_input(backend, kind):
    x_seq, v_init, w = make_inputs((4, 9, 6), torch.float32, with_v_init=True)
    x_strided, v_strided = x_seq.transpose(1, 2), v_init.t()
    assert not x_strided.is_contiguous()
    expected = check_against_reference(kind, backend, x_strided, v_strided, w)
    contiguous = run_neuron(kind, "torch", x_strided.contiguous(), v_strided.contiguous(), w)
    assert_bit_equal(expected[0], contiguous[0], "spikes of strided vs contiguous input")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft_reset", [False, True])
def test_non_finite_input_policy(backend, soft_reset):
    """NaN never fires and poisons the membrane; +inf fires; every backend agrees (docs/neuron_ops.md)."""
    x_seq = torch.tensor([[0.2, float("nan"), float("inf"), -float("inf")], [0.9, 0.5, 0.5, 0.5]], device=DEVICE)
    options = dict(tau=2.0, v_reset=None if soft_reset else 0.0)
    expected = lif_multistep(x_seq, backend="torch", **options)
    actual = lif_multistep(x_seq, backend=backend, **options)
    assert_bit_equal(actual[0], expected[0], "spikes")
    assert_bit_equal(actual[1], expected[1], "v_last")
    spikes, v_last = expected
    assert spikes[:, 1].tolist() == [0.0, 0.0] and v_last[1].isnan()
    assert spikes[0, 2] == 1.0 and v_last[2].isnan()  # hard: 0 * inf; soft: the next charge's inf - inf
    _, v_if = if_multistep(x_seq[:1], backend=backend, v_reset=None if soft_reset else 0.0)
    assert v_if[2].isnan() if not soft_reset else v_if[2] == float("inf")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU with more than 16 GB")
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_math_beyond_2_pow_31(backend):
    """T * M > 2^31: the last neurons are computed like the first (64-bit offsets)."""
    neurons = 2**30 + 3
    x_seq = torch.randn(2, neurons, device="cuda", dtype=torch.float16)
    spikes, v_last = lif_multistep(x_seq, backend=backend)
    tail = slice(neurons - 1000, neurons)
    expected_spikes, expected_v = lif_multistep(x_seq[:, tail], backend="torch")
    assert_bit_equal(spikes[:, tail], expected_spikes, "spikes at the end")
    assert_bit_equal(v_last[tail], expected_v, "v_last at the end")


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_compact_state_keeps_the_spike_of_a_negative_zero_charge(backend):
    """H = -0 at a zero threshold fires; the compact state must still say so (its sign bit)."""
    x_seq = torch.tensor([[-0.0, 0.25], [0.0, -0.5]], device=DEVICE)
    results = []
    for compact_state in (False, True):
        x = x_seq.clone().requires_grad_()
        spikes, v_last = if_multistep(x, v_threshold=0.0, compact_state=compact_state, backend=backend)
        (spikes.sum() + v_last.sum()).backward()
        results.append((spikes, x.grad))
    assert results[0][0][0, 0] == 1.0
    assert_bit_equal(results[1][0], results[0][0], "spikes")
    assert_bit_equal(results[1][1], results[0][1], "grad x_seq (charges are exact in bfloat16 here)")
