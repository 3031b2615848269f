"""The FSDDIM pipeline: synaptic current learning against a direct computation, per-step-domain DDIM,
training, the train/sample commands end to end at a tiny size on the CPU, validation."""

import json
import math

import numpy as np
import pytest
import torch

from model_helpers import sample_embedded_default

from spikekern import sample, train
from spikekern.diffusion import GaussianDiffusion
from spikekern.models import FSDDIMUNet
from spikekern.nn import Leaky
from spikekern.pipelines import PIPELINES, FSDDIMPipeline, pipeline_from_config

TINY = {"base_channels": 8, "time_steps": 2}


def _tiny_pipeline(**overrides):
    return FSDDIMPipeline.from_preset("digits", **(TINY | overrides))


def _cosine_alpha_bar(steps=1000, s=0.008):
    """ᾱ_t written out from Nichol & Dhariwal: f(t+1)/f(0) with f(t) = cos²((t/T + s)/(1 + s) π/2), β clipped at 0.999."""
    f = [math.cos((i / steps + s) / (1 + s) * math.pi / 2) ** 2 for i in range(steps + 1)]
    alpha_bar, product = [], 1.0
    for i in range(steps):
        product *= 1 - min(1 - f[i + 1] / f[i], 0.999)
        alpha_bar.append(product)
    return torch.tensor(alpha_bar, dtype=torch.float64)


class _StepModel(torch.nn.Module):
    """Per-step currents from the per-step input alone: I_k = a_k x_k + b_k t / 1000, so step k's DDIM chain
    is independent of the others'. With all a_k and b_k equal every step computes the same."""

    def __init__(self, scales, offsets):
        super().__init__()
        self.scales, self.offsets = torch.tensor(scales), torch.tensor(offsets)
        self.calls = []

    def forward(self, x, t):
        self.calls.append(t.clone())
        steps = x if x.dim() == 5 else x.expand(len(self.scales), *x.shape)
        shape = (-1, 1, 1, 1, 1)
        return self.scales.view(shape) * steps + self.offsets.view(shape) * (t.float() / 1000).view(1, -1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------
# Construction and config
# ------------------------------------------------------------------------------------------------


def test_registered_and_config_round_trip():
    assert PIPELINES["fsddim"] is FSDDIMPipeline
    pipeline = _tiny_pipeline(time_steps=None)  # None overrides are ignored
    assert pipeline.model_config.time_steps == 4 and pipeline.model_config.base_channels == 8
    config = json.loads(json.dumps(pipeline.config()))
    assert config["family"] == "fsddim" and config["diffusion"] == {"num_steps": 1000, "schedule": "cosine", "prediction": "v"}
    assert config["sampling"] == {"sampler": "ddim", "steps": 50, "eta": 0.0}
    rebuilt = pipeline_from_config(config)
    assert isinstance(rebuilt, FSDDIMPipeline) and rebuilt.model_config == pipeline.model_config
    assert rebuilt.config() == pipeline.config() and rebuilt.image_shape == (1, 16, 16) and rebuilt.is_spiking
    paper = FSDDIMPipeline.from_preset("fsddim-cifar10")
    assert paper.sampling_options() == {"sampler": "ddim", "steps": 1000, "eta": 0.0, "v_threshold": None}
    assert paper.diffusion.schedule == "cosine" and paper.diffusion.prediction == "v"


def test_ann_counterpart_pipeline():
    pipeline = _tiny_pipeline(neuron="relu", time_steps=None)
    assert not pipeline.is_spiking and pipeline.model_config.time_steps == 1
    model = pipeline.build_model(spike_conv=True)
    assert not any(isinstance(m, Leaky) for m in model.modules())
    with pytest.raises(ValueError, match="threshold guidance needs a spiking model"):
        pipeline.sampling_options(v_threshold=0.9)


# ------------------------------------------------------------------------------------------------
# Synaptic current learning
# ------------------------------------------------------------------------------------------------


def test_loss_against_a_direct_computation():
    pipeline = _tiny_pipeline()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 16, 16, generator=generator) * 2 - 1
    noise = torch.randn(3, 1, 16, 16, generator=generator)
    t = torch.tensor([0, 420, 999])
    model = _StepModel([0.5, -0.3], [1.0, 2.0])
    terms = pipeline.loss_terms(model, x0, t=t, noise=noise)

    alpha_bar = _cosine_alpha_bar()
    a = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise).float()
    currents = model(x_t, t).double()
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    mean = currents.mean(0)
    snr = alpha_bar[t] / (1 - alpha_bar[t])
    velocity = ((mean - v) ** 2).mean((1, 2, 3)) * snr / (snr + 1)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    c2 = ((1 - previous) / (1 - alpha_bar)).sqrt()
    c1 = previous.sqrt() - alpha_bar.sqrt() * c2  # DDIM's coefficient of x̂_0
    weight = ((1 - alpha_bar).sqrt() * c1).abs()
    consistency = ((currents - mean) ** 2).mean((0, 2, 3, 4)) * (weight / weight.max())[t]

    torch.testing.assert_close(terms["velocity"].double(), velocity.mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["consistency"].double(), consistency.mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pipeline.loss(model, x0, t=t, noise=noise), terms["velocity"] + terms["consistency"])
    assert terms["consistency"] > 0


def test_loss_uses_the_diffusion_v_target_and_is_zero_for_a_perfect_constant_current():
    pipeline = _tiny_pipeline()
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 16, 16, generator=generator) * 2 - 1
    noise = torch.randn(2, 1, 16, 16, generator=generator)
    t = torch.tensor([10, 700])
    v = pipeline.diffusion.training_target(x0, noise, t)
    # An oracle that outputs the v target at every step: x̂_0 recovered from it is x0.
    terms = pipeline.loss_terms(lambda x_t, _: v.expand(2, *v.shape), x0, t=t, noise=noise)
    assert terms["velocity"] == 0 and terms["consistency"] == 0
    x_t = pipeline.diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(pipeline.diffusion.predict_x0(x_t, t, v), x0, rtol=1e-5, atol=1e-5)


def test_loss_draws_t_then_noise_from_the_generator():
    pipeline = _tiny_pipeline()
    model = _StepModel([0.5, 0.7], [0.1, 0.2])
    x0 = torch.zeros(4, 1, 16, 16)
    first = pipeline.loss(model, x0, generator=torch.Generator().manual_seed(3))
    again = pipeline.loss(model, x0, generator=torch.Generator().manual_seed(3))
    assert first == again
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (4,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    assert pipeline.loss(model, x0, t=t, noise=noise) == first


# ------------------------------------------------------------------------------------------------
# Sampling in the per-step domain
# ------------------------------------------------------------------------------------------------


def test_identical_steps_sample_as_ordinary_ddim_on_the_mean():
    pipeline = _tiny_pipeline()
    model = _StepModel([0.4, 0.4], [0.3, 0.3])
    images = pipeline.sample(model, 3, steps=7, generator=torch.Generator().manual_seed(5))
    reference = GaussianDiffusion(1000, "cosine", "v").ddim_sample(
        lambda x, t: model(x, t)[0], (3, 1, 16, 16), steps=7, clip_x0=False, generator=torch.Generator().manual_seed(5)
    )  # fmt: skip
    torch.testing.assert_close(images, reference.clamp(-1, 1), rtol=1e-5, atol=1e-6)
    assert [int(t[0]) for t in model.calls[:7]] == [852, 710, 568, 426, 284, 142, 0]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_each_spike_step_runs_its_own_chain_from_the_same_noise(eta):
    """With eta > 0 every chain also adds the same noise at each step (the same draws from the generator)."""
    pipeline = _tiny_pipeline()
    scales, offsets = [0.9, -0.2], [0.1, -0.5]
    images = pipeline.sample(
        _StepModel(scales, offsets), 2, steps=5, eta=eta, generator=torch.Generator().manual_seed(6)
    )
    diffusion = GaussianDiffusion(1000, "cosine", "v")
    chains = [
        diffusion.ddim_sample(
            lambda x, t, k=k: _StepModel([scales[k]], [offsets[k]])(x[None], t)[0], (2, 1, 16, 16), steps=5,
            eta=eta, clip_x0=False, generator=torch.Generator().manual_seed(6),
        )
        for k in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(images, torch.stack(chains).mean(0).clamp(-1, 1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(chains[0], chains[1])


def test_model_sampling_is_deterministic_in_range_and_threshold_guided():
    pipeline = _tiny_pipeline()
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False).eval()

    def draw(seed, **options):
        return pipeline.sample(model, 2, steps=3, generator=torch.Generator().manual_seed(seed), **options)

    first = draw(0)
    assert first.shape == (2, 1, 16, 16) and first.min() >= -1 and first.max() <= 1
    torch.testing.assert_close(draw(0), first, rtol=0, atol=0)
    assert not torch.equal(draw(1), first)
    assert not torch.equal(draw(0, v_threshold=0.5), first)
    assert {float(n.threshold) for n in model.modules() if isinstance(n, Leaky)} == {1.0}


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"sampler": "ddpm"}, ValueError, "sampler must be one of"),
        ({"eta": 1.5}, ValueError, r"eta must lie in \[0, 1\]"),
        ({"eta": "0"}, TypeError, "eta must be a float"),
        ({"steps": 0}, ValueError, "steps must lie in 1..1000"),
        ({"steps": 1001}, ValueError, "steps must lie in 1..1000"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
    ],
)
def test_bad_sampling_options_raise(options, error, match):
    with pytest.raises(error, match=match):
        _tiny_pipeline().sampling_options(**options)


def test_bad_arguments_raise():
    pipeline = _tiny_pipeline()
    model = _StepModel([1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="x0 must have shape"):
        pipeline.loss(model, torch.zeros(2, 3, 16, 16))
    with pytest.raises(TypeError, match="x0 must be a tensor"):
        pipeline.loss(model, np.zeros((2, 1, 16, 16)))
    with pytest.raises(ValueError, match="n must be a positive int"):
        pipeline.sample(model, 0, steps=2)
    with pytest.raises(ValueError, match="v_threshold"):
        pipeline.sample(model, 1, steps=2, v_threshold=-1.0)
    with pytest.raises(ValueError, match="neuron must be one of"):
        FSDDIMPipeline.from_preset("digits", neuron="tanh")
    with pytest.raises(ValueError, match="unknown preset"):
        FSDDIMPipeline.from_preset("sddpm-cifar10")
    with pytest.raises(TypeError, match="readout_decay"):
        FSDDIMPipeline.from_preset("digits", readout_decay=0.8)
    bad = pipeline.config() | {"diffusion": {"num_steps": 1000, "schedule": "linear", "prediction": "eps"}}
    with pytest.raises(ValueError, match="cosine schedule and v-prediction"):
        FSDDIMPipeline.from_config(bad)


# ------------------------------------------------------------------------------------------------
# Training and the commands
# ------------------------------------------------------------------------------------------------


def test_training_loss_decreases():
    from spikekern.data import load_digits_images

    pipeline = _tiny_pipeline()
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    trainer = train.Trainer(pipeline, model, lr=5e-3, ema_decay=0.9, grad_clip=1.0, amp=True, device=torch.device("cpu"))
    images, _ = load_digits_images()
    generator = torch.Generator().manual_seed(1)
    x0, t = images[:8], torch.randint(0, 1000, (8,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    losses = [trainer.step(x0, t=t, noise=noise).item() for _ in range(20)]
    assert losses[-1] < 0.6 * losses[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsddim-run")
    train.main(["--model", "fsddim", "--preset", "digits", "--base-channels", "8", "--time-steps", "2", "--out", str(out),
                "--steps", "3", "--batch-size", "4", "--sample-every", "3", "--sample-n", "2", "--sample-steps", "2",
                "--no-progress"])  # fmt: skip
    return out


def test_train_writes_an_fsddim_checkpoint(run_dir):
    for name in ("last.safetensors", "model.safetensors", "model.json", "samples_0000003.png"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "model.json").read_text())
    assert config["family"] == "fsddim" and config["model"]["time_steps"] == 2 and config["model"]["base_channels"] == 8
    assert config["sampling"] == {"sampler": "ddim", "steps": 50, "eta": 0.0}


def test_sample_from_the_checkpoint_is_deterministic_and_reports_activity(run_dir, tmp_path, capsys):
    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path in paths:
        sample.main(["--checkpoint", str(run_dir), "--n", "3", "--steps", "2", "--out", str(path), "--no-progress"])
    first, second = (np.load(p) for p in paths)
    assert first.shape == (3, 1, 16, 16) and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, second)
    printed = capsys.readouterr().out
    assert "fsddim digits" in printed and "time_embedding.neuron1" in printed and "ANN counterpart" in printed
    pipeline, model, _ = sample.load_model(str(run_dir), torch.device("cpu"), "off")
    assert isinstance(pipeline, FSDDIMPipeline) and isinstance(model, FSDDIMUNet) and not model.training


def _ddp_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    pipeline, model, x0, t, noise = _tiny_training_setup()
    share = slice(rank * 4, rank * 4 + 4)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model)  # held: its reducer must outlive backward
    pipeline.loss(ddp_model, x0[share], t=t[share], noise=noise[share]).backward()
    if rank == 0:
        torch.save({"grads": {name: p.grad for name, p in model.named_parameters()}, "buffers": dict(model.named_buffers())}, result_file)
    dist.destroy_process_group()


def _tiny_training_setup():
    pipeline = _tiny_pipeline(num_res_blocks=1)
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 1, 16, 16, generator=generator) * 2 - 1
    return pipeline, model, x0, torch.randint(0, 1000, (8,), generator=generator), torch.randn(x0.shape, generator=generator)


def test_ddp_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    """tdBN's statistics are the global batch's, and the losses are batch means, so the gradients agree."""
    result_file = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2, join=True)
    ddp = torch.load(result_file)
    pipeline, model, x0, t, noise = _tiny_training_setup()
    pipeline.loss(model, x0, t=t, noise=noise).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(ddp["buffers"][name], buffer, rtol=1e-5, atol=1e-6, msg=name)


def test_the_embedded_default_model_loads_and_samples(tmp_path, capsys):
    config = sample_embedded_default("fsddim", tmp_path / "embedded.npy", capsys, "--steps", "2")
    assert config["family"] == "fsddim" and config["model"]["preset"] == "digits"
    assert config["sampling"] == {"sampler": "ddim", "steps": 50, "eta": 1.0}
    assert config["model"]["base_channels"] == 48
    # Three learning-rate cycles over seven invocations, each listed in the record.
    training = config["training"]
    assert training["step"] == 7250 and "--steps 7250" in training["commands"][-1] and len(training["commands"]) == 7
