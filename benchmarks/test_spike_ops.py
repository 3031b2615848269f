"""spike_conv2d and spike_linear against the dense layers users would otherwise run, F.conv2d (cuDNN,
channels-last) and F.linear (cuBLAS), over spike rates, forward and forward+backward; and the fused
conv+BN+LIF inference block against cuDNN's convolution, eval-mode BatchNorm and spikekern's LIF kernel.
README.md explains the cases, the checks and the metrics."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F

from bench_utils import (
    SavedActivationMeter, assert_close_to_largest, benchmark_device, exact_float32, peak_memory_bytes,
    spikekern_backend_reasons, time_benchmark,
)  # fmt: skip

ON_GPU = benchmark_device().type == "cuda"
SUITE = "spike_ops"

SPIKE_RATES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
MODES = ("forward", "full")  # the training forward (autograd records), and forward + backward
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SPIKEKERN_PATHS = ("auto", "dense", "sparse")

# The spike ops' stated tolerances (docs/spike_ops.md): against the dense op computed in float32 on the
# same values and rounded once to the dtype, relative to the largest magnitude, at least 1.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


@dataclass(frozen=True)
class SpikeOp:
    name: str
    baseline: str  # the provider name of the dense op it replaces
    dense: Callable  # (s, weight, bias, **geometry) -> y: F.conv2d or F.linear
    spikekern: str  # its name in spikekern.ops; f"{spikekern}_plan" says which path runs
    geometry: dict  # the keyword arguments both take besides (s, weight, bias)
    input_shape: tuple
    weight_shape: tuple
    memory_format: torch.memory_format  # of the spikes, the weight and the output gradient
    library: str  # what runs the baseline on a GPU
    tf32_allowed: Callable  # () -> whether that library may round float32 to TF32


# The shapes: a 3x3 convolution of a 128-channel 32x32 map, batch 128; a linear layer on T*N =
# 4096 rows. The CPU shapes only keep the harness testable without a GPU.
SPIKE_OPS = {
    "conv2d": SpikeOp(
        "conv2d", "F.conv2d", F.conv2d, "spike_conv2d", {"padding": 1},
        (128, 128, 32, 32) if ON_GPU else (2, 8, 8, 8), (128, 128, 3, 3) if ON_GPU else (8, 8, 3, 3),
        torch.channels_last, "cuDNN, channels-last", lambda: torch.backends.cudnn.allow_tf32,
    ),
    "linear": SpikeOp(
        "linear", "F.linear", F.linear, "spike_linear", {},
        (4096, 2048) if ON_GPU else (16, 32), (2048, 2048) if ON_GPU else (32, 32),
        torch.contiguous_format, "cuBLAS", lambda: torch.backends.cuda.matmul.allow_tf32,
    ),
}  # fmt: skip


@dataclass
class Provider:
    forward: Callable  # (s, weight, bias) -> y
    detail: str  # how it ran
    backend: str | None = None  # spikekern's backend and path, from its plan
    path: str | None = None


def baseline_provider(op, dtype, device):
    detail = "PyTorch on the CPU"
    if device.type == "cuda":
        tf32 = f", TF32 {'allowed' if op.tf32_allowed() else 'off'}" if dtype == torch.float32 else ""
        detail = op.library + tf32
    return Provider(lambda s, weight, bias: op.dense(s, weight, bias, **op.geometry), detail)


def spikekern_provider(op, path, s, weight, bias):
    ops = pytest.importorskip("spikekern.ops")
    function, plan = getattr(ops, op.spikekern), getattr(ops, f"{op.spikekern}_plan")
    try:
        chosen = plan(s, weight, bias, **op.geometry, path=path)
    except NotImplementedError as error:
        pytest.skip(f"spikekern.ops.{op.spikekern}(path={path!r}): {error}")
    return Provider(
        lambda s, weight, bias: function(s, weight, bias, **op.geometry, path=path),
        f"{chosen.backend} backend, {chosen.path} path: {chosen.reason}",
        chosen.backend,
        chosen.path,
    )


def spike_problem(op, rate, dtype, device):
    """Spikes at ``rate``, weight, bias and an output gradient (seed 0), the gradient taken for all three."""
    generator = torch.Generator(device).manual_seed(0)
    s = (torch.rand(op.input_shape, generator=generator, device=device) < rate).to(dtype)
    fan_in = math.prod(op.weight_shape[1:])
    weight = torch.randn(op.weight_shape, generator=generator, device=device).div(fan_in**0.5).to(dtype)
    bias = torch.randn(op.weight_shape[0], generator=generator, device=device).to(dtype)
    with torch.no_grad():
        out_shape = op.dense(s, weight, bias, **op.geometry).shape
    grad_y = torch.randn(out_shape, generator=generator, device=device).to(dtype)
    s, weight, grad_y = (t.contiguous(memory_format=op.memory_format) for t in (s, weight, grad_y))
    return s.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), grad_y


def check_against_float32(op, provider, mode, inputs, grad_y):
    """spikekern's output, and in fwd+bwd its three gradients, within the op's tolerance of the dense op
    computed in float32 on the same values: a fast wrong kernel cannot win.

    TF32 is off on both sides: spikekern computes some gradients with PyTorch's dense ops (spike_conv2d's
    grad_s is cuDNN's conv2d_input), which follow that setting as F.conv2d's own backward does; the timed
    calls keep the setting as it is, for spikekern and the baseline alike."""

    def results(forward, tensors):
        y = forward(*tensors)
        return [y] if mode == "forward" else [y, *torch.autograd.grad(y, tensors, grad_y.to(y.dtype))]

    with exact_float32():
        actual = results(provider.forward, inputs)
        expected = results(
            lambda *tensors: op.dense(*tensors, **op.geometry),
            [t.detach().float().requires_grad_() for t in inputs],
        )
    tolerance = TOLERANCE[inputs[0].dtype]
    for what, value, reference in zip(("output", "grad s", "grad weight", "grad bias"), actual, expected):
        assert_close_to_largest(value, reference.to(value.dtype), tolerance, f"{op.spikekern} {what}", floor=1.0)


SPIKE_CASES = [
    pytest.param(op.name, mode, rate, provider, id=f"{op.name}-{mode}-rate{rate:g}-{provider}")
    for op in SPIKE_OPS.values()
    for mode in MODES
    for rate in SPIKE_RATES
    for provider in (op.baseline, *(f"spikekern-{path}" for path in SPIKEKERN_PATHS))
]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize(("op_name", "mode", "rate", "provider"), SPIKE_CASES)
def test_spike_op(
    benchmark, request, bench_device, bench_timing, bench_results, op_name, mode, rate, provider, dtype_name
):
    op, dtype = SPIKE_OPS[op_name], DTYPES[dtype_name]
    s, weight, bias, grad_y = spike_problem(op, rate, dtype, bench_device)
    inputs = (s, weight, bias)
    if provider == op.baseline:
        layer = baseline_provider(op, dtype, bench_device)
    else:
        layer = spikekern_provider(op, provider.removeprefix("spikekern-"), *inputs)
        try:
            check_against_float32(op, layer, mode, inputs, grad_y)
        except NotImplementedError as error:  # a path its plan accepts but a kernel lacks
            pytest.skip(f"spikekern.ops.{op.spikekern}: {error}")

    def forward():
        return layer.forward(*inputs)

    def forward_backward():
        # autograd.grad rather than .backward(): no accumulation into .grad, which would add traffic
        return torch.autograd.grad(forward(), inputs, grad_y)

    step = forward if mode == "forward" else forward_backward
    group = f"{op_name} {mode} {dtype_name} rate {rate:g} {list(s.shape)}"
    timer = time_benchmark(benchmark, bench_timing, bench_device, step, group)
    peak_bytes = peak_memory_bytes(step, bench_device)
    # The weight and bias are the layer's parameters, held whether autograd saves them or not.
    with SavedActivationMeter(excluding=(weight, bias)) as saved:
        _held_output = forward()  # held while the meter reads what its graph keeps
    saved_bytes_per_element = saved.nbytes / s.numel()
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    record = {
        "suite": SUITE,
        "test": request.node.nodeid,
        "op": op_name,
        "mode": mode,
        "dtype": dtype_name,
        "shape": list(s.shape),
        "weight_shape": list(weight.shape),
        "rate": rate,
        "spike_rate": s.detach().float().mean().item(),
        "provider": provider,
        "provider_detail": layer.detail,
        "baseline": op.baseline,
        "backend": layer.backend,
        "path": layer.path,
        **asdict(timer.stats(bench_timing.rounds)),
        "saved_bytes_per_element": saved_bytes_per_element,
        "peak_memory_bytes": peak_bytes,
    }
    benchmark.extra_info.update(bench_results.append(record))


# The fused block: the issue's [T = 4, N = 32, 128 -> 128, 32x32], 3x3, padding 1, SpikingJelly's LIF
# defaults. Its input is the spikes of the layer before, at a typical hidden layer's rate.
FUSED_SHAPE = (4, 32, 128, 32, 32) if ON_GPU else (2, 2, 8, 8, 8)
FUSED_OUT_CHANNELS = FUSED_SHAPE[2]
FUSED_KERNEL = 3
FUSED_PADDING = 1
FUSED_INPUT_RATE = 0.1
BN_EPS = 1e-5
TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
FUSED = "spikekern-fused"
UNFUSED = "unfused"
# conv_bn_lif_inference's stated spike criterion (docs/conv_bn_lif.md): folding the BatchNorm rounds the
# neurons' input differently, so a neuron may first disagree with the float32 sequence where its charge lies
# within FUSED_SPIKE_TOLERANCE[dtype] * T * max(1, max|input|) of the threshold, and at most 2% of the
# neurons may disagree at all. bfloat16, which the doc does not state: one bfloat16 rounding unit, as
# float16 gets one float16 unit there.
FUSED_SPIKE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2**-8}
MAX_FLIPPED_FRACTION = 0.02


@dataclass
class FusedProblem:
    x_seq: torch.Tensor  # [T, N, C, H, W] spikes
    weight: torch.Tensor
    batch_norm: dict  # bn_mean, bn_var, bn_weight, bn_bias

    def reference_current(self):
        """The neurons' input, BatchNorm(conv(x)), computed in float32 with TF32 off: [T, N, OC, OH, OW]."""
        norm = {name: value.float() for name, value in self.batch_norm.items()}
        current = F.batch_norm(
            float32_conv(self.x_seq, self.weight), norm["bn_mean"], norm["bn_var"], norm["bn_weight"],
            norm["bn_bias"], training=False, eps=BN_EPS,
        )  # fmt: skip
        return current.view(*self.x_seq.shape[:2], *current.shape[1:])


def float32_conv(x_seq, weight):
    """The block's convolution of the time-folded ``x_seq`` in float32, TF32 off."""
    with exact_float32():
        return F.conv2d(x_seq.flatten(0, 1).float(), weight.float(), padding=FUSED_PADDING)


def fused_problem(dtype, device):
    """Spikes, a convolution weight and BatchNorm statistics calibrated on this input (its output's mean
    and variance per channel, as after training), so that the neurons fire at a realistic rate."""
    generator = torch.Generator(device).manual_seed(0)
    x_seq = (torch.rand(FUSED_SHAPE, generator=generator, device=device) < FUSED_INPUT_RATE).to(dtype)
    channels = FUSED_SHAPE[2]
    weight_shape = (FUSED_OUT_CHANNELS, channels, FUSED_KERNEL, FUSED_KERNEL)
    fan_in = channels * FUSED_KERNEL**2
    weight = (torch.randn(weight_shape, generator=generator, device=device) / fan_in**0.5).to(dtype)
    y = float32_conv(x_seq, weight)
    batch_norm = {
        "bn_mean": y.mean((0, 2, 3)),
        "bn_var": y.var((0, 2, 3)),
        "bn_weight": 1 + 0.1 * torch.randn(FUSED_OUT_CHANNELS, generator=generator, device=device),
        "bn_bias": 0.1 * torch.randn(FUSED_OUT_CHANNELS, generator=generator, device=device),
    }
    # In the input's dtype, as after model.to(dtype).
    return FusedProblem(x_seq, weight, {name: value.to(dtype) for name, value in batch_norm.items()})


def lif_reference(current):
    """SpikingJelly's LIF (decay_input, hard reset) over the steps of ``current`` in its dtype: the spikes
    and the charged membrane each was decided on."""
    v = torch.full_like(current[0], V_RESET)
    spikes, charged = [], []
    for x in current.unbind(0):
        h = v + (x - (v - V_RESET)) / TAU
        spike = h >= V_THRESHOLD
        v = torch.where(spike, V_RESET, h)
        spikes.append(spike)
        charged.append(h)
    return torch.stack(spikes), torch.stack(charged)


def check_fused_spikes(spikes, problem):
    """``spikes`` against the float32 sequence (conv, BatchNorm, LIF; TF32 off) by the op's criterion: per
    neuron equal up to a first disagreement within the tolerance of the threshold (the steps after it may
    then differ too), and few neurons disagreeing at all."""
    current = problem.reference_current()
    expected, charged = lif_reference(current)
    margin = FUSED_SPIKE_TOLERANCE[spikes.dtype] * spikes.shape[0] * max(1.0, current.abs().max().item())
    differs = spikes.bool() != expected
    first = differs & (differs.int().cumsum(0) == 1)
    unexplained = first & ((charged - V_THRESHOLD).abs() > margin)
    assert not unexplained.any(), (
        f"{FUSED}: {int(unexplained.sum())} neurons first disagree with the float32 sequence where the charge is "
        f"farther than {margin:.3g} from the threshold; first at {unexplained.nonzero()[:5].tolist()}"
    )
    flipped = int(differs.any(0).sum())
    neurons = differs[0].numel()
    assert flipped <= max(1, MAX_FLIPPED_FRACTION * neurons), f"{FUSED}: {flipped} of {neurons} neurons disagree"


def unfused_provider(problem):
    """What a user runs today: cuDNN's convolution on channels-last spikes, eval-mode BatchNorm, then
    spikekern's LIF kernel on the time-folded result."""
    ops = pytest.importorskip("spikekern.ops")
    x_seq = problem.x_seq.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(problem.x_seq.shape)
    weight = problem.weight.contiguous(memory_format=torch.channels_last)
    norm = problem.batch_norm

    def forward():
        y = F.conv2d(x_seq.flatten(0, 1), weight, padding=FUSED_PADDING)
        current = F.batch_norm(
            y, norm["bn_mean"], norm["bn_var"], norm["bn_weight"], norm["bn_bias"], training=False, eps=BN_EPS
        )
        current_seq = current.view(*x_seq.shape[:2], *current.shape[1:])
        return ops.lif_multistep(current_seq, tau=TAU, v_threshold=V_THRESHOLD, v_reset=V_RESET)[0]

    reasons = spikekern_backend_reasons(x_seq)
    lif_backend = next(name for name, reason in reasons.items() if reason is None)
    conv = "cuDNN, channels-last" if x_seq.is_cuda else "PyTorch on the CPU"
    return forward, f"F.conv2d ({conv}) + F.batch_norm (eval) + spikekern.ops.lif_multistep ({lif_backend} backend)"


def fused_provider(problem):
    fused = getattr(pytest.importorskip("spikekern.ops"), "conv_bn_lif_inference", None)
    if fused is None:
        pytest.skip("spikekern.ops.conv_bn_lif_inference does not exist yet")

    def forward():
        return fused(
            problem.x_seq, problem.weight, padding=FUSED_PADDING, **problem.batch_norm, bn_eps=BN_EPS, neuron="lif",
            tau=TAU, decay_input=True, v_threshold=V_THRESHOLD, v_reset=V_RESET,
        )  # fmt: skip

    # Its input contiguous [T, N, C, H, W], the layout its kernel reads and a chain of fused blocks passes on.
    return forward, "spikekern.ops.conv_bn_lif_inference, default backend, contiguous input"


FUSED_PROVIDERS = {UNFUSED: unfused_provider, FUSED: fused_provider}


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("provider", [pytest.param(p, id=f"conv_bn_lif-inference-{p}") for p in FUSED_PROVIDERS])
def test_conv_bn_lif_inference(benchmark, request, bench_device, bench_timing, bench_results, provider, dtype_name):
    problem = fused_problem(DTYPES[dtype_name], bench_device)
    run, detail = FUSED_PROVIDERS[provider](problem)

    def step():
        with torch.no_grad():
            return run()

    spikes = step()
    if provider == FUSED:  # the baseline is what users run, TF32 included
        check_fused_spikes(spikes, problem)
    group = f"conv_bn_lif inference {dtype_name} {list(FUSED_SHAPE)}"
    timer = time_benchmark(benchmark, bench_timing, bench_device, step, group)
    peak_bytes = peak_memory_bytes(step, bench_device)
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    record = {
        "suite": SUITE,
        "test": request.node.nodeid,
        "op": "conv_bn_lif",
        "mode": "inference",
        "dtype": dtype_name,
        "shape": list(FUSED_SHAPE),
        "weight_shape": list(problem.weight.shape),
        "rate": FUSED_INPUT_RATE,
        "spike_rate": problem.x_seq.float().mean().item(),
        "output_spike_rate": spikes.float().mean().item(),
        "provider": provider,
        "provider_detail": detail,
        "baseline": UNFUSED,
        **asdict(timer.stats(bench_timing.rounds)),
        "peak_memory_bytes": peak_bytes,
    }
    benchmark.extra_info.update(bench_results.append(record))
