"""spike_linear against F.linear and its autograd: backends, paths, rates, dtypes, saved memory, dispatch,
bad input, opcheck, torch.compile and the Triton kernels' ahead-of-time compilation for sm_90.

Tolerances (docs/spike_ops.md): the torch backend is bit-identical to F.linear in float32. The sparse
Triton path is bit-identical in every dtype to ``ordered_masked_sum`` (its documented fp32 order) and
within FLOAT_TOLERANCE of F.linear. Tensor-core paths: FLOAT_TOLERANCE, relative to the output's scale;
in float16/bfloat16 that is 4 units of the dtype's relative rounding (2**-11, 2**-8)."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_bit_equal, assert_close_verbose, assert_compiled_like_eager, cuda_schemas
from spike_helpers import (
    FAST_BACKENDS, FLOAT_TOLERANCE, GPU_ONLY, check_gradients_of_subset, forward_backward, spike_aot_case,
)  # fmt: skip
from triton_aot import compile_test

from spikekern.ops.spike_linear import (
    CUDA_KERNEL_OPS, SPARSE_MAX_DENSITY, ordered_masked_sum, spike_linear, spike_linear_plan,
)  # fmt: skip
from spikekern.ops.spike_pack import set_validation

# (backend, path) pairs that run here; the torch backend has one path.
RUNS = [("torch", "auto")] + [(backend, path) for backend in FAST_BACKENDS for path in ("dense", "sparse")]


def make_problem(shape, out_features, rate, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(shape, generator=generator) < rate).to(DEVICE, dtype)
    weight = torch.randn(out_features, shape[-1], generator=generator).to(DEVICE, dtype)
    bias = torch.randn(out_features, generator=generator).to(DEVICE, dtype)
    grad_out = torch.randn(*shape[:-1], out_features, generator=generator).to(DEVICE, dtype)
    return spikes, weight, bias, grad_out


def check_close_to_f_linear(backend, path, problem, dtype):
    out, grads = forward_backward(lambda *a: spike_linear(*a, path=path, backend=backend), *problem)
    # The expectation is F.linear in float32 on the same (rounded) values, rounded once to the dtype.
    expected_out, expected_grads = forward_backward(F.linear, *(t.float() for t in problem))
    tolerance = FLOAT_TOLERANCE[dtype]
    for name, actual, expected in zip(("output", "grad s", "grad weight", "grad bias"), [out, *grads],
                                      [expected_out, *expected_grads]):  # fmt: skip
        assert actual.dtype == dtype, name
        scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
        assert_close_verbose(actual, expected.to(dtype), tolerance, tolerance * scale, f"{backend}/{path} {name}")
    return out, grads


CASES = [((1, 7), 5), ((6, 70), 33), ((3, 4, 45), 17)]  # N=1 and odd sizes; the last is T-folded


@pytest.mark.parametrize("backend,path", RUNS)
@pytest.mark.parametrize("rate", [0.0, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("shape,out_features", CASES, ids=str)
def test_float32_matches_f_linear(backend, path, rate, shape, out_features):
    problem = make_problem(shape, out_features, rate)
    out, grads = check_close_to_f_linear(backend, path, problem, torch.float32)
    spikes, weight, bias, grad_out = problem
    if backend == "torch":  # the reference is F.linear on the unpacked (identical) spikes
        expected_out, expected_grads = forward_backward(F.linear, *problem)
        for name, actual, expected in zip(("output", "grad s", "grad weight", "grad bias"), [out, *grads],
                                          [expected_out, *expected_grads]):  # fmt: skip
            assert_bit_equal(actual, expected, name)
    elif path == "sparse":  # exact for its documented summation order (CUDA and Triton alike)
        rows, grad_rows = spikes.reshape(-1, shape[-1]), grad_out.reshape(-1, out_features)
        assert_bit_equal(out.reshape(rows.shape[0], -1), ordered_masked_sum(rows, weight.t()) + bias, "output")
        assert_bit_equal(grads[1], ordered_masked_sum(rows.t(), grad_rows).t(), "grad weight")


@pytest.mark.parametrize("backend,path", RUNS)
def test_float16(backend, path):
    check_close_to_f_linear(backend, path, make_problem((2, 5, 70), 40, 0.2, torch.float16), torch.float16)


@GPU_ONLY
@pytest.mark.parametrize("backend,path", RUNS)
def test_bfloat16(backend, path):
    check_close_to_f_linear(backend, path, make_problem((4, 64, 300), 130, 0.05, torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("backend,path", RUNS)
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)], ids=str)
def test_16bit_with_silent_tiles(backend, path, dtype):
    """Silent spike tiles are skipped in the 16-bit tensor-core paths too: rows 0-63 are silent (a forward
    tile of bias only) and inputs 64-127 are silent in every row (a grad_weight tile of zeros)."""
    spikes, weight, bias, grad_out = make_problem((130, 192), 70, 0.2, dtype)
    spikes[:64] = 0
    spikes[:, 64:128] = 0
    check_close_to_f_linear(backend, path, (spikes, weight, bias, grad_out), dtype)


@pytest.mark.parametrize("backend,path", RUNS)
def test_non_contiguous_spikes(backend, path):
    spikes, weight, bias, grad_out = make_problem((6, 8), 9, 0.3)
    column_major = spikes.t().contiguous().t()  # [6, 8] with strides (1, 6)
    assert not column_major.is_contiguous()
    check_close_to_f_linear(backend, path, (column_major, weight, bias, grad_out), torch.float32)


@pytest.mark.parametrize("backend,path", RUNS)
@pytest.mark.parametrize("shape,out_features", [((0, 7), 5), ((3, 0), 4), ((3, 7), 0), ((2, 0, 7), 5)], ids=str)
def test_empty(backend, path, shape, out_features):
    check_close_to_f_linear(backend, path, make_problem(shape, out_features, 0.5), torch.float32)


@pytest.mark.parametrize("backend,path", RUNS)
@pytest.mark.parametrize("wanted", ["s", "weight", "bias", "s+weight", "s+bias", "weight+bias"])
def test_gradients_of_any_subset_of_the_inputs(backend, path, wanted):
    """A frozen weight and bias, or spikes that need no gradient: only the asked-for gradients, F.linear's."""
    *inputs, grad_out = make_problem((6, 70), 33, 0.2)
    check_gradients_of_subset(
        lambda *a: spike_linear(*a, path=path, backend=backend), F.linear, inputs, grad_out, wanted
    )


@pytest.mark.parametrize("backend,path", RUNS)
def test_saves_one_bit_per_input_element_and_never_the_dense_input(backend, path):
    spikes, weight, bias, _ = make_problem((3, 4, 45), 17, 0.2)
    spikes.requires_grad_()
    weight.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spike_linear(spikes, weight, bias, path=path, backend=backend)
    words = [t for t in saved if t.dtype == torch.int32]
    assert len(words) == 1 and words[0].shape == (12, 2), [(t.shape, t.dtype) for t in saved]
    assert words[0].numel() * 32 == 12 * 64  # 45 inputs per row padded to 64 bits
    others = [t for t in saved if t is not words[0]]
    assert all(t.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for t in others), (
        "only the packed spikes and the weight may be saved"
    )


def test_non_binary_input_is_refused():
    spikes, weight, bias, _ = make_problem((4, 40), 6, 0.3)
    spikes[1, 3] = 2.0
    for backend, path in RUNS:
        with pytest.raises(ValueError, match="s must hold only spikes"):
            spike_linear(spikes, weight, bias, path=path, backend=backend)


def test_validation_off_trusts_the_input():
    spikes, weight, _, _ = make_problem((4, 40), 6, 0.3)
    spikes[1, 3] = 2.0
    set_validation(False)
    try:
        out = spike_linear(spikes, weight)
    finally:
        set_validation(None)
    assert torch.equal(out, F.linear((spikes != 0).float(), weight)), "nonzero values count as spikes"


def test_bad_arguments_are_refused_with_their_names():
    spikes, weight, bias, _ = make_problem((4, 40), 6, 0.3)
    with pytest.raises(ValueError, match=r"weight must have shape \[out_features, in_features=40\]"):
        spike_linear(spikes, weight[:, :39])
    with pytest.raises(TypeError, match="weight must have s's dtype torch.float32"):
        spike_linear(spikes, weight.half())
    with pytest.raises(TypeError, match="s must be float32, float16 or bfloat16"):
        spike_linear(spikes.long(), weight)
    with pytest.raises(ValueError, match=r"bias must have shape \[out_features\] = \(6,\)"):
        spike_linear(spikes, weight, bias[:5])
    with pytest.raises(ValueError, match=r"s must be \[N, in_features\] or time-first"):
        spike_linear(spikes[0], weight)
    with pytest.raises(ValueError, match="path must be one of"):
        spike_linear(spikes, weight, path="fast")
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run this input: the CUDA kernels need a CUDA"):
        spike_linear(spikes.cpu(), weight.cpu(), backend="cuda")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_plan_reports_the_density_rule_and_overrides(backend):
    _, weight, _, _ = make_problem((50, 64), 8, 0.0)
    for rate, expected in ((0.0, "sparse"), (SPARSE_MAX_DENSITY / 2, "sparse"), (0.2, "dense"), (1.0, "dense")):
        spikes = make_problem((50, 64), 8, rate)[0]
        plan = spike_linear_plan(spikes, weight, backend=backend)
        assert (plan.backend, plan.path) == (backend, expected) and "spike density" in plan.reason, (rate, plan)
    spikes = make_problem((50, 64), 8, 0.2)[0]
    assert spike_linear_plan(spikes, weight, path="sparse", backend=backend).path == "sparse"
    assert spike_linear_plan(spikes, weight, backend="torch").path == "reference"


@pytest.mark.parametrize("backend,path", RUNS)
def test_opcheck(backend, path):
    spikes, weight, bias, grad_out = make_problem((5, 45), 17, 0.2)
    sample = (spikes.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), True, path, backend)
    torch.library.opcheck(torch.ops.spikekern.spike_linear_forward.default, sample)
    _, packed = torch.ops.spikekern.spike_linear_forward(*sample)
    backward_args = (grad_out, packed, weight.detach(), True, True, False, path, backend)
    torch.library.opcheck(torch.ops.spikekern.spike_linear_backward.default, backward_args)


@pytest.mark.parametrize("kernel", sorted(CUDA_KERNEL_OPS))
def test_cuda_schemas_take_the_triton_host_functions_arguments(kernel):
    """spike_linear calls a kernel of either backend with the same positional arguments: the C++ schema
    of its CUDA op must list the Triton host function's arguments in order, and return one tensor."""
    triton_spike_linear = pytest.importorskip("spikekern.ops.triton.spike_linear")
    schema = cuda_schemas()[CUDA_KERNEL_OPS[kernel]]
    names = [argument.name for argument in schema.arguments]
    assert names == list(inspect.signature(getattr(triton_spike_linear, kernel)).parameters)
    assert len(schema.returns) == 1


class SpikingMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(45, 17)
        self.readout = torch.nn.Linear(17, 4)

    def forward(self, spikes):
        return self.readout(spike_linear(spikes, self.hidden.weight, self.hidden.bias))


def test_torch_compile_fullgraph_has_no_graph_break():
    model = SpikingMLP().to(DEVICE)
    spikes = make_problem((3, 4, 45), 1, 0.2)[0]
    assert_compiled_like_eager(model, (spikes,), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation for sm_90 (no GPU needed)
# ----------------------------------------------------------------------------------------------

AOT_CASES = (
    [spike_aot_case("spike_pack", "_pack_kernel", dtype, {"VALIDATE": v, "BLOCK_ROWS": 16, "BLOCK_WORDS": 8})
     for dtype in ("float32", "bfloat16") for v in (True, False)]
    + [spike_aot_case("spike_pack", "_unpack_kernel", "float16", {"BLOCK_ROWS": 16, "BLOCK_K": 256})]
    + [spike_aot_case("spike_linear", "_dense_forward_kernel", dtype,
        {"HAS_BIAS": True, "DOT_PRECISION": precision, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64})
       for dtype, precision in (("float32", "tf32x3"), ("float16", "tf32"), ("bfloat16", "tf32"))]
    + [spike_aot_case("spike_linear", "_sparse_forward_kernel", dtype, {"HAS_BIAS": True, "BLOCK_N": 128})
       for dtype in ("float32", "bfloat16")]
    + [spike_aot_case("spike_linear", "_dense_grad_weight_kernel", dtype,
        {"DOT_PRECISION": precision, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64})
       for dtype, precision in (("float32", "tf32x3"), ("bfloat16", "tf32"))]
    + [spike_aot_case("spike_linear", "_sparse_grad_weight_kernel", dtype, {"BLOCK_N": 128}) for dtype in ("float32", "bfloat16")]
)  # fmt: skip


def check_tensor_cores(spec, result):
    if "dense" in spec["kernel"]:
        assert result["tensor_cores"], "the dense kernels must use tensor-core MMA instructions on sm_90"


test_triton_kernels_compile_for_sm90 = compile_test(AOT_CASES, check_tensor_cores)
