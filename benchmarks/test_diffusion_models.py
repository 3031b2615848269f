"""The SDDPM spiking U-Net (``spikekern.models.SpikingUNet``): one training step (forward, backward, Adam
step) and DDIM sampling, for spikekern's network, the same network built from SpikingJelly 2.0 layers and
its ANN counterpart; then the training step against T, batch and resolution. README.md explains the
variants, the metrics and how to run it."""

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import pytest
import torch

from bench_utils import (
    SavedActivationMeter, assert_close_to_largest, benchmark_device, exact_float32, op_profile,
    peak_memory_bytes, time_benchmark,
)  # fmt: skip

SPIKEKERN = "spikekern"
SPIKINGJELLY = "spikingjelly"
ANN = "ann"
SPIKING_VARIANTS = (SPIKEKERN, SPIKINGJELLY)

# spikekern.train's defaults, so that a step here is a step of `python -m spikekern.train`.
LEARNING_RATE = 2e-4
EMA_DECAY = 0.999
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class NetworkSize:
    preset: str
    batch: int
    time_steps: int
    overrides: tuple = ()  # (field, value) pairs of the preset's config changed besides T: the CPU's smaller net

    def config(self, neuron="if"):
        models = pytest.importorskip("spikekern.models")
        # The ANN counterpart runs one step whatever T its spiking twin has.
        steps = {} if neuron == "relu" else {"time_steps": self.time_steps}
        return models.preset_config(self.preset, neuron=neuron, **steps, **dict(self.overrides))

    def label(self):
        image_size = dict(self.overrides).get("image_size")
        resolution = "" if image_size is None else f"-{image_size}px"  # else the preset's
        return f"{self.preset.removeprefix('sddpm-')}{resolution}-T{self.time_steps}-b{self.batch}"


# The case: sddpm-cifar10, T = 4, batch 128, DDIM with 50 steps. The CPU sizes only keep the harness
# testable without a GPU: the digits preset 4 channels wide on 8x8 images, two steps.
TIME_STEP_SWEEP = (1, 2, 4, 8, 16)
SMALL_NET = (("base_channels", 4), ("image_size", 8))
if benchmark_device().type == "cuda":
    HEADLINE = NetworkSize("sddpm-cifar10", batch=128, time_steps=4)
    SAMPLING_STEPS = 50
    SCALING = (
        # T at a batch that leaves room for T = 16: SpikingJelly's network saves about 280 MiB per image for
        # backward at T = 4 in float32 (measured on the CPU), so T = 16 at batch 32 holds what the headline
        # holds. At T = 4 the batch axis runs 32, 64 and 128 (HEADLINE); 256 could run out of memory.
        *(NetworkSize("sddpm-cifar10", 32, steps) for steps in TIME_STEP_SWEEP),
        NetworkSize("sddpm-cifar10", 64, 4),
        NetworkSize("sddpm-celeba", 32, 4),  # 64x64, against sddpm-cifar10's 32x32 at T = 4, batch 32
    )
else:
    HEADLINE = NetworkSize("digits", batch=2, time_steps=2, overrides=SMALL_NET)
    SAMPLING_STEPS = 2
    SCALING = (
        *(NetworkSize("digits", 1, steps, SMALL_NET) for steps in TIME_STEP_SWEEP),
        NetworkSize("digits", 4, 2, SMALL_NET),  # batch 1, 2 (HEADLINE), 4 at T = 2
        NetworkSize("digits", 1, 2, (*SMALL_NET, ("image_size", 16))),  # 16x16 against 8x8 at T = 2, batch 1
    )

# The twin is checked at the measured network, on a batch this small.
CHECK_BATCH = 2

# Fed the same input, a SpikingJelly IF neuron and spikekern's make the same float32 additions and
# comparisons, so their spikes must be equal. Convolutions (on a GPU spikekern's Triton kernel, TF32x3,
# against cuDNN in float32) and surrogate gradients (the same ATan formula in another order) differ by
# rounding only; relative to each tensor's largest element, 1e-4 leaves room for that and still catches a
# wrong padding, a lost spike or another surrogate, which are off by far more.
REPLACEMENT_RTOL = 1e-4
# The whole network, in eval mode from freshly initialised BatchNorm statistics: there a rounding
# difference flips a few spikes and moves the output by about 1e-5 of its largest element (measured on the
# sddpm-cifar10 network, batch 2, with every convolution weight perturbed by one float32 rounding step).
# In train mode no tolerance can tell rounding from an error: the batch statistics pass every flipped
# spike on to every membrane, and the flips cascade until the outputs differ by 20-55% of their norm.
NETWORK_RTOL = 1e-4


def bfloat16_autocast(device):
    """As spikekern.train runs: bfloat16 autocast on a GPU, float32 on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class DiffusionVariant:
    model: torch.nn.Module  # (x [B, C, H, W], t [B]) -> [B, C, H, W]
    config: object  # the SpikingUNetConfig of the network that runs
    reset: Callable  # frees what the neurons hold between calls, as users do before each batch
    detail: str  # how it ran


def spikekern_network(config, device):
    """``SpikingUNet(config)`` on ``device``, the convolutions after spiking neurons SpikeConv2d where
    spikekern.train puts them by default: on a GPU (on the CPU their reference path unpacks the bits again
    and only adds work)."""
    models = pytest.importorskip("spikekern.models")
    # Seeded and built on the CPU, so that every variant starts from the same weights (the ANN's layout too).
    torch.manual_seed(0)
    return models.SpikingUNet(config, spike_conv=device.type == "cuda").to(device)


def spikekern_variant(size, device):
    model = spikekern_network(size.config(), device)
    layers = "SpikeConv2d" if device.type == "cuda" else "time-folded nn.Conv2d"
    detail = f"spikekern IFNode(step_mode='m', keep_state=False), {layers} after each neuron"
    return DiffusionVariant(model, model.config, lambda: None, detail)


def ann_variant(size, device):
    model = spikekern_network(size.config(neuron="relu"), device)
    return DiffusionVariant(model, model.config, lambda: None, "the same layout with ReLU, T = 1, nn.Conv2d")


class ResetBeforeEachCall(torch.nn.Module):
    """SpikingJelly's neurons carry their membrane from one call into the next; its users reset the
    network before each batch, so the twin does so before every call, in training and in sampling alike."""

    def __init__(self, net, reset_net):
        super().__init__()
        self.net = net
        self._reset_net = reset_net

    def reset(self):
        self._reset_net(self.net)

    def forward(self, x, t):
        self.reset()
        return self.net(x, t)


def neuron_conv_units(model):
    """(name, module) of every ``NeuronConvBN``: in SDDPM's U-Net each neuron, and each convolution reading
    spikes, is the ``neuron`` or the ``conv`` of one."""
    sddpm = pytest.importorskip("spikekern.models.sddpm")
    return [(name, unit) for name, unit in model.named_modules() if isinstance(unit, sddpm.NeuronConvBN)]


def replaced_pairs(model, twin_net):
    """(name, spikekern module, its SpikingJelly replacement) for every replaced module."""
    return [
        (f"{name}.{part}", getattr(unit, part), getattr(twin_net.get_submodule(name), part))
        for name, unit in neuron_conv_units(model)
        for part in ("neuron", "conv")
    ]


def spikingjelly_twin(model):
    """A copy of ``model`` with every spikekern IF neuron replaced by SpikingJelly's ``IFNode`` with the
    same settings and every convolution reading spikes by SpikingJelly's time-folded ``Conv2d`` with the
    same weights, wrapped to reset before each call."""
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    spikekern_nn = pytest.importorskip("spikekern.nn")
    spikekern_surrogate = pytest.importorskip("spikekern.surrogate")
    twin_net = copy.deepcopy(model)
    for name, original in neuron_conv_units(model):
        node, conv, unit = original.neuron, original.conv, twin_net.get_submodule(name)
        surrogate_name, alpha = spikekern_surrogate.surrogate_spec(node.surrogate_function)
        assert surrogate_name == "atan", f"{name}.neuron: SDDPM's surrogate is ATan, found {surrogate_name}"
        unit.neuron = neuron.IFNode(
            v_threshold=node.v_threshold, v_reset=node.v_reset, surrogate_function=surrogate.ATan(alpha=alpha),
            detach_reset=node.detach_reset, step_mode="m",
        )  # fmt: skip
        unit.conv = layer.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, step_mode="m",
        ).to(conv.weight.device)  # fmt: skip
        unit.conv.load_state_dict(conv.state_dict())
    # A spikekern neuron or spike layer left over would make this a comparison with a half-built twin.
    spikekern_layers = (spikekern_nn.BaseNode, spikekern_nn.SpikeConv2d)
    left = [name for name, module in twin_net.named_modules() if isinstance(module, spikekern_layers)]
    assert not left, f"not replaced in the SpikingJelly twin: {left}"
    return ResetBeforeEachCall(twin_net, functional.reset_net)


def fastest_spikingjelly_neurons(net, device, kind="if", node_text="IFNode(step_mode='m')"):
    """Puts the SpikingJelly neurons of ``net`` (of ``kind``, "if" or "lif") on SpikingJelly's fastest path
    for the measured dtype; returns how they run.

    Under bfloat16 autocast a node holds its membrane in its input's dtype, and SpikingJelly then falls back
    to its PyTorch reference; ``prepare_model_for_precision`` with a float32 neuron state is its way to keep
    bfloat16 input on its fused (Triton) kernels.
    """
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    implementation = functional.neuron_implementation(kind, device)["implementation"]
    if device.type != "cuda":
        return f"SpikingJelly {node_text}: {implementation}"
    precision = pytest.importorskip("spikingjelly.activation_based.precision")
    config = precision.PrecisionConfig(mode="bf16", neuron_storage="fp32")
    try:
        precision.prepare_model_for_precision(net, device, config)
    except RuntimeError as error:
        return (
            f"SpikingJelly {node_text}: {implementation} for float32 input, its PyTorch reference for bfloat16 "
            f"(PrecisionConfig(neuron_storage='fp32') refused: {error})"
        )
    return (
        f"SpikingJelly {node_text} with PrecisionConfig(mode='bf16', neuron_storage='fp32'): Triton, float32 "
        "membrane for bfloat16 input"
    )


def spikingjelly_variant(size, device):
    twin = spikingjelly_twin(spikekern_network(size.config(), device))
    detail = f"{fastest_spikingjelly_neurons(twin.net, device)}, layer.Conv2d(step_mode='m')"
    return DiffusionVariant(twin, twin.net.config, twin.reset, detail)


VARIANTS = {SPIKEKERN: spikekern_variant, SPIKINGJELLY: spikingjelly_variant, ANN: ann_variant}


def output_and_gradients(module, x, grad_seed):
    """``module(x)`` and the gradients, for its input and its parameters, of a random projection of it."""
    x = x.detach().requires_grad_()
    y = module(x)
    generator = torch.Generator(y.device).manual_seed(grad_seed)
    grad_y = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return y, torch.autograd.grad(y, (x, *module.parameters()), grad_y)


def assert_same_replacements(model, twin, x, t):
    """Every replaced module, fed what its spikekern original gets inside the network in train mode
    (realistic spike rates): the same spikes, convolution outputs and gradients."""
    pairs = replaced_pairs(model, twin.net)
    inputs = {}

    def keep_input(name):
        def hook(_, args):
            inputs[name] = args[0].detach()

        return hook

    hooks = [original.register_forward_pre_hook(keep_input(name)) for name, original, _ in pairs]
    with torch.no_grad():
        model.train()(x, t)
    for hook in hooks:
        hook.remove()
    for index, (name, original, replacement) in enumerate(pairs):
        twin.reset()
        (y, gradients), (expected_y, expected_gradients) = (
            output_and_gradients(module, inputs[name], grad_seed=index) for module in (replacement, original)
        )
        if name.endswith(".neuron"):
            torch.testing.assert_close(y, expected_y, rtol=0, atol=0, msg=lambda m, name=name: f"{name} spikes: {m}")
        else:
            assert_close_to_largest(y, expected_y, REPLACEMENT_RTOL, f"{name} output")
        assert len(gradients) == len(expected_gradients), f"{name}: the replacement has other parameters"
        for which, gradient, expected in zip(("input", "weight", "bias"), gradients, expected_gradients):
            assert_close_to_largest(gradient, expected, REPLACEMENT_RTOL, f"{name} gradient of the {which}")


def assert_same_network_output(model, twin, x, t):
    """The whole twin: in eval mode, from fresh BatchNorm statistics, spikekern's output (NETWORK_RTOL);
    in train mode, where spike rates are realistic, a second call's output equal to the first's, since
    every call must start from rest whatever the previous one left in SpikingJelly's membranes."""
    with torch.no_grad():
        expected = model.eval()(x, t)
        assert_close_to_largest(twin.eval()(x, t), expected, NETWORK_RTOL, "network output in eval mode")
        first = twin.train()(x, t)
        torch.testing.assert_close(twin(x, t), first, rtol=0, atol=0, msg=lambda m: f"a second call differs: {m}")


@pytest.fixture(scope="session")
def twin_checked(bench_device):
    """Once per session, before any case is timed: the SpikingJelly twin of the measured network computes
    what spikekern's does, in float32 on a small batch (a fast wrong kernel cannot win)."""
    model = spikekern_network(HEADLINE.config(), bench_device)
    twin = spikingjelly_twin(model)
    fastest_spikingjelly_neurons(twin.net, bench_device)  # the kernels the twin is measured with
    config = model.config
    generator = torch.Generator(bench_device).manual_seed(0)
    shape = (CHECK_BATCH, config.image_channels, config.image_size, config.image_size)
    x = torch.randn(shape, generator=generator, device=bench_device)
    t = torch.randint(0, 1000, (CHECK_BATCH,), generator=generator, device=bench_device)
    with exact_float32():
        # The network first: the replacements' train-mode pass moves spikekern's BatchNorm statistics.
        assert_same_network_output(model, twin, x, t)
        assert_same_replacements(model, twin, x, t)


def build_variant(request, variant, size, device):
    if variant in SPIKING_VARIANTS:
        try:
            request.getfixturevalue("twin_checked")
        except pytest.skip.Exception:
            # Without SpikingJelly there is no twin to check, nor one for spikekern to win against.
            if variant == SPIKINGJELLY:
                raise
    return VARIANTS[variant](size, device)


def training_batch(config, batch, device, num_steps):
    """Images in [-1, 1], diffusion steps and noise, the same for every variant (seed 0)."""
    generator = torch.Generator(device).manual_seed(0)
    shape = (batch, config.image_channels, config.image_size, config.image_size)
    x0 = torch.rand(shape, generator=generator, device=device) * 2 - 1
    t = torch.randint(0, num_steps, (batch,), generator=generator, device=device)
    noise = torch.randn(shape, generator=generator, device=device)
    return x0, t, noise


def training_step_memory(measured, pipeline, x0, step, device, **loss_options):
    """(peak bytes of one ``step``, bytes autograd saves for backward in one loss) of ``measured``."""
    # The state the last call left would be freed inside the measured step, hiding its share of the peak.
    measured.reset()
    peak_bytes = peak_memory_bytes(step, device)
    with bfloat16_autocast(device), SavedActivationMeter() as saved:
        held_loss = pipeline.loss(measured.model, x0, **loss_options)  # held while the meter reads its graph
    saved_bytes = saved.nbytes
    del held_loss  # what runs next needs that memory
    return peak_bytes, saved_bytes


def throughput_metrics(timer, rounds, batch, **measurements):
    """The timing statistics of the last ``rounds`` calls, images/s at ``batch`` images a call, and
    ``measurements``: what every diffusion case records besides its case."""
    stats = timer.stats(rounds)
    return {**asdict(stats), "images_per_s": batch / (stats.median_ms * 1e-3), **measurements}


def case_record(request, kind, size, variant, measured, headline, provider=None):
    spiking = size.config()
    return {
        "suite": "diffusion_models",
        "test": request.node.nodeid,
        "kind": kind,
        "headline": headline,
        "case": size.preset,
        # The spiking network's [T, B, C, H, W]; the ANN runs the same images once (its config says T = 1).
        "shape": [size.time_steps, size.batch, spiking.image_channels, spiking.image_size, spiking.image_size],
        "config": measured.config.to_dict(),
        "provider": provider or variant,
        "provider_detail": measured.detail,
    }


def parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())


TRAINING_CASES = [
    *(pytest.param(HEADLINE, variant, id=f"sddpm-train-{variant}") for variant in VARIANTS),
    *(
        pytest.param(size, variant, id=f"sddpm-scaling-{size.label()}-{variant}")
        for size in SCALING
        for variant in SPIKING_VARIANTS
    ),
]


@pytest.mark.parametrize(("size", "variant"), TRAINING_CASES)
def test_sddpm_training_step(benchmark, request, bench_device, bench_timing, bench_results, size, variant):
    trainer_module = pytest.importorskip("spikekern.train")
    pipelines = pytest.importorskip("spikekern.pipelines")
    measured = build_variant(request, variant, size, bench_device)
    config = size.config()
    pipeline = pipelines.SDDPMPipeline(config)
    x0, t, noise = training_batch(config, size.batch, bench_device, pipeline.diffusion_steps)
    trainer = trainer_module.Trainer(
        pipeline, measured.model, lr=LEARNING_RATE, ema_decay=EMA_DECAY, grad_clip=GRAD_CLIP, amp=True,
        device=bench_device,
    )  # fmt: skip

    def step():
        return trainer.step(x0, t=t, noise=noise)

    timer = time_benchmark(benchmark, bench_timing, bench_device, step, f"sddpm training step {size.label()}")

    peak_bytes, saved_bytes = training_step_memory(measured, pipeline, x0, step, bench_device, t=t, noise=noise)
    headline = size == HEADLINE
    profile = op_profile(step, bench_device) if headline else None
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    metrics = throughput_metrics(
        timer, bench_timing.rounds, size.batch, peak_memory_bytes=peak_bytes, saved_bytes=saved_bytes,
        parameter_count=parameter_count(measured.model), profile=profile,
    )  # fmt: skip
    benchmark.extra_info.update(
        bench_results.append({**case_record(request, "train", size, variant, measured, headline), **metrics})
    )


SAMPLING_CASES = [
    *(pytest.param(variant, False, id=f"sddpm-sample-{variant}") for variant in VARIANTS),
    # spikekern's own networks with the sampler's default on GPUs: the denoiser replayed from CUDA graphs.
    *(pytest.param(variant, True, id=f"sddpm-sample-{variant}-cuda-graphs") for variant in (SPIKEKERN, ANN)),
]


@pytest.mark.parametrize(("variant", "cuda_graphs"), SAMPLING_CASES)
def test_sddpm_sampling(benchmark, request, bench_device, bench_timing, bench_results, variant, cuda_graphs):
    pipelines = pytest.importorskip("spikekern.pipelines")
    if cuda_graphs and bench_device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    measured = build_variant(request, variant, HEADLINE, bench_device)
    pipeline = pipelines.SDDPMPipeline(HEADLINE.config())
    model = measured.model.eval()

    def sample():
        generator = torch.Generator(bench_device).manual_seed(0)  # every call draws the same images
        with bfloat16_autocast(bench_device):
            return pipeline.sample(
                model, HEADLINE.batch, sampler="ddim", steps=SAMPLING_STEPS, generator=generator, device=bench_device,
                cuda_graphs=cuda_graphs,
            )  # fmt: skip

    # One call runs the network SAMPLING_STEPS times: a tenth of the rounds, one warm-up.
    timing = replace(bench_timing, warmup=min(bench_timing.warmup, 1), rounds=max(1, bench_timing.rounds // 10))
    group = f"sddpm DDIM-{SAMPLING_STEPS} sampling {HEADLINE.label()}"
    timer = time_benchmark(benchmark, timing, bench_device, sample, group)

    measured.reset()
    peak_bytes = peak_memory_bytes(sample, bench_device)
    profile = op_profile(sample, bench_device)
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    metrics = throughput_metrics(
        timer, timing.rounds, HEADLINE.batch, sampling_steps=SAMPLING_STEPS, peak_memory_bytes=peak_bytes,
        parameter_count=parameter_count(model), profile=profile,
    )  # fmt: skip
    benchmark.extra_info.update(
        bench_results.append({
            **case_record(request, "sample", HEADLINE, variant, measured, True,
                          provider=f"{variant}-cuda-graphs" if cuda_graphs else variant),
            **metrics,
        })  # fmt: skip
    )
