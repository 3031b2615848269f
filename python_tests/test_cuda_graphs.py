"""Sampling with the denoiser replayed from CUDA graphs: the choice and its errors everywhere, and on a GPU
the replayed samples of every family equal to the eager ones (also under bfloat16 autocast), the spike ops'
"auto" path capturable."""

import pytest
import torch

from spikekern._cli import cuda_graphs_for
from spikekern.diffusion import GraphedDenoiser, denoiser
from spikekern.pipelines import FSDDIMPipeline, SDDPMPipeline, SpikingDiffusionPipeline

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def test_denoiser_is_the_model_unless_graphs_are_asked_for():
    model = torch.nn.Linear(2, 2)
    assert denoiser(model, False) is model
    with pytest.raises(ValueError, match="cuda_graphs needs the model on a CUDA device, it is on cpu"):
        denoiser(model, True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool, got str"):
        denoiser(model, "on")


def test_a_graphed_denoiser_refuses_a_bad_warmup_count():
    with pytest.raises(ValueError, match="warmup_calls must be at least 0, got -1"):
        GraphedDenoiser(torch.nn.Identity(), warmup_calls=-1)
    with pytest.raises(TypeError, match="warmup_calls must be an int, got float"):
        GraphedDenoiser(torch.nn.Identity(), warmup_calls=1.5)


def test_pipelines_refuse_graphs_for_a_cpu_model():
    pipeline = SDDPMPipeline.from_preset("digits", base_channels=8, time_steps=2)
    model = pipeline.build_model(spike_conv=False).eval()
    with pytest.raises(ValueError, match="cuda_graphs needs the model on a CUDA device"):
        pipeline.sample(model, 1, sampler="ddim", steps=2, cuda_graphs=True)


@pytest.mark.parametrize(
    "device, choice, reporting, expected",
    [
        (CPU, "auto", False, False), (CUDA, "auto", False, True), (CUDA, "auto", True, False),
        (CUDA, "on", False, True), (CUDA, "off", False, False), (CPU, "off", True, False),
    ],
)  # fmt: skip
def test_cuda_graphs_choice(device, choice, reporting, expected):
    assert cuda_graphs_for(device, choice, reporting) is expected


def test_cuda_graphs_on_refuses_a_cpu_and_the_report():
    with pytest.raises(ValueError, match="--cuda-graphs on needs a CUDA device, got cpu"):
        cuda_graphs_for(CPU, "on")
    with pytest.raises(ValueError, match="add --no-report"):
        cuda_graphs_for(CUDA, "on", reporting=True)


def _tiny_pipelines():
    return {
        "sddpm": (SDDPMPipeline.from_preset("digits", base_channels=8, time_steps=2), {"sampler": "ddim", "steps": 3}),
        "fsddim": (FSDDIMPipeline.from_preset("digits", base_channels=8, time_steps=2), {"steps": 3}),
        "spiking-diffusion": (
            SpikingDiffusionPipeline.from_preset("digits", stage="diffusion"), {"temperature": 0.5},
        ),
    }  # fmt: skip


def _samples(pipeline, model, cuda_graphs, options):
    generator = torch.Generator(CUDA).manual_seed(0)
    return pipeline.sample(model, 3, generator=generator, device=CUDA, cuda_graphs=cuda_graphs, **options)


@needs_cuda
@pytest.mark.parametrize("family", ["sddpm", "fsddim", "spiking-diffusion"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_replayed_sampling_equals_eager_sampling(family, autocast):
    pipeline, options = _tiny_pipelines()[family]
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=True).to(CUDA).eval()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        eager = _samples(pipeline, model, False, options)
        replayed = _samples(pipeline, model, True, options)
    torch.testing.assert_close(replayed, eager, rtol=0, atol=0)


@needs_cuda
def test_a_graphed_denoiser_captures_each_input_shape_once():
    calls = []

    def model(x, t):
        calls.append(x.shape[0])
        return x * 2 + t[:, None]

    graphed = GraphedDenoiser(model, warmup_calls=1)
    for batch in (2, 2, 3, 2):
        x = torch.randn(batch, 4, device=CUDA)
        t = torch.arange(batch, device=CUDA)
        torch.testing.assert_close(graphed(x, t), x * 2 + t[:, None])
    assert calls == [2, 2, 3, 3]  # a warm-up and a capture per shape, nothing while replaying


@needs_cuda
@pytest.mark.parametrize("op", ["spike_linear", "spike_conv2d"])
def test_the_auto_path_runs_dense_under_capture(op):
    from spikekern.ops import spike_conv2d, spike_linear

    generator = torch.Generator(CUDA).manual_seed(0)
    if op == "spike_linear":
        s = (torch.rand(8, 64, generator=generator, device=CUDA) < 0.01).float()
        weight = torch.randn(16, 64, generator=generator, device=CUDA)

        def call(spikes):
            return spike_linear(spikes, weight, path="auto")
    else:
        s = (torch.rand(2, 8, 6, 6, generator=generator, device=CUDA) < 0.01).float()
        weight = torch.randn(4, 8, 3, 3, generator=generator, device=CUDA)

        def call(spikes):
            return spike_conv2d(spikes, weight, padding=1, path="auto")

    graphed = GraphedDenoiser(call, warmup_calls=1)
    torch.testing.assert_close(graphed(s), call(s))
