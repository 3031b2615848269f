"""The spike_conv2d CUDA kernels (csrc/spike/spike_conv2d_*, docs/spike_conv2d_cuda.md), called as
spikekern_cuda ops: their schemas against the Triton host functions (runs everywhere), and on a GPU each
kernel against F.conv2d and its autograd over strides, paddings, dilations, groups (word-aligned or
not), odd sizes, spike rates 0, 1%, 20%, 100% and float32/float16/bfloat16.

Tolerances: the sparse forward equals ordered_reference_forward (its documented order) bit for bit, and
so does the float32 dense forward; everything else is within spike_linear's FLOAT_TOLERANCE of the
float32 F.conv2d on the same values, relative to the scale."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, cuda_schemas
from spike_helpers import BACKEND_ERRORS, FLOAT_TOLERANCE, forward_backward

from spikekern.ops.spike_conv2d import CUDA_KERNEL_OPS, ordered_reference_forward
from spikekern.ops.spike_pack import as_rows, reference_pack

CUDA_ONLY = pytest.mark.skipif(
    BACKEND_ERRORS["cuda"] is not None,
    reason=f"the CUDA backend cannot run here: {BACKEND_ERRORS['cuda']}",
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RATES = [0.0, 0.01, 0.2, 1.0]
# (input [N, C, H, W], out channels, kernel, groups, F.conv2d's geometry). Channel counts cover one and
# several words per pixel, groups that start inside a word (70 / 2 = 35), depthwise, more than one
# 64-wide output tile and more than one 128-wide sparse block; more than 64 output pixels in most.
CASES = {
    "pad1": ((2, 5, 9, 7), 6, (3, 3), 1, {"padding": 1}),
    "stride12-dil2-2words": (
        (1, 40, 8, 11),
        12,
        (3, 2),
        1,
        {"stride": (1, 2), "padding": (2, 0), "dilation": 2},
    ),
    "groups2-unaligned": ((2, 70, 6, 5), 66, (3, 3), 2, {"stride": 2, "padding": 1}),
    "depthwise": ((3, 24, 5, 5), 24, (3, 3), 24, {"padding": 1}),
    "1x1-wide": ((2, 96, 7, 9), 130, (1, 1), 1, {}),
    "stride31-dil12-tall": (
        (1, 3, 70, 3),
        5,
        (2, 3),
        1,
        {"stride": (3, 1), "padding": (0, 2), "dilation": (1, 2)},
    ),
}


def cuda_op(kernel):
    return getattr(torch.ops.spikekern_cuda, CUDA_KERNEL_OPS[kernel])


@pytest.mark.parametrize("kernel", list(CUDA_KERNEL_OPS))
def test_cuda_schemas_take_the_triton_host_functions_arguments(kernel):
    """spike_conv2d calls a kernel of either backend with the same positional arguments: the C++ schema
    of its CUDA op must list the Triton host function's arguments in order."""
    triton_spike_conv2d = pytest.importorskip("spikekern.ops.triton.spike_conv2d")
    if not hasattr(triton_spike_conv2d, kernel):
        pytest.skip(
            f"spikekern.ops.triton.spike_conv2d has no {kernel} host function yet"
        )
    schema = cuda_schemas()[CUDA_KERNEL_OPS[kernel]]
    names = [argument.name for argument in schema.arguments]
    assert names == list(
        inspect.signature(getattr(triton_spike_conv2d, kernel)).parameters
    )
    assert len(schema.returns) == (2 if kernel == "pack_nchw" else 1)


def pair(value):
    return list(value) if isinstance(value, tuple) else [value, value]


def make_problem(case, rate, dtype, seed=0):
    """(spikes, weight, bias, grad_out, conv) with conv the kernels' trailing (stride, padding, dilation,
    groups) arguments."""
    shape, out_channels, kernel_size, groups, geometry = case
    generator = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(shape, generator=generator) < rate).to(DEVICE, dtype)
    weight = torch.randn(
        out_channels, shape[1] // groups, *kernel_size, generator=generator
    ).to(DEVICE, dtype)
    bias = torch.randn(out_channels, generator=generator).to(DEVICE, dtype)
    out_shape = F.conv2d(
        spikes.float(), weight.float(), groups=groups, **geometry
    ).shape
    grad_out = torch.randn(out_shape, generator=generator).to(DEVICE, dtype)
    conv = [
        pair(geometry.get(name, default))
        for name, default in (("stride", 1), ("padding", 0), ("dilation", 1))
    ]
    return spikes, weight, bias, grad_out, [*conv, groups]


def reference_pack_nchw(spikes):
    batch, _, height, width = spikes.shape
    return reference_pack(as_rows(spikes.permute(0, 2, 3, 1))).view(
        batch, height, width, -1
    )


def assert_close_to(actual, expected, dtype, what):
    """Within FLOAT_TOLERANCE of the float32 expectation rounded once to the dtype, relative to the scale."""
    assert actual.dtype == dtype, what
    tolerance = FLOAT_TOLERANCE[dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    assert_close_verbose(actual, expected.to(dtype), tolerance, tolerance * scale, what)


@CUDA_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_kernels_match_f_conv2d_and_its_autograd(case, rate, dtype):
    spikes, weight, bias, grad_out, conv = make_problem(case, rate, dtype)
    groups = conv[-1]
    packed, invalid = cuda_op("pack_nchw")(spikes, True)
    assert_bit_equal(packed, reference_pack_nchw(spikes), "packed")
    assert invalid.item() == 0

    expected_out, (_, expected_grad_weight, _) = forward_backward(
        lambda s, w, b: F.conv2d(s, w, b, groups=groups, **case[4]),
        *(t.float() for t in (spikes, weight, bias, grad_out)),
    )
    ordered = ordered_reference_forward(spikes, weight, bias, *conv)
    out_size = list(expected_out.shape[2:])
    for kernel in ("dense_forward", "sparse_forward"):
        out = cuda_op(kernel)(packed, weight, bias, out_size, *conv)
        assert out.is_contiguous(memory_format=torch.channels_last), kernel
        assert_close_to(out, expected_out, dtype, kernel)
        if kernel == "sparse_forward" or dtype == torch.float32:
            assert_bit_equal(
                out, ordered, f"{kernel} against ordered_reference_forward"
            )

    grad_weight = cuda_op("dense_grad_weight")(grad_out, packed, weight, *conv)
    assert grad_weight.is_contiguous()
    assert_close_to(grad_weight, expected_grad_weight, dtype, "grad weight")
    # grad_input does not depend on the spikes: compare it with the weight gradient's partner, the
    # input gradient of F.conv2d on a float input.
    _, (expected_grad_input, _) = forward_backward(
        lambda s, w: F.conv2d(s, w, groups=groups, **case[4]),
        spikes.float(),
        weight.float(),
        grad_out.float(),
    )
    grad_input = cuda_op("grad_input")(grad_out, weight, list(spikes.shape[2:]), *conv)
    assert grad_input.is_contiguous(memory_format=torch.channels_last)
    assert_close_to(grad_input, expected_grad_input, dtype, "grad input")


@CUDA_ONLY
def test_grad_out_in_any_layout_gives_the_same_gradients():
    spikes, weight, _, grad_out, conv = make_problem(
        CASES["groups2-unaligned"], 0.2, torch.float32
    )
    packed, _ = cuda_op("pack_nchw")(spikes, False)
    channels_last = grad_out.contiguous(memory_format=torch.channels_last)
    for kernel, args in (
        ("dense_grad_weight", (packed, weight)),
        ("grad_input", (weight, list(spikes.shape[2:]))),
    ):
        assert_bit_equal(
            cuda_op(kernel)(channels_last, *args, *conv),
            cuda_op(kernel)(grad_out, *args, *conv),
            kernel,
        )


@CUDA_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_flags_non_binary_values_only_when_validating(dtype):
    spikes = torch.zeros(2, 37, 3, 4, device=DEVICE, dtype=dtype)
    spikes[1, 33, 2, 3] = 0.5
    packed, invalid = cuda_op("pack_nchw")(spikes, True)
    assert invalid.item() == 1
    assert packed[1, 2, 3, 1].item() == 1 << 1  # any nonzero value packs as 1
    assert cuda_op("pack_nchw")(spikes, False)[1].item() == 0


@CUDA_ONLY
def test_empty_problems_give_empty_or_zero_results():
    spikes, weight, bias, _, conv = make_problem(CASES["pad1"], 0.2, torch.float32)
    empty = spikes[:0]
    packed, invalid = cuda_op("pack_nchw")(empty, True)
    assert packed.shape == (0, 9, 7, 1) and invalid.item() == 0
    for kernel in ("dense_forward", "sparse_forward"):
        assert cuda_op(kernel)(packed, weight, bias, [9, 7], *conv).shape == (
            0,
            6,
            9,
            7,
        )
    grad_out = torch.empty(0, 6, 9, 7, device=DEVICE)
    assert_bit_equal(
        cuda_op("dense_grad_weight")(grad_out, packed, weight, *conv),
        torch.zeros_like(weight),
        "grad weight",
    )
    assert cuda_op("grad_input")(grad_out, weight, [9, 7], *conv).shape == (0, 5, 9, 7)


@CUDA_ONLY
def test_bad_arguments_are_refused_with_their_names():
    spikes, weight, bias, grad_out, conv = make_problem(
        CASES["pad1"], 0.2, torch.float32
    )
    stride, padding, dilation, groups = conv
    packed, _ = cuda_op("pack_nchw")(spikes, False)
    forward = cuda_op("dense_forward")
    with pytest.raises(RuntimeError, match="packed must have dtype"):
        forward(packed.float(), weight, bias, [9, 7], *conv)
    with pytest.raises(RuntimeError, match="out_size must be"):
        forward(packed, weight, bias, [8, 7], *conv)
    with pytest.raises(RuntimeError, match="weight must be contiguous"):
        forward(packed, weight.transpose(2, 3), bias, [9, 7], *conv)
    with pytest.raises(RuntimeError, match="bias must have dtype"):
        forward(packed, weight, bias.half(), [9, 7], *conv)
    with pytest.raises(RuntimeError, match="divisible by groups"):
        forward(packed, weight, bias, [9, 7], stride, padding, dilation, 4)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        forward(packed, weight, bias, [9, 7], [0, 1], padding, dilation, groups)
    with pytest.raises(RuntimeError, match="must fit in the padded input"):
        forward(packed, weight, bias, [9, 7], stride, [0, 0], [5, 1], groups)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        cuda_op("dense_grad_weight")(grad_out[:, :5], packed, weight, *conv)
    with pytest.raises(RuntimeError, match="grad_out must have dtype"):
        cuda_op("grad_input")(grad_out.half(), weight, [9, 7], *conv)
    with pytest.raises(RuntimeError, match="spikes must be contiguous"):
        cuda_op("pack_nchw")(spikes.transpose(2, 3), False)
