"""Index math beyond 2^31 elements in the spike ops and the fused block: a tensor of more than 2^31
elements (spikes to pack, an output, an output gradient) must be addressed with 64-bit offsets, so the
last rows, pixels or images of a huge problem are computed exactly like the same rows of a small
problem on the same backend, and the reductions over all of them (weight and bias gradients) match
cuBLAS/cuDNN within the spike ops' float16 tolerance.

The huge problems need a GPU with at least HUGE_PROBLEM_GPU_GB of memory and run with
SPIKEKERN_SLOW_TESTS=1 (``benchmarks/gpu_run.sh tests-index``). The same checks run here on small
problems, so that the checks themselves are tested on every machine.
"""

import pytest
import torch
from conftest import DEVICE, assert_bit_equal, assert_close_verbose
from spike_helpers import FAST_BACKENDS, FLOAT_TOLERANCE

from spikekern.ops import conv_bn_lif_inference, pack_spikes, spike_conv2d, spike_linear, unpack_spikes

HUGE_PROBLEM_GPU_GB = 40
DTYPE = torch.float16
TAIL = 3  # rows (images) of the huge problem that are also run on their own

ELEMENTS_LIMIT = 2**31
# Each shape's largest tensor has just over 2^31 elements (checked in test_huge_shapes_pass_2_pow_31).
HUGE_PACK = dict(rows=2**25 + 3, k=64)  # spikes [rows, k]
HUGE_LINEAR = dict(m=2**20 + 5, k=32, n=2048)  # output and grad_out [m, n]
HUGE_CONV = dict(n=8193, c=8, oc=64, size=64)  # output and grad_out [n, oc, size, size]
HUGE_CONV_BN_LIF = dict(t=2, n=4097, c=8, oc=64, size=64)  # spikes [t, n, oc, size, size]
SMALL_PACK = dict(rows=9, k=70)
SMALL_LINEAR = dict(m=11, k=45, n=17)
SMALL_CONV = dict(n=5, c=3, oc=6, size=7)
SMALL_CONV_BN_LIF = dict(t=2, n=5, c=3, oc=6, size=7)


def _largest(problem):
    """Elements of the largest tensor of a huge problem."""
    if problem == "pack":
        return HUGE_PACK["rows"] * HUGE_PACK["k"]
    if problem == "linear":
        return HUGE_LINEAR["m"] * HUGE_LINEAR["n"]
    shape = HUGE_CONV if problem == "conv" else HUGE_CONV_BN_LIF
    return shape.get("t", 1) * shape["n"] * shape["oc"] * shape["size"] ** 2


def _generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _spikes(shape, rate, generator):
    return (torch.rand(shape, generator=generator, device=DEVICE, dtype=DTYPE) < rate).to(DTYPE)


def _normal(shape, generator, scale=1.0):
    return torch.randn(shape, generator=generator, device=DEVICE, dtype=DTYPE) * scale


def _assert_close_to(actual, expected, what):
    tolerance = FLOAT_TOLERANCE[DTYPE]
    scale = max(expected.abs().max().item(), 1.0)
    assert_close_verbose(actual, expected, tolerance, tolerance * scale, what)


def check_pack(backend, rows, k):
    spikes = _spikes((rows, k), 0.3, _generator(0))
    packed = pack_spikes(spikes, backend=backend)
    assert_bit_equal(packed[-TAIL:], pack_spikes(spikes[-TAIL:], backend=backend), "packed words of the last rows")
    del spikes
    unpacked = unpack_spikes(packed, (rows, k), DTYPE, backend=backend)
    expected = unpack_spikes(packed[-TAIL:], (TAIL, k), DTYPE, backend=backend)
    assert_bit_equal(unpacked[-TAIL:], expected, "unpacked spikes of the last rows")


def check_linear(backend, path, m, k, n):
    generator = _generator(1)
    spikes = _spikes((m, k), 0.2, generator).requires_grad_()
    weight = _normal((n, k), generator, k**-0.5).requires_grad_()
    bias = _normal((n,), generator).requires_grad_()
    grad_out = _normal((m, n), generator)
    out = spike_linear(spikes, weight, bias, path=path, backend=backend)
    out.backward(grad_out)
    tail_spikes = spikes.detach()[-TAIL:].clone().requires_grad_()
    tail_out = spike_linear(tail_spikes, weight.detach(), bias.detach(), path=path, backend=backend)
    tail_out.backward(grad_out[-TAIL:])
    assert_bit_equal(out.detach()[-TAIL:], tail_out.detach(), "output of the last rows")
    assert_bit_equal(spikes.grad[-TAIL:], tail_spikes.grad, "grad s of the last rows")
    _assert_close_to(weight.grad, torch.mm(grad_out.t(), spikes.detach()), "grad weight over all rows")
    _assert_close_to(bias.grad, grad_out.sum(0, dtype=torch.float32).to(DTYPE), "grad bias over all rows")


def check_conv(backend, path, n, c, oc, size):
    generator = _generator(2)
    spikes = _spikes((n, c, size, size), 0.2, generator).requires_grad_()
    weight = _normal((oc, c, 3, 3), generator, (9 * c) ** -0.5).requires_grad_()
    bias = _normal((oc,), generator).requires_grad_()
    grad_out = _normal((n, oc, size, size), generator)
    out = spike_conv2d(spikes, weight, bias, padding=1, path=path, backend=backend)
    out.backward(grad_out)
    tail_spikes = spikes.detach()[-TAIL:].clone().requires_grad_()
    tail_out = spike_conv2d(tail_spikes, weight.detach(), bias.detach(), padding=1, path=path, backend=backend)
    tail_out.backward(grad_out[-TAIL:])
    assert_bit_equal(out.detach()[-TAIL:], tail_out.detach(), "output of the last images")
    assert_bit_equal(spikes.grad[-TAIL:], tail_spikes.grad, "grad s of the last images")
    expected_grad_weight = torch.nn.grad.conv2d_weight(spikes.detach(), weight.shape, grad_out, padding=1)
    _assert_close_to(weight.grad, expected_grad_weight, "grad weight over all images")
    _assert_close_to(bias.grad, grad_out.sum((0, 2, 3), dtype=torch.float32).to(DTYPE), "grad bias over all images")


def check_conv_bn_lif(backend, t, n, c, oc, size):
    generator = _generator(3)
    x_seq = _normal((t, n, c, size, size), generator)
    weight = _normal((oc, c, 3, 3), generator, 2 * (9 * c) ** -0.5)
    bias = _normal((oc,), generator, 0.5)
    spikes = conv_bn_lif_inference(x_seq, weight, bias, padding=1, backend=backend)
    tail = conv_bn_lif_inference(x_seq[:, -TAIL:], weight, bias, padding=1, backend=backend)
    assert 0.0 < tail.float().mean().item() < 1.0, "the check needs neurons that fire and neurons that do not"
    assert_bit_equal(spikes[:, -TAIL:], tail, "spikes of the last images")


def huge_problem(test):
    """Marks a test of a huge problem: GPU only, slow, and skipped on a GPU with too little memory."""
    enough_memory = DEVICE == "cuda" and torch.cuda.get_device_properties(0).total_memory >= HUGE_PROBLEM_GPU_GB * 2**30
    marks = (
        pytest.mark.gpu,
        pytest.mark.slow,
        pytest.mark.skipif(not enough_memory, reason=f"needs a GPU with {HUGE_PROBLEM_GPU_GB} GB of memory"),
    )
    for mark in marks:
        test = mark(test)
    return test


PATHS = ["dense", "sparse"]


@pytest.mark.parametrize("problem", ["pack", "linear", "conv", "conv_bn_lif"])
def test_huge_shapes_pass_2_pow_31(problem):
    assert ELEMENTS_LIMIT < _largest(problem) < ELEMENTS_LIMIT + 2**20


@pytest.mark.parametrize("backend", ["torch"] + FAST_BACKENDS)
def test_small_pack(backend):
    check_pack(backend, **SMALL_PACK)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_small_linear(backend, path):
    check_linear(backend, path, **SMALL_LINEAR)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_small_conv(backend, path):
    check_conv(backend, path, **SMALL_CONV)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_small_conv_bn_lif(backend):
    check_conv_bn_lif(backend, **SMALL_CONV_BN_LIF)


@huge_problem
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_huge_pack(backend):
    check_pack(backend, **HUGE_PACK)


@huge_problem
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_huge_linear(backend, path):
    check_linear(backend, path, **HUGE_LINEAR)


@huge_problem
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_huge_conv(backend, path):
    check_conv(backend, path, **HUGE_CONV)


@huge_problem
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_huge_conv_bn_lif(backend):
    check_conv_bn_lif(backend, **HUGE_CONV_BN_LIF)
