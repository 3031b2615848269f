"""Multi-step IF, LIF and PLIF layers, forward, backward and both, side by side: spikekern's backends,
an eager PyTorch loop, torch.compile of that loop, SpikingJelly and snnTorch. README.md explains the
metrics and how to run it."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import pytest
import torch

from bench_utils import SavedActivationMeter, bandwidth_metrics, spikekern_backend_reasons, time_benchmark

# SpikingJelly's defaults, which every provider is set up to reproduce.
TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
SIGMOID_ALPHA = 4.0
PLIF_INITIAL_W = 0.0  # sigmoid(0) = 1 / TAU: PLIF starts out as this LIF

# The case: T = 4 steps of a 128-channel 32x32 feature map, batch 32. The CPU shape only keeps
# the harness testable without a GPU.
GPU_SHAPE = (4, 32, 128, 32, 32)
CPU_SHAPE = (4, 2, 8, 8, 8)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The least memory traffic, in element-sized accesses per element and step: forward reads x and
# writes spikes; backward reads x (or the state) and the spike gradient, and writes the x gradient.
ACCESSES_PER_ELEMENT = {"forward": 2, "backward": 3, "full": 5}


@dataclass
class NeuronLayer:
    forward: Callable  # x_seq -> spike_seq
    parameters: tuple = ()  # what backward differentiates besides x_seq
    detail: str = ""  # how the provider ran it, where it picks for itself


class SigmoidSurrogateSpike(torch.autograd.Function):
    """Heaviside forward, SpikingJelly's sigmoid surrogate derivative backward."""

    @staticmethod
    def forward(ctx, h_minus_threshold, alpha):
        ctx.save_for_backward(h_minus_threshold)
        ctx.alpha = alpha
        return (h_minus_threshold >= 0).to(h_minus_threshold.dtype)

    @staticmethod
    def backward(ctx, grad_spike):
        (h_minus_threshold,) = ctx.saved_tensors
        sigmoid = torch.sigmoid(ctx.alpha * h_minus_threshold)
        return grad_spike * (1 - sigmoid) * sigmoid * ctx.alpha, None


def eager_multistep(x_seq, neuron, w=None):
    """The neuron loop as a user writes it in PyTorch, SpikingJelly's formulas with hard reset."""
    k = torch.sigmoid(w) if neuron == "plif" else None
    v = torch.full_like(x_seq[0], V_RESET)
    spikes = []
    for x in x_seq.unbind(0):
        if neuron == "if":
            h = v + x
        elif neuron == "lif":
            h = v + (x - (v - V_RESET)) / TAU
        else:
            h = v + (x - (v - V_RESET)) * k
        spike = SigmoidSurrogateSpike.apply(h - V_THRESHOLD, SIGMOID_ALPHA)
        v = spike * V_RESET + (1 - spike) * h
        spikes.append(spike)
    return torch.stack(spikes)


def plif_weight(x_seq):
    # In x's dtype, as after model.to(dtype), like the peers' modules below.
    return torch.full((), PLIF_INITIAL_W, device=x_seq.device, dtype=x_seq.dtype, requires_grad=True)


def spikekern_layer(backend, neuron, x_seq):
    op = getattr(pytest.importorskip("spikekern.ops"), f"{neuron}_multistep", None)
    if op is None:
        pytest.skip(f"spikekern.ops.{neuron}_multistep is missing")
    reason = spikekern_backend_reasons(x_seq).get(backend, "not listed by spikekern.ops.available_backends")
    if reason is not None:
        pytest.skip(f"spikekern backend {backend!r}: {reason}")
    options = dict(v_threshold=V_THRESHOLD, v_reset=V_RESET, surrogate="sigmoid", alpha=SIGMOID_ALPHA, backend=backend)
    if neuron == "lif":
        return NeuronLayer(lambda x: op(x, tau=TAU, **options)[0])
    if neuron == "plif":
        w = plif_weight(x_seq)
        return NeuronLayer(lambda x: op(x, w, **options)[0], parameters=(w,))
    return NeuronLayer(lambda x: op(x, **options)[0])


def eager_layer(neuron, x_seq, multistep=eager_multistep):
    if neuron == "plif":
        w = plif_weight(x_seq)
        return NeuronLayer(lambda x: multistep(x, neuron, w), parameters=(w,))
    return NeuronLayer(lambda x: multistep(x, neuron))


def compiled_layer(neuron, x_seq):
    # Each case compiles afresh: otherwise the cases share one code object, and past Dynamo's
    # recompile limit later cases would silently run eagerly.
    torch._dynamo.reset()
    return eager_layer(neuron, x_seq, multistep=torch.compile(eager_multistep))


def spikingjelly_layer(neuron, x_seq):
    sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    sj_functional = pytest.importorskip("spikingjelly.activation_based.functional")
    make_node = {
        "if": lambda: sj_neuron.IFNode(step_mode="m"),
        "lif": lambda: sj_neuron.LIFNode(tau=TAU, step_mode="m"),
        "plif": lambda: sj_neuron.ParametricLIFNode(init_tau=TAU, step_mode="m"),
    }[neuron]
    node = make_node().to(device=x_seq.device, dtype=x_seq.dtype)
    # SpikingJelly picks its kernel itself; on a GPU its fused kernels need a float32 membrane, which
    # a node holds only for float32 input.
    implementation = sj_functional.neuron_implementation(neuron, x_seq.device)["implementation"]
    if x_seq.is_cuda and x_seq.dtype != torch.float32:
        implementation = f"torch reference ({x_seq.dtype} membrane; fused kernels need float32)"

    def forward(x):
        node.reset()  # a node carries its membrane from one call into the next
        return node(x)

    return NeuronLayer(forward, parameters=tuple(node.parameters()), detail=implementation)


def snntorch_layer(neuron, x_seq):
    snn = pytest.importorskip("snntorch")
    # beta = 1 - 1/tau is this LIF's leak; "zero" is snnTorch's hard reset to 0.
    leaky = snn.Leaky(beta=1 - 1 / TAU, threshold=V_THRESHOLD, reset_mechanism="zero")
    leaky = leaky.to(device=x_seq.device, dtype=x_seq.dtype)

    def forward(x):
        membrane = torch.zeros_like(x[0])
        spikes = []
        for x_t in x.unbind(0):
            spike, membrane = leaky(x_t, membrane)
            spikes.append(spike)
        return torch.stack(spikes)

    return NeuronLayer(forward, detail="Leaky(reset_mechanism='zero', surrogate atan)")


PROVIDERS = {
    "spikekern-cuda": partial(spikekern_layer, "cuda"),
    "spikekern-triton": partial(spikekern_layer, "triton"),
    "spikekern-torch": partial(spikekern_layer, "torch"),
    "eager": eager_layer,
    "torch.compile": compiled_layer,
    "spikingjelly": spikingjelly_layer,
    "snntorch": snntorch_layer,
}

# LIF is the headline case and runs every provider and mode; IF and PLIF compare fwd+bwd, and
# snnTorch has only the LIF.
CASES = [
    *(("lif", mode, provider) for mode in ACCESSES_PER_ELEMENT for provider in PROVIDERS),
    *((neuron, "full", provider) for neuron in ("if", "plif") for provider in PROVIDERS if provider != "snntorch"),
]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize(("neuron", "mode", "provider"), [pytest.param(*case, id="-".join(case)) for case in CASES])
def test_neuron_multistep(
    benchmark, request, bench_device, bench_timing, bench_results, neuron, mode, provider, dtype_name
):
    shape = GPU_SHAPE if bench_device.type == "cuda" else CPU_SHAPE
    generator = torch.Generator(bench_device).manual_seed(0)
    x_seq = torch.randn(shape, generator=generator, device=bench_device, dtype=DTYPES[dtype_name], requires_grad=True)
    grad_spikes = torch.randn(shape, generator=generator, device=bench_device, dtype=x_seq.dtype)
    layer = PROVIDERS[provider](neuron, x_seq)

    def backward(spikes):
        # autograd.grad rather than .backward(): no accumulation into .grad, which would add traffic
        return torch.autograd.grad(spikes, (x_seq, *layer.parameters), grad_spikes)

    setup, step = {
        "forward": (None, lambda: layer.forward(x_seq)),
        "backward": (lambda: ((layer.forward(x_seq),), {}), backward),
        "full": (None, lambda: backward(layer.forward(x_seq))),
    }[mode]
    group = f"{neuron} {mode} {dtype_name} {list(shape)}"
    timer = time_benchmark(benchmark, bench_timing, bench_device, step, group, setup)

    # After timing, so that torch.compile has compiled outside the hooks.
    with SavedActivationMeter() as saved:
        spikes = layer.forward(x_seq)
    saved_bytes_per_element = saved.nbytes / x_seq.numel()
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    stats = timer.stats(bench_timing.rounds)
    model_bytes = ACCESSES_PER_ELEMENT[mode] * x_seq.numel() * x_seq.element_size()
    metrics = {
        **asdict(stats),
        **bandwidth_metrics(model_bytes, stats.median_ms, bench_results.copy_GBps),
        "saved_bytes_per_element": saved_bytes_per_element,
        # The same input should give about the same rate everywhere; a peer set up differently shows here.
        "spike_rate": spikes.float().mean().item(),
    }
    benchmark.extra_info.update(
        bench_results.append(
            {
                "suite": "neuron_ops",
                "test": request.node.nodeid,
                "neuron": neuron,
                "mode": mode,
                "dtype": dtype_name,
                "shape": list(shape),
                "provider": provider,
                "provider_detail": layer.detail,
                **metrics,
            }
        )
    )
