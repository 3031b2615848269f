"""spike_conv2d against F.conv2d and its autograd: geometry (strides, paddings, dilations, groups, odd
sizes), layouts, T-folded input, spike rates, dtypes, both paths of the Triton forward and its grad_s
kernel, the NCHW pack kernel, saved memory, bad input, the plan and the density dispatch, opcheck,
torch.compile and the Triton kernels' ahead-of-time compilation for sm_90.

Tolerances (docs/spike_conv2d.md): the torch backend is bit-identical to F.conv2d and its autograd in
float32; the sparse Triton forward is bit-identical to ordered_reference_forward (its documented order)
in float32 and float16; otherwise the Triton backend is within spike_linear's FLOAT_TOLERANCE of
F.conv2d, relative to the scale."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, assert_compiled_like_eager
from spike_helpers import (
    FLOAT_TOLERANCE, GPU_ONLY, TRITON_USABLE, check_gradients_of_subset, forward_backward, spike_aot_case,
)  # fmt: skip
from triton_aot import compile_test

from spikekern.ops.spike_conv2d import SPARSE_MAX_DENSITY, ordered_reference_forward, spike_conv2d, spike_conv2d_plan
from spikekern.ops.spike_pack import as_rows, pack_rows, set_validation

BACKENDS = ["torch"] + (["triton"] if TRITON_USABLE else [])
# (backend, forward path): the torch backend has one path; Triton's two paths share the backward kernels.
RUNS = [("torch", "auto")] + ([("triton", "dense"), ("triton", "sparse")] if TRITON_USABLE else [])
RUN_IDS = [f"{backend}-{path}" for backend, path in RUNS]
TRITON_ONLY = pytest.mark.skipif(not TRITON_USABLE, reason="the Triton backend cannot run here")
GRADIENT_NAMES = ("output", "grad s", "grad weight", "grad bias")


def make_problem(shape, out_channels, kernel_size, groups=1, rate=0.2, dtype=torch.float32, seed=0, **geometry):
    """(spikes, weight, bias, grad_out) for a convolution of ``shape`` input; ``geometry`` is F.conv2d's."""
    generator = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(shape, generator=generator) < rate).to(DEVICE, dtype)
    weight = torch.randn(out_channels, shape[-3] // groups, *kernel_size, generator=generator).to(DEVICE, dtype)
    bias = torch.randn(out_channels, generator=generator).to(DEVICE, dtype)
    images = spikes.flatten(0, 1) if spikes.dim() == 5 else spikes
    out_shape = F.conv2d(images.float(), weight.float(), None, groups=groups, **geometry).shape
    grad_out = torch.randn(*shape[:-3], *out_shape[1:], generator=generator).to(DEVICE, dtype)
    return spikes, weight, bias, grad_out


def f_conv2d(spikes, weight, bias, groups=1, **geometry):
    """F.conv2d, with time-first input folded into the batch like spike_conv2d does."""
    images = spikes.flatten(0, 1) if spikes.dim() == 5 else spikes
    out = F.conv2d(images, weight, bias, groups=groups, **geometry)
    return out.view(*spikes.shape[:-3], *out.shape[1:])


def check_close_to_f_conv2d(backend, problem, groups, geometry, dtype=torch.float32, path="auto"):
    def run(spikes, weight, bias):
        return spike_conv2d(spikes, weight, bias, groups=groups, path=path, backend=backend, **geometry)

    out, grads = forward_backward(run, *problem)
    # The expectation is F.conv2d in float32 on the same (rounded) values, rounded once to the dtype.
    expected_out, expected_grads = forward_backward(lambda *a: f_conv2d(*a, groups=groups, **geometry),
                                                    *(t.float() for t in problem))  # fmt: skip
    tolerance = FLOAT_TOLERANCE[dtype]
    for name, actual, expected in zip(GRADIENT_NAMES, [out, *grads], [expected_out, *expected_grads]):
        assert actual.dtype == dtype, name
        scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
        assert_close_verbose(actual, expected.to(dtype), tolerance, tolerance * scale, f"{backend} {name}")
    return out, grads


# (input shape, out channels, kernel size, groups, F.conv2d's geometry); odd sizes throughout.
CASES = [
    ((2, 5, 6, 7), 7, (3, 3), 1, {"padding": 1}),
    ((1, 6, 5, 9), 4, (3, 2), 2, {"stride": 2}),
    ((2, 40, 6, 5), 3, (3, 3), 1, {"stride": (1, 2), "padding": (2, 1), "dilation": 2}),  # 40 channels: two words
    ((2, 4, 5, 5), 4, (3, 3), 4, {"padding": 1}),  # depthwise
    ((2, 2, 3, 5, 4), 6, (1, 1), 1, {}),  # time-first [T, N, C, H, W]
    ((1, 48, 4, 5), 6, (2, 3), 2, {"stride": (2, 1), "padding": (1, 0)}),  # group 1 starts mid-word
    ((2, 3, 7, 5), 6, (1, 1), 3, {"stride": 2}),  # depthwise, 2 outputs per channel, 1x1 strided
]
RATES = [0.0, 0.01, 0.2, 1.0]


@pytest.mark.parametrize(("backend", "path"), RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: f"case{i}")
def test_float32_matches_f_conv2d(backend, path, rate, index):
    shape, out_channels, kernel_size, groups, geometry = CASES[index]
    problem = make_problem(shape, out_channels, kernel_size, groups, rate, **geometry)
    out, grads = check_close_to_f_conv2d(backend, problem, groups, geometry, path=path)
    if backend == "torch":  # the reference is F.conv2d and its autograd on the unpacked (identical) spikes
        expected_out, expected_grads = forward_backward(lambda *a: f_conv2d(*a, groups=groups, **geometry), *problem)
        for name, actual, expected in zip(GRADIENT_NAMES, [out, *grads], [expected_out, *expected_grads]):
            assert_bit_equal(actual, expected, name)


@pytest.mark.parametrize(("backend", "path"), RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("index", [0, 5], ids=lambda i: f"case{i}")
def test_float16(backend, path, index):
    shape, out_channels, kernel_size, groups, geometry = CASES[index]
    problem = make_problem(shape, out_channels, kernel_size, groups, dtype=torch.float16, **geometry)
    check_close_to_f_conv2d(backend, problem, groups, geometry, torch.float16, path)


def normalised(geometry):
    """F.conv2d's keyword geometry as ordered_reference_forward's three pairs."""
    pairs = [geometry.get(name, default) for name, default in (("stride", 1), ("padding", 0), ("dilation", 1))]
    return [list(value) if isinstance(value, tuple) else [value, value] for value in pairs]


@TRITON_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: f"case{i}")
def test_sparse_path_sums_in_the_documented_order(dtype, rate, index):
    shape, out_channels, kernel_size, groups, geometry = CASES[index]
    spikes, weight, bias, _ = make_problem(shape, out_channels, kernel_size, groups, rate, dtype, **geometry)
    out = spike_conv2d(spikes, weight, bias, groups=groups, path="sparse", backend="triton", **geometry)
    images = spikes.flatten(0, 1) if spikes.dim() == 5 else spikes
    expected = ordered_reference_forward(images, weight, bias, *normalised(geometry), groups)
    assert_bit_equal(out, expected.reshape(out.shape), "sparse forward")


@GPU_ONLY
@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16(backend):
    problem = make_problem((4, 64, 16, 16), 96, (3, 3), dtype=torch.bfloat16, padding=1)
    check_close_to_f_conv2d(backend, problem, 1, {"padding": 1}, torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_input_and_channels_last_output(backend):
    spikes, weight, bias, grad_out = make_problem((2, 5, 6, 7), 7, (3, 3), padding=1)
    channels_last = spikes.contiguous(memory_format=torch.channels_last)
    out, _ = check_close_to_f_conv2d(backend, (channels_last, weight, bias, grad_out), 1, {"padding": 1})
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    check_close_to_f_conv2d(backend, make_problem((0, 5, 6, 7), 7, (3, 3), padding=1), 1, {"padding": 1})


@pytest.mark.parametrize("backend,path", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("wanted", ["s", "weight", "bias", "s+weight", "s+bias", "weight+bias"])
def test_gradients_of_any_subset_of_the_inputs(backend, path, wanted):
    """A frozen weight and bias, or spikes that need no gradient: only the asked-for gradients, F.conv2d's."""
    *inputs, grad_out = make_problem((2, 5, 6, 7), 7, (3, 3), stride=2, padding=1)
    check_gradients_of_subset(
        lambda *a: spike_conv2d(*a, stride=2, padding=1, path=path, backend=backend),
        lambda *a: F.conv2d(*a, stride=2, padding=1), inputs, grad_out, wanted,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_saves_one_bit_per_input_element_and_never_the_dense_input(backend):
    spikes, weight, bias, _ = make_problem((2, 3, 40, 5, 4), 6, (3, 3), padding=1)
    spikes.requires_grad_()
    weight.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spike_conv2d(spikes, weight, bias, padding=1, backend=backend)
    words = [t for t in saved if t.dtype == torch.int32]
    # Channels-last words: [T*N, H, W, ceil(40/32)], 40 channels per pixel padded to 64 bits.
    assert len(words) == 1 and words[0].shape == (6, 5, 4, 2), [(t.shape, t.dtype) for t in saved]
    others = [t for t in saved if t is not words[0]]
    assert all(t.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for t in others), (
        "only the packed spikes and the weight may be saved"
    )


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_non_binary_input_is_refused(memory_format):
    spikes, weight, bias, _ = make_problem((2, 5, 6, 7), 7, (3, 3))
    spikes[1, 3, 2, 2] = 0.5
    spikes = spikes.contiguous(memory_format=memory_format)  # NCHW: the NCHW pack kernel; else rows
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="s must hold only spikes"):
            spike_conv2d(spikes, weight, bias, backend=backend)


def test_validation_off_trusts_the_input():
    spikes, weight, _, _ = make_problem((2, 5, 6, 7), 7, (3, 3))
    spikes[1, 3, 2, 2] = 2.0
    set_validation(False)
    try:
        out = spike_conv2d(spikes, weight)
    finally:
        set_validation(None)
    assert torch.equal(out, F.conv2d((spikes != 0).float(), weight)), "nonzero values count as spikes"


def test_bad_arguments_are_refused_with_their_names():
    spikes, weight, bias, _ = make_problem((2, 6, 6, 7), 4, (3, 3))
    with pytest.raises(
        ValueError, match=r"weight must have shape \[out_channels \(a multiple of groups=1\), C/groups=6"
    ):
        spike_conv2d(spikes, weight[:, :5])
    with pytest.raises(ValueError, match=r"C/groups=1.5"):
        spike_conv2d(spikes, weight, groups=4)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        spike_conv2d(spikes, weight, groups=0)
    with pytest.raises(TypeError, match="weight must have s's dtype torch.float32"):
        spike_conv2d(spikes, weight.half())
    with pytest.raises(TypeError, match="s must be float32, float16 or bfloat16"):
        spike_conv2d(spikes.long(), weight)
    with pytest.raises(ValueError, match=r"bias must have shape \[out_channels\] = \(4,\)"):
        spike_conv2d(spikes, weight, bias[:3])
    with pytest.raises(ValueError, match=r"s must be \[N, C, H, W\] or time-first"):
        spike_conv2d(spikes[0], weight)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        spike_conv2d(spikes, weight, stride=0)
    with pytest.raises(TypeError, match="padding must be an int or a pair of ints, got 'same'"):
        spike_conv2d(spikes, weight, padding="same")
    with pytest.raises(ValueError, match=r"does not fit the input \(6, 7\)"):
        spike_conv2d(spikes, weight, dilation=4)
    with pytest.raises(ValueError, match="path must be one of"):
        spike_conv2d(spikes, weight, path="fast")
    if DEVICE != "cuda":
        with pytest.raises(RuntimeError, match="the CUDA kernels need a CUDA tensor"):
            spike_conv2d(spikes, weight, backend="cuda")


def test_plan_names_the_backend_and_path():
    spikes, weight, _, _ = make_problem((2, 6, 6, 7), 4, (3, 3))
    assert spike_conv2d_plan(spikes, weight, backend="torch").path == "reference"
    if TRITON_USABLE:
        plan = spike_conv2d_plan(spikes, weight, path="sparse", backend="triton")
        assert plan == ("triton", "sparse", "path='sparse' requested"), plan


@TRITON_ONLY
@pytest.mark.parametrize(("rate", "path", "relation"), [(0.0, "sparse", "<="), (0.01, "sparse", "<="),
                                                        (0.2, "dense", ">"), (1.0, "dense", ">")])  # fmt: skip
def test_auto_takes_the_sparse_path_at_low_density_and_says_why(rate, path, relation):
    spikes, weight, bias, _ = make_problem((2, 2, 40, 5, 4), 6, (3, 3), rate=rate, padding=1)
    density = spikes.mean().item()
    assert (density <= SPARSE_MAX_DENSITY) == (path == "sparse"), "the rate must fall on the intended side"
    plan = spike_conv2d_plan(spikes, weight, bias, padding=1, backend="triton")
    assert (plan.backend, plan.path) == ("triton", path), plan
    assert plan.reason == f"auto: spike density {density:.4f} {relation} SPARSE_MAX_DENSITY {SPARSE_MAX_DENSITY}"
    out = spike_conv2d(spikes, weight, bias, padding=1, backend="triton")
    assert_bit_equal(out, spike_conv2d(spikes, weight, bias, padding=1, path=path, backend="triton"), "auto")


@TRITON_ONLY
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 40, 2, 3), (3, 64, 1, 5), (1, 1, 9, 70)])
@pytest.mark.parametrize("rate", [0.3, 1.0])
def test_nchw_pack_kernel_equals_the_channels_last_pack(shape, rate):
    from spikekern.ops.triton.spike_conv2d import pack_nchw

    spikes = make_problem(shape, 1, (1, 1), rate=rate)[0]
    batch, _, height, width = shape
    expected = pack_rows(as_rows(spikes.permute(0, 2, 3, 1)), True, "torch").view(batch, height, width, -1)
    packed, invalid = pack_nchw(spikes, True)
    assert packed.dtype == torch.int32 and torch.equal(packed, expected), "the words differ (bit 31: sign)"
    assert invalid.tolist() == [0]
    spikes[-1, -1, -1, -1] = 0.5
    assert pack_nchw(spikes, True)[1].tolist() == [1], "non-binary input must set the flag"
    assert pack_nchw(spikes, False)[1].tolist() == [0], "no check without validation"


@pytest.mark.parametrize(("backend", "path"), RUNS, ids=RUN_IDS)
def test_opcheck(backend, path):
    spikes, weight, bias, grad_out = make_problem((2, 6, 5, 4), 4, (3, 3), 2, padding=1, stride=(2, 1))
    geometry = ([2, 1], [1, 1], [1, 1], 2)
    sample = (spikes.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), *geometry, True, path, backend)
    torch.library.opcheck(torch.ops.spikekern.spike_conv2d_forward.default, sample)
    _, packed = torch.ops.spikekern.spike_conv2d_forward(*sample)
    backward_args = (grad_out, packed, weight.detach(), *geometry, True, True, True, backend)
    torch.library.opcheck(torch.ops.spikekern.spike_conv2d_backward.default, backward_args)


class SpikingConvNet(torch.nn.Module):
    def __init__(self, backend, path):
        super().__init__()
        self.conv = torch.nn.Conv2d(5, 6, 3, padding=1)
        self.readout = torch.nn.Linear(6, 3)
        self.backend, self.path = backend, path

    def forward(self, spikes):
        features = spike_conv2d(spikes, self.conv.weight, self.conv.bias, padding=1, path=self.path,
                                backend=self.backend)  # fmt: skip
        return self.readout(features.mean((-2, -1)))


@pytest.mark.parametrize(("backend", "path"), RUNS, ids=RUN_IDS)
def test_torch_compile_fullgraph_has_no_graph_break(backend, path):
    model = SpikingConvNet(backend, path).to(DEVICE)
    spikes = make_problem((2, 2, 5, 4, 4), 1, (1, 1))[0]
    assert_compiled_like_eager(model, (spikes,), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation for sm_90 (no GPU needed)
# ----------------------------------------------------------------------------------------------

BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_C": 32}
PRECISIONS = (("float32", "tf32x3"), ("float16", "tf32"), ("bfloat16", "tf32"))
IMPLICIT_GEMM_KERNELS = ("_dense_forward_kernel", "_dense_grad_weight_kernel", "_grad_input_kernel")
AOT_CASES = (
    [spike_aot_case("spike_conv2d", "_dense_forward_kernel", dtype, {"HAS_BIAS": True, "DOT_PRECISION": precision, **BLOCKS})
     for dtype, precision in PRECISIONS]
    + [spike_aot_case("spike_conv2d", "_dense_grad_weight_kernel", dtype, {"DOT_PRECISION": precision, **BLOCKS})
       for dtype, precision in (PRECISIONS[0], PRECISIONS[2])]
    + [spike_aot_case("spike_conv2d", "_grad_input_kernel", dtype,
                      {"DOT_PRECISION": precision, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32})
       for dtype, precision in PRECISIONS]
    + [spike_aot_case("spike_conv2d", "_sparse_forward_kernel", dtype, {"HAS_BIAS": True, "BLOCK_M": 32, "BLOCK_N": 64})
       for dtype, _ in PRECISIONS]
    + [spike_aot_case("spike_conv2d", "_pack_nchw_kernel", dtype, {"VALIDATE": validate, "BLOCK_PIXELS": 64})
       for dtype, validate in (("float32", True), ("float16", False), ("bfloat16", True))]
)  # fmt: skip


def check_tensor_cores(spec, result):
    if spec["kernel"] in IMPLICIT_GEMM_KERNELS:
        assert result["tensor_cores"], "the implicit-GEMM kernels must use tensor-core MMA instructions on sm_90"


test_triton_kernels_compile_for_sm90_with_tensor_cores = compile_test(AOT_CASES, check_tensor_cores)
