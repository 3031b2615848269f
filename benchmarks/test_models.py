"""Whole models, one training step (forward + backward) each, as their users write them and after
``spikekern.convert``: a SpikingJelly spiking ResNet-18 and snnTorch's convolutional tutorial network.
README.md explains the variants, the metrics and how to run it."""

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import pytest
import torch

from bench_utils import SavedActivationMeter, peak_memory_bytes, time_benchmark

NUM_CLASSES = 10
BASELINE = "original"  # the model as its users write it; the other variants start from a copy of it


@dataclass(frozen=True)
class ModelSize:
    input_shape: tuple  # [T, B, C, H, W]
    resnet_width: int  # channels of the ResNet's first stage; they double in each later stage


# The issue's case: T = 4 steps of batch-64 32x32 RGB images, through ResNet-18's widths. The CPU size
# only keeps the harness testable without a GPU.
GPU_SIZE = ModelSize(input_shape=(4, 64, 3, 32, 32), resnet_width=64)
CPU_SIZE = ModelSize(input_shape=(2, 2, 3, 16, 16), resnet_width=4)

RESNET18_BLOCKS_PER_STAGE = (2, 2, 2, 2)

# snnTorch tutorial 7 ("Convolutional SNNs"): its leak and surrogate slope.
SNNTORCH_BETA = 0.5
SNNTORCH_SURROGATE_SLOPE = 25

# A converted model runs the same convolutions on the same spikes, so its outputs match the original's
# to rounding; gradients may differ in the last bits (the surrogate's formula, the order of sums) and
# get summed through every layer. A wrong surrogate or a flipped spike is far outside these.
OUTPUT_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
GRADIENT_RTOL = 1e-4  # relative to each gradient's largest element


@dataclass
class ModelVariant:
    run: Callable  # x_seq [T, B, C, H, W] -> [T, B, classes], from the neurons' present state
    reset: Callable  # the neurons back to their initial state, as users do before each batch
    parameters: tuple  # what backward differentiates
    detail: str  # how it ran

    def forward(self, x_seq):
        self.reset()
        return self.run(x_seq)


def conv_bn(layer, in_channels, out_channels, kernel_size, stride):
    return torch.nn.Sequential(
        layer.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False, step_mode="m"
        ),
        layer.BatchNorm2d(out_channels, step_mode="m"),
    )


class SpikingBasicBlock(torch.nn.Module):
    """The basic block of SpikingJelly's spiking ResNet (activation_based/model/spiking_resnet.py):
    conv-BN-LIF, conv-BN, the shortcut added, LIF."""

    def __init__(self, layer, neuron, in_channels, out_channels, stride):
        super().__init__()
        self.conv_bn1 = conv_bn(layer, in_channels, out_channels, 3, stride)
        self.lif1 = neuron.LIFNode(step_mode="m")
        self.conv_bn2 = conv_bn(layer, out_channels, out_channels, 3, 1)
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = conv_bn(layer, in_channels, out_channels, 1, stride) if reshapes else torch.nn.Identity()
        self.lif2 = neuron.LIFNode(step_mode="m")

    def forward(self, x_seq):
        return self.lif2(self.conv_bn2(self.lif1(self.conv_bn1(x_seq))) + self.shortcut(x_seq))


def spikingjelly_resnet18(size):
    """SpikingJelly's spiking ResNet-18 with the CIFAR stem (a 3x3 convolution, no pooling), built from
    its layers: its model zoo imports torchvision."""
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    channels = size.input_shape[2]
    width = size.resnet_width
    modules = [*conv_bn(layer, channels, width, 3, 1), neuron.LIFNode(step_mode="m")]
    for stage, blocks in enumerate(RESNET18_BLOCKS_PER_STAGE):
        out_channels = width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            modules.append(SpikingBasicBlock(layer, neuron, width, out_channels, stride))
            width = out_channels
    modules += [
        layer.AdaptiveAvgPool2d(1, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(width, NUM_CLASSES, step_mode="m"),
    ]
    return torch.nn.Sequential(*modules)


def snntorch_convnet(size):
    """Tutorial 7's network, taking the benchmark's RGB images: 12 5x5 filters, 2x2 max pool, Leaky;
    64 5x5 filters, 2x2 max pool, Leaky; a linear layer to the classes, Leaky returning its membrane."""
    snn = pytest.importorskip("snntorch")
    # snnTorch's reset zeroes every Leaky ever built in the process (SpikingNeuron.instances); forget
    # the earlier cases' so that it resets this network's neurons only, as in a user's script.
    snn.SpikingNeuron.init()
    _, _, channels, height, width = size.input_shape
    pooled_height, pooled_width = (((side - 4) // 2 - 4) // 2 for side in (height, width))

    def leaky(**options):
        spike_grad = snn.surrogate.fast_sigmoid(slope=SNNTORCH_SURROGATE_SLOPE)
        return snn.Leaky(beta=SNNTORCH_BETA, spike_grad=spike_grad, init_hidden=True, **options)

    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 12, 5), torch.nn.MaxPool2d(2), leaky(),
        torch.nn.Conv2d(12, 64, 5), torch.nn.MaxPool2d(2), leaky(),
        torch.nn.Flatten(), torch.nn.Linear(64 * pooled_height * pooled_width, NUM_CLASSES), leaky(output=True),
    )  # fmt: skip


def converted_copy(net):
    """``spikekern.convert`` of a copy, and how it went."""
    spikekern = pytest.importorskip("spikekern")
    converted = copy.deepcopy(net)
    # Spike-driven convolutions are not in spikekern yet: the neurons are what is converted.
    report = spikekern.convert(converted, spike_layers=False)
    # A neuron left unconverted would make this a comparison with a half-converted model.
    assert report.replaced and not report.left, str(report)
    kinds = sorted({new.rsplit(".", 1)[1] for _, _, new in report.replaced})
    return converted, f"spikekern.convert: {len(report.replaced)} neurons -> spikekern.nn.{'/'.join(kinds)}"


def spikingjelly_variant(net, detail):
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    # SpikingJelly's reset_net for the converted network too: its neurons keep SpikingJelly's reset().
    return ModelVariant(net, partial(functional.reset_net, net), tuple(net.parameters()), detail)


def spikingjelly_original(net):
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    device = next(net.parameters()).device
    implementation = functional.neuron_implementation("lif", device)["implementation"]
    return spikingjelly_variant(net, f"SpikingJelly LIFNode(step_mode='m'): {implementation}")


def spikingjelly_converted(net):
    return spikingjelly_variant(*converted_copy(net))


def snntorch_loop(net, reset, detail):
    """Tutorial 7's forward pass: reset the hidden states, call the network once per step, keep the
    output layer's membrane."""

    def run(x_seq):
        return torch.stack([net(x)[1] for x in x_seq])

    return ModelVariant(run, partial(reset, net), tuple(net.parameters()), detail)


def snntorch_original(net):
    utils = pytest.importorskip("snntorch.utils")
    return snntorch_loop(net, utils.reset, "snn.Leaky(init_hidden=True), one call per step")


def snntorch_converted(net):
    spikekern = pytest.importorskip("spikekern")
    converted, detail = converted_copy(net)
    # snnTorch's reset knows only its own classes; spikekern's resets both.
    return snntorch_loop(converted, spikekern.functional.reset_net, f"{detail}, one call per step")


class TimeFoldedSequential(torch.nn.Sequential):
    """A converted snnTorch ``Sequential`` taking the whole ``[T, B, *]`` sequence in one call: the
    neurons (the modules with a ``step_mode``, set to 'm') take it as it is, the stateless layers see
    time folded into the batch."""

    def forward(self, x_seq):
        x = x_seq
        for module in self:
            x = module(x) if hasattr(module, "step_mode") else module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return x


def snntorch_converted_multistep(net):
    spikekern = pytest.importorskip("spikekern")
    converted, detail = converted_copy(net)
    sequence_net = TimeFoldedSequential(*converted)  # the same modules, so the same parameters
    spikekern.functional.set_step_mode(sequence_net, "m")  # only the neurons have a step mode

    def run(x_seq):
        _, membrane_seq = sequence_net(x_seq)
        return membrane_seq

    detail += ", restructured: time folded into the batch, Leaky(step_mode='m'), one call per sequence"
    reset = partial(spikekern.functional.reset_net, sequence_net)
    return ModelVariant(run, reset, tuple(sequence_net.parameters()), detail)


@dataclass(frozen=True)
class BenchModel:
    build: Callable  # ModelSize -> the original network
    variants: dict  # name -> (original network -> ModelVariant); BASELINE's is the network itself


MODELS = {
    "spikingjelly-resnet18": BenchModel(
        spikingjelly_resnet18, {BASELINE: spikingjelly_original, "converted": spikingjelly_converted}
    ),
    "snntorch-convnet": BenchModel(
        snntorch_convnet,
        {
            BASELINE: snntorch_original,
            "converted": snntorch_converted,
            "converted-multistep": snntorch_converted_multistep,
        },
    ),
}


def training_step(variant, x_seq, labels):
    """The output sequence and, for every parameter, the gradient of the cross entropy of the output
    averaged over time."""
    output_seq = variant.forward(x_seq)
    loss = torch.nn.functional.cross_entropy(output_seq.mean(0), labels)
    # autograd.grad rather than .backward(): nothing accumulates into .grad between calls
    return output_seq, torch.autograd.grad(loss, variant.parameters)


def assert_same_training_step(actual, expected):
    (output_seq, gradients), (expected_output_seq, expected_gradients) = actual, expected
    torch.testing.assert_close(output_seq, expected_output_seq, **OUTPUT_TOLERANCE)
    assert len(gradients) == len(expected_gradients)
    for index, (gradient, expected_gradient) in enumerate(zip(gradients, expected_gradients)):
        scale = expected_gradient.abs().max().item()
        torch.testing.assert_close(
            gradient, expected_gradient, rtol=GRADIENT_RTOL, atol=GRADIENT_RTOL * scale,
            msg=lambda message, index=index: f"gradient of parameter {index}: {message}",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "variant"),
    [pytest.param(model, variant, id=f"{model}-{variant}") for model in MODELS for variant in MODELS[model].variants],
)
def test_model_training_step(benchmark, request, bench_device, bench_timing, bench_results, model, variant):
    size = GPU_SIZE if bench_device.type == "cuda" else CPU_SIZE
    torch.manual_seed(0)  # every variant of a model starts from the same weights
    original_net = MODELS[model].build(size).to(bench_device)
    generator = torch.Generator(bench_device).manual_seed(0)
    x_seq = torch.randn(size.input_shape, generator=generator, device=bench_device)
    labels = torch.randint(NUM_CLASSES, size.input_shape[1:2], generator=generator, device=bench_device)
    variants = MODELS[model].variants
    # Before the original runs: a network whose neurons hold a graph in their state cannot be copied.
    measured = variants[variant](original_net)
    if variant != BASELINE:
        original = variants[BASELINE](original_net)
        assert_same_training_step(training_step(measured, x_seq, labels), training_step(original, x_seq, labels))

    def step():
        return training_step(measured, x_seq, labels)

    timer = time_benchmark(benchmark, bench_timing, bench_device, step, f"{model} fwd+bwd {list(size.input_shape)}")

    # The state the last call left would be freed inside the measured step, hiding its share of the peak.
    measured.reset()
    peak_bytes = peak_memory_bytes(step, bench_device)
    with SavedActivationMeter() as saved:
        _held_output = measured.forward(x_seq)  # held while the meter reads what its graph keeps
    saved_bytes = saved.nbytes
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    metrics = {
        **asdict(timer.stats(bench_timing.rounds)),
        "peak_memory_bytes": peak_bytes,
        "saved_bytes": saved_bytes,
        "parameter_count": sum(parameter.numel() for parameter in measured.parameters),
    }
    benchmark.extra_info.update(
        bench_results.append(
            {
                "suite": "models",
                "test": request.node.nodeid,
                "case": model,
                "shape": list(size.input_shape),
                "provider": variant,
                "provider_detail": measured.detail,
                **metrics,
            }
        )
    )
