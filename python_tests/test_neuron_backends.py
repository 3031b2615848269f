"""Every fast backend against the PyTorch reference, over options, surrogates, shapes, dtypes, layouts.

Spikes, ``v_last`` and ``v_seq`` must be bit-identical to the reference (all backends do the same float32
operations in the same order); gradients must agree to the tolerances below. On a machine without a
GPU the Triton kernels run under TRITON_INTERPRET=1 (no bfloat16 there); on a GPU the CUDA and
Triton kernels run against the reference on the same device.
"""

import itertools

import pytest
import torch
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, fast_backends

from spikekern.ops import SURROGATES, if_multistep, lif_multistep, plif_multistep
from spikekern.ops._multistep import RECOMPUTE_MAX_STEPS

BACKENDS = fast_backends()
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no Triton or CUDA backend can run here")

# Gradient tolerances (relative to the gradient's scale): float32 kernels differ from the reference
# only by approximate exp/division and FMA contraction in backward.
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}


OUTPUT_NAMES = ("spikes", "v_last", "v_seq")


def run_neuron(kind, backend, x_seq, v_init, w, grad_seed=1, **options):
    """Forward, then backward with fixed random gradients for every output.

    Returns the outputs (spikes, v_last and, with store_v_seq, v_seq) and the gradients of all inputs.
    """
    x_seq = x_seq.detach().clone().requires_grad_()
    v_init = None if v_init is None else v_init.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    if kind == "if":
        outputs = if_multistep(x_seq, v_init, backend=backend, **options)
    elif kind == "lif":
        outputs = lif_multistep(x_seq, v_init, backend=backend, **options)
    else:
        outputs = plif_multistep(x_seq, w, v_init, backend=backend, **options)
    generator = torch.Generator().manual_seed(grad_seed)
    loss = 0.0
    for output in outputs:
        grad_output = torch.randn(output.shape, generator=generator).to(output)
        loss = loss + (output.float() * grad_output.float()).sum()
    loss.backward()
    grads = {"x_seq": x_seq.grad, "v_init": None if v_init is None else v_init.grad, "w": None if w is None else w.grad}
    return outputs, grads


def make_inputs(shape, dtype, with_v_init, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Mean 0.5 and spread 1.5 give a firing rate near 30% with thresholds of 1: both branches occur.
    x_seq = (torch.randn(shape, generator=generator) * 1.5 + 0.5).to(DEVICE, dtype)
    v_init = (torch.randn(shape[1:], generator=generator) * 0.5).to(DEVICE, dtype) if with_v_init else None
    w = torch.tensor(-0.4, device=DEVICE)
    return x_seq, v_init, w


def check_against_reference(kind, backend, x_seq, v_init, w, **options):
    expected_outputs, expected_grads = run_neuron(kind, "torch", x_seq, v_init, w, **options)
    actual_outputs, actual_grads = run_neuron(kind, backend, x_seq, v_init, w, **options)
    assert len(actual_outputs) == len(expected_outputs) == (3 if options.get("store_v_seq") else 2)
    for name, actual, expected in zip(OUTPUT_NAMES, actual_outputs, expected_outputs):
        assert_bit_equal(actual, expected, name)
    rtol, atol = GRAD_TOLERANCE[x_seq.dtype]
    for name, grad in expected_grads.items():
        if grad is None:
            continue
        scale = max(grad.abs().max().item(), 1.0) if grad.numel() else 1.0
        assert_close_verbose(actual_grads[name], grad, rtol, atol * scale, f"grad {name}")
    return expected_outputs, expected_grads


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
    (spikes, _), _ = check_against_reference(kind, backend, x_seq, v_init, w, **options)
    assert 0 < spikes.mean() < 1, "the grid must exercise both firing and silence"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind,decay_input", [("if", True), ("lif", True), ("lif", False), ("plif", True), ("plif", False)]
)
@pytest.mark.parametrize("soft_reset", [False, True])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("compact_state", [False, True])
@pytest.mark.parametrize("steps", [4, RECOMPUTE_MAX_STEPS + 2], ids=["recompute", "saved-charge"])
def test_v_seq_matches_reference(backend, kind, decay_input, soft_reset, detach_reset, compact_state, steps):
    """store_v_seq: v_seq bit-identical to the reference, and its gradient (in the loss) reaches the inputs."""
    x_seq, v_init, w = make_inputs((steps, 3, 37), torch.float32, with_v_init=True)
    options = dict(
        v_reset=None if soft_reset else -0.25, detach_reset=detach_reset, compact_state=compact_state,
        store_v_seq=True,
    )  # fmt: skip
    if kind == "lif":
        options.update(tau=3.0, decay_input=decay_input)
    elif kind == "plif":
        options.update(decay_input=decay_input)
    (_, v_last, v_seq), _ = check_against_reference(kind, backend, x_seq, v_init, w, **options)
    assert_bit_equal(v_seq[-1], v_last, "v_seq[-1] vs v_last")


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
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_shapes_match_reference(backend, kind, shape, store_v_seq):
    x_seq, v_init, w = make_inputs(shape, torch.float32, with_v_init=True)
    outputs, _ = check_against_reference(kind, backend, x_seq, v_init, w, store_v_seq=store_v_seq)
    assert outputs[0].shape == shape and outputs[1].shape == shape[1:]
    if store_v_seq:
        assert outputs[2].shape == shape


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
    for store_v_seq in (False, True):
        check_against_reference(kind, backend, x_seq, v_init, w, compact_state=compact_state, store_v_seq=store_v_seq)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lif", "plif"])
def test_non_contiguous_input(backend, kind):
    x_seq, v_init, w = make_inputs((4, 9, 6), torch.float32, with_v_init=True)
    x_strided, v_strided = x_seq.transpose(1, 2), v_init.t()
    assert not x_strided.is_contiguous()
    expected_outputs, _ = check_against_reference(kind, backend, x_strided, v_strided, w, store_v_seq=True)
    contiguous_outputs, _ = run_neuron(
        kind, "torch", x_strided.contiguous(), v_strided.contiguous(), w, store_v_seq=True
    )
    for name, expected, contiguous in zip(OUTPUT_NAMES, expected_outputs, contiguous_outputs):
        assert_bit_equal(expected, contiguous, f"{name} of strided vs contiguous input")


def channels_last(x_seq):
    """``[T, B, C, H, W]`` laid out as channels-last images ``[T*B, C, H, W]``: C varies fastest."""
    return x_seq.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, x_seq.shape[:2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["if", "plif"])
@pytest.mark.parametrize("layout", ["channels-last", "expanded-channels-last", "time-inside"])
def test_dense_step_layouts_are_kept_and_others_copied(backend, kind, layout):
    x_seq, v_init, w = make_inputs((4, 2, 5, 3, 7), torch.float32, with_v_init=True)
    if layout == "channels-last":
        x_laid_out = channels_last(x_seq)
    elif layout == "expanded-channels-last":  # one image repeated over time, as a U-Net's first neuron reads it
        x_laid_out = x_seq[0].to(memory_format=torch.channels_last).expand(x_seq.shape)
        x_seq = x_laid_out.contiguous()
    else:  # [B, T, ...] memory transposed to [T, B, ...]: time is not outermost, the ops copy
        x_laid_out = x_seq.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_laid_out.is_contiguous() and torch.equal(x_laid_out, x_seq)
    outputs, _ = check_against_reference(kind, backend, x_laid_out, v_init, w, store_v_seq=True)
    outputs, grads = run_neuron(kind, backend, x_laid_out, v_init, w, store_v_seq=True)
    contiguous_outputs, contiguous_grads = run_neuron(kind, backend, x_seq, v_init, w, store_v_seq=True)
    for name, output, contiguous in zip(OUTPUT_NAMES, outputs, contiguous_outputs):
        assert_bit_equal(output, contiguous, f"{name} of {layout} vs contiguous input")
    for name in ("x_seq", "v_init"):  # per neuron: the same operations; w's sum adds in another order
        assert_bit_equal(grads[name], contiguous_grads[name], f"grad {name} of {layout} vs contiguous input")
    if kind == "plif":
        assert_close_verbose(grads["w"], contiguous_grads["w"], 1e-5, 1e-6, f"grad w of {layout}")
    spikes, v_last, v_seq = outputs
    if layout != "time-inside":
        assert spikes.stride() == v_seq.stride() == channels_last(x_seq).stride()
        assert v_last.stride() == channels_last(x_seq).stride()[1:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("soft_reset", [False, True])
def test_non_finite_input_policy(backend, soft_reset):
    """NaN never fires and poisons the membrane; +inf fires; every backend agrees (docs/neuron_ops.md)."""
    x_seq = torch.tensor([[0.2, float("nan"), float("inf"), -float("inf")], [0.9, 0.5, 0.5, 0.5]], device=DEVICE)
    options = dict(tau=2.0, v_reset=None if soft_reset else 0.0, store_v_seq=True)
    expected = lif_multistep(x_seq, backend="torch", **options)
    actual = lif_multistep(x_seq, backend=backend, **options)
    for name, actual_output, expected_output in zip(OUTPUT_NAMES, actual, expected):
        assert_bit_equal(actual_output, expected_output, name)
    spikes, v_last, _ = expected
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
