"""FSDDIM's spiking U-Net and Spiking-Diffusion's stage 2 (the absorbing-state denoiser SDID on the frozen
VQ-SVAE): one training step and sampling, for spikekern's network and the same network built from
SpikingJelly 2.0 layers, side by side. It follows test_diffusion_models.py (the SDDPM U-Net) and reuses its
helpers; README.md explains the variants, the metrics and how to run it."""

import copy
import functools
from dataclasses import dataclass, replace

import pytest
import torch

from bench_utils import (
    assert_close_to_largest, benchmark_device, exact_float32, peak_memory_bytes,
    time_benchmark,
)  # fmt: skip
from test_diffusion_models import (
    CHECK_BATCH, EMA_DECAY, GRAD_CLIP, LEARNING_RATE, NETWORK_RTOL, REPLACEMENT_RTOL, SPIKEKERN, SPIKINGJELLY,
    DiffusionVariant, assert_same_network_output, bfloat16_autocast, fastest_spikingjelly_neurons,
    output_and_gradients,
    parameter_count, throughput_metrics, training_batch, training_step_memory,
)  # fmt: skip

SUITE = "diffusion_families"
FSDDIM = "fsddim"
SPIKING_DIFFUSION = "spiking-diffusion"

# FSDDIM's neuron (snnTorch's Leaky: u_t = beta u_{t-1} (1 - o_{t-1}) + I_t, o_t = u_t > 1) is SpikingJelly's
# LIFNode(tau = 1 / (1 - beta), decay_input=False, hard reset to 0, detached reset): H_t = V_{t-1} - V_{t-1} / tau
# + X_t, V_t = 0 after a spike. The two round differently (beta * u against u - u / tau) and SpikingJelly fires
# on H >= 1 where Leaky fires on u > 1, so a neuron whose membrane lands within rounding of the threshold may
# fire in one and not in the other, and from there on differ. Where they first differ, spikekern's membrane
# must lie within this much (relative to the largest input, at least 1, per step) of the threshold: the float32
# tolerance test_spike_ops.py states for its fused block. A wrong tau, reset or input decay moves membranes by
# a tenth or more and fails it.
LEAKY_FLIP_MARGIN = 1e-5
# Membranes differ by a few float32 rounding steps, so a neuron flips only where its membrane lies that close to
# the threshold: on the CPU, the fsddim-cifar10 check (batch 2, T = 8) flipped 1 of its 4.2M neurons (4e-6 of
# its layer). A thousandth of a layer is far above that and far below what a wrong twin flips.
LEAKY_MAX_FLIPPED_FRACTION = 1e-3


@dataclass(frozen=True)
class FamilySize:
    family: str
    preset: str
    batch: int
    time_steps: int
    overrides: tuple = ()  # (field, value) pairs of the preset's config changed besides T: the CPU's smaller nets

    def config(self):
        return FAMILIES[self.family].preset_config(self.preset, time_steps=self.time_steps, **dict(self.overrides))

    def pipeline(self):
        return FAMILIES[self.family].pipeline(self.config())

    def label(self):
        image_size = dict(self.overrides).get("image_size")
        resolution = "" if image_size is None else f"-{image_size}px"  # else the preset's
        network = self.preset.removeprefix(self.family + "-")
        return f"{self.family}-{network}{resolution}-T{self.time_steps}-b{self.batch}"


class FSDDIMFamily:
    """FSDDIM (spikekern.pipelines.FSDDIMPipeline): v-prediction with synaptic current learning, DDIM sampling
    in the per-step domain."""

    name = FSDDIM

    @staticmethod
    def preset_config(preset, **overrides):
        return pytest.importorskip("spikekern.models.fsddim").preset_config(preset, **overrides)

    @staticmethod
    def pipeline(config):
        return pytest.importorskip("spikekern.pipelines").FSDDIMPipeline(config)

    @staticmethod
    def training_batch(pipeline, batch, device):
        """Images, and the loss options (a fresh dict per step): the diffusion steps and the noise."""
        x0, t, noise = training_batch(pipeline.model_config, batch, device, pipeline.diffusion_steps)
        return x0, lambda: {"t": t, "noise": noise}

    @staticmethod
    def sampling_steps(pipeline):
        return FSDDIM_SAMPLING_STEPS

    @staticmethod
    def sampler(pipeline):
        return f"DDIM-{FSDDIM_SAMPLING_STEPS}, eta 0"

    @staticmethod
    def sample(pipeline, model, batch, generator, device):
        return pipeline.sample(
            model, batch, sampler="ddim", steps=FSDDIM_SAMPLING_STEPS, generator=generator, device=device
        )  # fmt: skip

    @staticmethod
    def denoiser_input(pipeline, model, images):
        return images

    decode = None  # the denoiser's output is the image

    @staticmethod
    def neuron_text(config):
        return f"Leaky(beta={config.beta}, reset 'zero', triangle surrogate, keep_state=False)"

    @staticmethod
    def twin_neuron_text(config):
        return (
            f"LIFNode(tau=1/(1-{config.beta}), decay_input=False, PiecewiseQuadratic(alpha=2): twice the triangle's "
            "gradient, detach_reset=True, step_mode='m')"
        )


class SpikingDiffusionFamily:
    """Spiking-Diffusion's stage 2 (spikekern.pipelines.SpikingDiffusionPipeline, stage "diffusion"): the
    absorbing loss of the denoiser on the frozen VQ-SVAE's codes, sampling by unmasking then the VQ decode."""

    name = SPIKING_DIFFUSION

    @staticmethod
    def preset_config(preset, **overrides):
        return pytest.importorskip("spikekern.models.spiking_diffusion").preset_config(preset, **overrides)

    @staticmethod
    def pipeline(config):
        return pytest.importorskip("spikekern.pipelines").SpikingDiffusionPipeline(config, stage="diffusion")

    @staticmethod
    def training_batch(pipeline, batch, device):
        """Images, and the loss options (a fresh dict per step): the diffusion steps (1..K) and a generator
        seeded alike for every step, so that every step masks the same tokens."""
        x0, t, _ = training_batch(pipeline.model_config, batch, device, pipeline.diffusion.num_steps)
        return x0, lambda: {"t": t + 1, "generator": torch.Generator(device).manual_seed(0)}

    @staticmethod
    def sampling_steps(pipeline):
        return pipeline.diffusion.num_steps  # one denoiser call per token

    @staticmethod
    def sampler(pipeline):
        steps, temperature = pipeline.diffusion.num_steps, pipeline.sampling["temperature"]
        return f"unmasking over {steps} steps at temperature {temperature:g}, then the VQ-SVAE decode"

    @staticmethod
    def sample(pipeline, model, batch, generator, device):
        return pipeline.sample(model, batch, generator=generator, device=device)  # its default temperature

    @staticmethod
    def denoiser_input(pipeline, model, images):
        return model.vq.encode(pipeline.to_model_scale(images))

    @staticmethod
    def decode(model, tokens):
        return model.vq.decode_indices(tokens)

    @staticmethod
    def neuron_text(config):
        return "LIFNode(tau=2, decay_input, ATan, keep_state=False)"

    @staticmethod
    def twin_neuron_text(config):
        return "LIFNode(tau=2, decay_input, ATan, step_mode='m')"


FAMILIES = {family.name: family for family in (FSDDIMFamily, SpikingDiffusionFamily)}

# The paper presets at their T. FSDDIM at batch 64, not the code's 256 (over 4 GPUs): SpikingJelly's network
# saves 530 MiB per image for backward at T = 8 in float32 (measured on the CPU), so 64 images hold 33 GiB and
# the step peaks well within an 80 GB H100, where 128 (66 GiB before the step's transients) might not.
# Spiking-Diffusion at the paper's batch 32 (30 MiB per image). The CPU sizes only keep the harness testable
# without a GPU: the digits presets a few channels wide on 8x8 images, T = 2, batch 2, two DDIM steps
# (Spiking-Diffusion unmasks its 2x2 codes in four steps).
if benchmark_device().type == "cuda":
    SIZES = (
        FamilySize(FSDDIM, "fsddim-cifar10", batch=64, time_steps=8),
        FamilySize(SPIKING_DIFFUSION, "spiking-diffusion-mnist", batch=32, time_steps=16),
    )
    FSDDIM_SAMPLING_STEPS = 50
else:
    SIZES = (
        FamilySize(FSDDIM, "digits", 2, 2, (("base_channels", 4), ("num_res_blocks", 1), ("image_size", 8))),
        FamilySize(
            SPIKING_DIFFUSION, "digits", 2, 2,
            (("base_channels", 2), ("embedding_dim", 4), ("codebook_size", 8), ("image_size", 8)),
        ),
    )  # fmt: skip
    FSDDIM_SAMPLING_STEPS = 2
SIZE_OF = {size.family: size for size in SIZES}


def spikekern_network(size, device):
    """The family's stage model on ``device``, SpikeConv2d after spiking neurons where spikekern.train puts
    them by default: on a GPU. Seeded and built on the CPU, so that both variants start from the same weights."""
    torch.manual_seed(0)
    return size.pipeline().build_model(spike_conv=device.type == "cuda").to(device)


def spikekern_variant(size, device):
    model = spikekern_network(size, device)
    layers = "SpikeConv2d" if device.type == "cuda" else "time-folded nn.Conv2d"
    detail = f"spikekern {FAMILIES[size.family].neuron_text(model.config)}, {layers} for each conv reading spikes"
    return DiffusionVariant(model, model.config, lambda: None, detail)


def spike_reading_convolutions(size):
    """Names of the convolutions that read spikes: those the family makes SpikeConv2d when asked to, whichever
    layer ``spikekern_network`` built there."""
    spikekern_nn = pytest.importorskip("spikekern.nn")
    reference = size.pipeline().build_model(spike_conv=True)
    return {name for name, module in reference.named_modules() if isinstance(module, spikekern_nn.SpikeConv2d)}


def spikingjelly_neuron(name, node):
    """SpikingJelly's multi-step node computing what spikekern's ``node`` computes (the module docstring of
    each family's model says which neuron it is), and the factor by which its surrogate gradient is larger."""
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    spikekern_nn = pytest.importorskip("spikekern.nn")
    spikekern_surrogate = pytest.importorskip("spikekern.surrogate")
    if isinstance(node, spikekern_nn.Leaky):
        surrogate_name, alpha = spikekern_nn.leaky.snntorch_surrogate_spec(node.spike_grad)
        assert (surrogate_name, node.reset_mechanism) == ("triangle", "zero"), f"{name}: not FSDDIM's neuron"
        # SpikingJelly's fused kernels take none of its surrogates with the triangle's gradient, 1 - alpha |x|;
        # PiecewiseQuadratic(alpha), alpha - alpha^2 |x|, has its support and shape at alpha times its height
        # (2x for FSDDIM), and the same cost. Taking a custom surrogate would put the twin on its slow path.
        replacement = neuron.LIFNode(
            tau=1 / (1 - node.beta.item()), decay_input=False, v_threshold=node.threshold.item(), v_reset=0.0,
            surrogate_function=surrogate.PiecewiseQuadratic(alpha=alpha), detach_reset=True, step_mode="m",
        )  # fmt: skip
        return replacement, alpha
    assert type(node) is spikekern_nn.LIFNode, f"{name}: no SpikingJelly twin for {type(node).__name__}"
    surrogate_name, alpha = spikekern_surrogate.surrogate_spec(node.surrogate_function)
    assert surrogate_name == "atan", f"{name}: Spiking-Diffusion's surrogate is ATan, found {surrogate_name}"
    replacement = neuron.LIFNode(
        tau=node.tau, decay_input=node.decay_input, v_threshold=node.v_threshold, v_reset=node.v_reset,
        surrogate_function=surrogate.ATan(alpha=alpha), detach_reset=node.detach_reset, step_mode="m",
    )  # fmt: skip
    return replacement, 1.0


def spikingjelly_conv(conv):
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    replacement = layer.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, step_mode="m",
    ).to(conv.weight.device)  # fmt: skip
    replacement.load_state_dict(conv.state_dict())
    return replacement


@dataclass
class Replacement:
    name: str  # the same in the twin, where prepare_model_for_precision may have swapped the module since
    original: torch.nn.Module
    is_neuron: bool
    gradient_ratio: float  # the twin's gradients over the original's: its surrogate's height over spikekern's


def reset_before_each_call(node, _inputs):
    node.reset()


def spikingjelly_twin(model, spike_reading):
    """A copy of ``model`` with every spikekern neuron replaced by SpikingJelly's equivalent node and every
    convolution reading spikes by its time-folded ``layer.Conv2d`` with the same weights; and the replacements.

    SpikingJelly's nodes carry their membrane from one call into the next and its users reset the network
    before each batch. Here each node resets itself before each call: the pipelines reach the networks through
    more than ``forward`` (Spiking-Diffusion's VQ-SVAE encodes and decodes through its own methods), so a reset
    around the top-level call would leave those neurons holding the last call's membrane.
    """
    spikekern_nn = pytest.importorskip("spikekern.nn")
    twin = copy.deepcopy(model)
    replacements = []
    for name, original in model.named_modules():
        if isinstance(original, (spikekern_nn.BaseNode, spikekern_nn.Leaky)):
            replacement, gradient_ratio = spikingjelly_neuron(name, original)
            replacement.register_forward_pre_hook(reset_before_each_call)
        elif name in spike_reading:
            replacement, gradient_ratio = spikingjelly_conv(original), 1.0
        else:
            continue
        parent, _, attribute = name.rpartition(".")
        setattr(twin.get_submodule(parent), attribute, replacement)
        is_neuron = not isinstance(original, torch.nn.Conv2d)
        replacements.append(Replacement(name, original, is_neuron, gradient_ratio))
    # A spikekern neuron or spike layer left over would make this a comparison with a half-built twin.
    spikekern_layers = (spikekern_nn.BaseNode, spikekern_nn.Leaky, spikekern_nn.SpikeConv2d)
    left = [name for name, module in twin.named_modules() if isinstance(module, spikekern_layers)]
    assert not left, f"not replaced in the SpikingJelly twin: {left}"
    return twin, replacements


def spikingjelly_variant(size, device):
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    twin, _ = spikingjelly_twin(spikekern_network(size, device), spike_reading_convolutions(size))
    node_text = FAMILIES[size.family].twin_neuron_text(twin.config)
    conv = "layer.Conv2d(step_mode='m') for each conv reading spikes"
    detail = f"{fastest_spikingjelly_neurons(twin, device, 'lif', node_text)}, {conv}"
    return DiffusionVariant(twin, twin.config, functools.partial(functional.reset_net, twin), detail)


VARIANTS = {SPIKEKERN: spikekern_variant, SPIKINGJELLY: spikingjelly_variant}


def spikekern_membranes(node, x_seq):
    """The membrane [T, ...] each of Leaky's spikes was decided on."""
    ops = pytest.importorskip("spikekern.ops")
    surrogate_name, alpha = pytest.importorskip("spikekern.nn").leaky.snntorch_surrogate_spec(node.spike_grad)
    return ops.leaky_multistep(
        x_seq, node.beta, None, node.threshold, node.reset_mechanism, surrogate_name, alpha, output_mem_seq=True
    )[1]  # fmt: skip


def agreeing_neurons(replacement, x_seq, spikes, expected):
    """Asserts the twin's spikes are spikekern's and returns where (per neuron, [N, ...]) they agree at every
    step: everywhere for Spiking-Diffusion's LIF, which makes the same float32 operations; for FSDDIM's Leaky,
    everywhere but a few neurons that first differ at a membrane within rounding of the threshold."""
    name = replacement.name
    if not isinstance(replacement.original, pytest.importorskip("spikekern.nn").Leaky):
        torch.testing.assert_close(spikes, expected, rtol=0, atol=0, msg=lambda m: f"{name} spikes: {m}")
        return torch.ones_like(spikes[0], dtype=torch.bool)
    differs = spikes != expected
    first = differs & (differs.int().cumsum(0) == 1)
    margin = LEAKY_FLIP_MARGIN * x_seq.shape[0] * max(1.0, x_seq.abs().max().item())
    distance = (spikekern_membranes(replacement.original, x_seq) - replacement.original.threshold).abs()
    unexplained = first & (distance > margin)
    assert not unexplained.any(), (
        f"{name}: {int(unexplained.sum())} neurons first differ where the membrane is farther than {margin:.3g} "
        f"from the threshold; first at {unexplained.nonzero()[:5].tolist()}"
    )
    flipped = differs.any(0)
    assert flipped.sum() <= LEAKY_MAX_FLIPPED_FRACTION * flipped.numel(), (
        f"{name}: {int(flipped.sum())} of {flipped.numel()} neurons differ"
    )  # fmt: skip
    return ~flipped


def assert_same_replacements(family, pipeline, model, twin, replacements, images, t):
    """Every replaced module, fed what its spikekern original gets inside the networks in train mode (the
    frozen VQ-SVAE in eval mode, as it always runs): the same spikes, convolution outputs and gradients, the
    twin's gradients scaled by its surrogate's height where that differs."""
    inputs = {}

    def keep_input(name):
        def hook(_, args):
            inputs[name] = args[0].detach()

        return hook

    hooks = [r.original.register_forward_pre_hook(keep_input(r.name)) for r in replacements]
    with torch.no_grad():
        model.train()
        tokens = family.denoiser_input(pipeline, model, images)
        model(tokens, t)
        if family.decode is not None:
            family.decode(model, tokens)
    for hook in hooks:
        hook.remove()
    for index, replacement in enumerate(replacements):
        name = replacement.name
        assert name in inputs, f"{name}: no network the pipeline runs reached it"
        # The frozen VQ-SVAE's too: the check makes the same backward through its layers as through the others'.
        modules = (twin.get_submodule(name).requires_grad_(True), replacement.original.requires_grad_(True))
        (y, gradients), (expected_y, expected_gradients) = (
            output_and_gradients(module, inputs[name], grad_seed=index) for module in modules
        )
        if replacement.is_neuron:
            agree = agreeing_neurons(replacement, inputs[name], y, expected_y)
        else:
            agree = True
            assert_close_to_largest(y, expected_y, REPLACEMENT_RTOL, f"{name} output")
        assert len(gradients) == len(expected_gradients), f"{name}: the replacement has other parameters"
        for which, gradient, expected in zip(("input", "weight", "bias"), gradients, expected_gradients):
            scaled = replacement.gradient_ratio * expected
            what = f"{name} gradient of the {which}"
            assert_close_to_largest(gradient * agree, scaled * agree, REPLACEMENT_RTOL, what)


@pytest.fixture(scope="session")
def twin_check(bench_device):
    """``check(family)``, which once per family and session, before any of its cases is timed, checks that the
    SpikingJelly twin of the measured network computes what spikekern's does, in float32 on a small batch, with
    the kernels it is measured with (a fast wrong twin cannot win). A failed check fails every case it gates."""

    @functools.cache
    def check(family_name):
        size, family = SIZE_OF[family_name], FAMILIES[family_name]
        pipeline = size.pipeline()
        model = spikekern_network(size, bench_device)
        twin, replacements = spikingjelly_twin(model, spike_reading_convolutions(size))
        fastest_spikingjelly_neurons(twin, bench_device, "lif", family.twin_neuron_text(model.config))
        images, loss_options = family.training_batch(pipeline, CHECK_BATCH, bench_device)
        t = loss_options()["t"]
        with exact_float32():
            with torch.no_grad():
                denoiser_input = family.denoiser_input(pipeline, model.eval(), images)
            # The networks first: the replacements' train-mode pass moves spikekern's BatchNorm statistics.
            assert_same_network_output(model, twin, denoiser_input, t)
            if family.decode is not None:
                with torch.no_grad():
                    decoded = family.decode(twin, denoiser_input)
                    expected = family.decode(model, denoiser_input)
                assert_close_to_largest(decoded, expected, NETWORK_RTOL, "decoded images")
            assert_same_replacements(family, pipeline, model, twin, replacements, images, t)

    return check


def build_variant(request, variant, size, device):
    try:
        request.getfixturevalue("twin_check")(size.family)
    except pytest.skip.Exception:
        # Without SpikingJelly there is no twin to check, nor one for spikekern to win against.
        if variant == SPIKINGJELLY:
            raise
    return VARIANTS[variant](size, device)


def case_record(request, kind, size, variant, measured):
    config = measured.config
    return {
        "suite": SUITE,
        "test": request.node.nodeid,
        "family": size.family,
        "kind": kind,
        "case": size.preset,
        # [T, B, C, H, W] of the images: Spiking-Diffusion's denoiser reads their codes, a quarter of the side.
        "shape": [size.time_steps, size.batch, config.image_channels, config.image_size, config.image_size],
        "config": config.to_dict(),
        "provider": variant,
        "provider_detail": measured.detail,
        "parameter_count": parameter_count(measured.model),
    }


def cases(kind):
    return [
        pytest.param(size, variant, id=f"{size.family}-{kind}-{variant}") for size in SIZES for variant in VARIANTS
    ]


@pytest.mark.parametrize(("size", "variant"), cases("train"))
def test_family_training_step(benchmark, request, bench_device, bench_timing, bench_results, size, variant):
    trainer_module = pytest.importorskip("spikekern.train")
    measured = build_variant(request, variant, size, bench_device)
    pipeline = size.pipeline()
    x0, loss_options = FAMILIES[size.family].training_batch(pipeline, size.batch, bench_device)
    trainer = trainer_module.Trainer(
        pipeline, measured.model, lr=LEARNING_RATE, ema_decay=EMA_DECAY, grad_clip=GRAD_CLIP, amp=True,
        device=bench_device,
    )  # fmt: skip

    def step():
        return trainer.step(x0, **loss_options())

    timer = time_benchmark(benchmark, bench_timing, bench_device, step, f"{size.label()} training step")

    peak_bytes, saved_bytes = training_step_memory(measured, pipeline, x0, step, bench_device, **loss_options())
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    metrics = throughput_metrics(
        timer, bench_timing.rounds, size.batch, peak_memory_bytes=peak_bytes, saved_bytes=saved_bytes
    )
    benchmark.extra_info.update(
        bench_results.append({**case_record(request, "train", size, variant, measured), **metrics})
    )


@pytest.mark.parametrize(("size", "variant"), cases("sample"))
def test_family_sampling(benchmark, request, bench_device, bench_timing, bench_results, size, variant):
    family = FAMILIES[size.family]
    measured = build_variant(request, variant, size, bench_device)
    pipeline = size.pipeline()
    model = measured.model.eval()

    def sample():
        generator = torch.Generator(bench_device).manual_seed(0)  # every call draws the same images
        with bfloat16_autocast(bench_device):
            return family.sample(pipeline, model, size.batch, generator, bench_device)

    # One call runs the denoiser once per sampling step: a tenth of the rounds, one warm-up.
    timing = replace(bench_timing, warmup=min(bench_timing.warmup, 1), rounds=max(1, bench_timing.rounds // 10))
    timer = time_benchmark(benchmark, timing, bench_device, sample, f"{size.label()} sampling, {family.sampler(pipeline)}")

    measured.reset()
    peak_bytes = peak_memory_bytes(sample, bench_device)
    if benchmark.disabled:
        return  # a smoke run: every step ran once and nothing was timed

    metrics = throughput_metrics(
        timer, timing.rounds, size.batch, sampling_steps=family.sampling_steps(pipeline),
        sampler=family.sampler(pipeline), peak_memory_bytes=peak_bytes,
    )  # fmt: skip
    benchmark.extra_info.update(
        bench_results.append({**case_record(request, "sample", size, variant, measured), **metrics})
    )
