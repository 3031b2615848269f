"""The spiking-diffusion pipeline: config round trip, both training stages through the trainer, sampling
options and samples, and `python -m spikekern.train` / `sample` end to end at a tiny size."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model_helpers import copy_of_run, sample_embedded_default

from spikekern import sample, train
from spikekern._cli import run_main
from spikekern.data import load_digits_images
from spikekern.models.layers import neuron_threshold
from spikekern.nn import BaseNode
from spikekern.pipelines import PIPELINES, SpikingDiffusionPipeline, pipeline_from_config

TINY = {"base_channels": 2, "denoiser_channels": 2, "time_steps": 2}
TINY_ARGS = ["--model", "spiking-diffusion", "--base-channels", "2", "--denoiser-channels", "2", "--time-steps", "2"]
RUN_ARGS = ["--steps", "2", "--batch-size", "8", "--save-every", "2", "--sample-every", "2", "--sample-n", "3",
            "--no-progress"]  # fmt: skip


def _pipeline(stage):
    return SpikingDiffusionPipeline.from_preset("digits", stage=stage, **TINY)


def _trainer(pipeline, model, lr=1e-2):
    return train.Trainer(pipeline, model, lr=lr, ema_decay=0.9, grad_clip=1.0, amp=False, device=torch.device("cpu"))


def _digits(n=16):
    return load_digits_images()[0][:n]


def test_registered_and_config_round_trips():
    assert PIPELINES["spiking-diffusion"] is SpikingDiffusionPipeline
    pipeline = SpikingDiffusionPipeline.from_preset(
        "spiking-diffusion-mnist", stage="diffusion", neuron=None, time_steps=4
    )
    config = json.loads(json.dumps(pipeline.config()))
    assert config["family"] == "spiking-diffusion" and config["stage"] == "diffusion"
    assert config["model"]["time_steps"] == 4 and config["model"]["preset"] == "spiking-diffusion-mnist"
    assert config["diffusion"] == {"kind": "absorbing", "num_steps": 49, "mask_id": 128, "loss": "reweighted_elbo"}
    assert config["sampling"] == {"temperature": 1.0}
    again = pipeline_from_config(config)
    assert again.model_config == pipeline.model_config and again.stage == "diffusion"
    assert SpikingDiffusionPipeline.from_preset("digits").stage == "vq"
    assert pipeline.image_shape == (1, 28, 28) and pipeline.is_spiking
    with pytest.raises(ValueError, match="no ANN counterpart"):
        SpikingDiffusionPipeline.from_preset("digits", neuron="relu")


def test_stage_one_trains_the_vq_svae_and_its_loss_decreases():
    pipeline = _pipeline("vq")
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    trainer = _trainer(pipeline, model)
    x0 = _digits()
    losses = [trainer.step(x0).item() for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]
    assert not pipeline.can_sample and pipeline.requires_init is None


def test_stage_two_trains_only_the_denoiser_on_frozen_codes():
    pipeline = _pipeline("diffusion")
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    frozen = {k: v.clone() for k, v in model.vq.state_dict().items()}
    trainer = _trainer(pipeline, model)
    x0 = _digits()
    t = torch.randint(1, 17, (16,), generator=torch.Generator().manual_seed(1))
    losses = [trainer.step(x0, t=t, generator=torch.Generator().manual_seed(2)).item() for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]
    for name, tensor in model.vq.state_dict().items():  # weights and BN statistics alike
        assert torch.equal(tensor, frozen[name]), name
    optimised = {id(p) for p in trainer.optimizer.param_groups[0]["params"] if p in trainer.optimizer.state}
    assert optimised == {id(p) for p in model.denoiser.parameters()}
    ema_vq = trainer.ema.model.vq.state_dict()
    assert all(torch.equal(ema_vq[name], tensor) for name, tensor in model.vq.state_dict().items())
    assert pipeline.requires_init and "--init" in pipeline.requires_init


def test_sampling_options_and_samples():
    pipeline = _pipeline("diffusion")
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False).eval()
    assert pipeline.sampling_options() == {"temperature": 1.0, "v_threshold": None}
    assert pipeline.sampling_options(temperature=0.0, sampler=None, steps=None, eta=None)["temperature"] == 0.0

    def draw(seed, **options):
        return pipeline.sample(model, 3, generator=torch.Generator().manual_seed(seed), **options)

    images = draw(0)
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, draw(0))
    thresholds = [m.v_threshold for m in model.modules() if isinstance(m, BaseNode)]
    assert draw(0, v_threshold=0.9, temperature=0.5).shape == images.shape
    assert [m.v_threshold for m in model.modules() if isinstance(m, BaseNode)] == thresholds
    with neuron_threshold(model.denoiser, 1.0):  # guidance touches the denoiser only
        pass


@pytest.mark.parametrize(
    "stage, options, message",
    [
        ("diffusion", {"sampler": "ddim"}, "sampler apply to the DDPM/DDIM samplers"),
        ("diffusion", {"steps": 10, "eta": 0.5}, "eta, steps apply"),
        ("diffusion", {"temperature": -0.5}, "temperature must be >= 0"),
        ("vq", {}, "stage-1 spiking-diffusion model"),
    ],
)
def test_sampling_option_errors(stage, options, message):
    with pytest.raises(ValueError, match=message):
        _pipeline(stage).sampling_options(**options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A stage-1 run and a stage-2 run started from it."""
    root = tmp_path_factory.mktemp("spiking-diffusion")
    train.main([*TINY_ARGS, "--stage", "vq", "--out", str(root / "vq"), *RUN_ARGS])
    train.main([*TINY_ARGS, "--stage", "diffusion", "--init", str(root / "vq" / "model.safetensors"),
                "--out", str(root / "sd"), *RUN_ARGS])  # fmt: skip
    return root


def test_staged_training_writes_checkpoints_and_stage_two_starts_from_stage_one(runs):
    from spikekern.checkpoint import load_checkpoint

    stage_one, config_one = load_checkpoint(runs / "vq" / "model.safetensors")
    stage_two, config_two = load_checkpoint(runs / "sd" / "model.safetensors")
    assert (config_one["stage"], config_two["stage"]) == ("vq", "diffusion")
    assert not any(name.startswith("model.denoiser.") for name in stage_one)
    for name, tensor in stage_one.items():  # the frozen VQ-SVAE is stage 1's, EMA and BN statistics included
        assert torch.equal(stage_two[name], tensor), name
    assert not list(runs.glob("vq/samples_*.png")) and list(runs.glob("sd/samples_*.png"))
    assert config_two["training"]["commands"][0] == config_one["training"]["commands"][0]  # stage 1's, then 2's
    assert [("--stage vq" in c, "--init" in c) for c in config_two["training"]["commands"]] == [(1, 0), (0, 1)]


def test_stage_two_may_size_its_denoiser_apart_from_stage_one(runs, tmp_path):
    from spikekern.checkpoint import load_checkpoint

    train.main([*TINY_ARGS, "--denoiser-channels", "3", "--stage", "diffusion", "--init",
                str(runs / "vq" / "model.safetensors"), "--out", str(tmp_path / "wide"), *RUN_ARGS])  # fmt: skip
    tensors, config = load_checkpoint(tmp_path / "wide" / "model.safetensors")
    assert config["model"]["denoiser_channels"] == 3 and config["model"]["base_channels"] == 2
    assert tensors["model.denoiser.stem.conv.weight"].shape[0] == 6
    assert pipeline_from_config(config).build_model().denoiser.stem.conv.out_channels == 6


def test_resume_takes_the_family_and_stage_from_the_run(runs, tmp_path):
    out = copy_of_run(runs / "sd", tmp_path / "resumed")
    train.main(["--out", str(out), "--resume", "--steps", "3", "--batch-size", "8", "--save-every", "100",
                "--sample-every", "100", "--no-progress"])  # fmt: skip
    config = json.loads((out / "last.json").read_text())
    assert (config["family"], config["stage"], config["training"]["step"]) == ("spiking-diffusion", "diffusion", 3)


def test_sample_command_is_deterministic(runs, tmp_path, capsys):
    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path in paths:
        sample.main(["--checkpoint", str(runs / "sd"), "--n", "3", "--temperature", "1.0", "--out", str(path),
                     "--no-progress"])  # fmt: skip
    first, second = (np.load(p) for p in paths)
    assert first.shape == (3, 1, 16, 16) and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(first, second)
    printed = capsys.readouterr().out
    assert "firing rates" in printed and "mJ" in printed and "ANN counterpart" not in printed


@pytest.mark.parametrize(
    "program, args, message",
    [
        (train, [*TINY_ARGS, "--stage", "diffusion", "--out", "{tmp}/r"], "pass --init"),
        (train, [*TINY_ARGS, "--base-channels", "4", "--stage", "diffusion", "--init", "{vq}", "--out", "{tmp}/r"],
         "another network config (base_channels differ)"),
        (train, [*TINY_ARGS, "--denoiser-channels", "3", "--stage", "diffusion", "--init", "{sd}", "--out",
                 "{tmp}/r"], "another network config (denoiser_channels differ)"),
        (train, ["--model", "sddpm", "--denoiser-channels", "3", "--out", "{tmp}/r"],
         "denoiser_channels: not a setting"),
        (train, ["--model", "spiking-diffusion", "--denoiser-channels", "3", "--resume", "--out", "{sd}"],
         "--denoiser-channels: --resume continues the run's own network"),
        (train, [*TINY_ARGS, "--stage", "diffusion", "--init", "{vq}", "--resume", "--out", "{tmp}/r"],
         "only one of them"),
        (train, ["--model", "sddpm", "--resume", "--out", "{sd}"], "is a 'spiking-diffusion' run, not 'sddpm'"),
        (train, [*TINY_ARGS, "--stage", "generate", "--out", "{tmp}/r"], "stage must be one of"),
        (train, [*TINY_ARGS, "--neuron", "relu", "--out", "{tmp}/r"], "no ANN counterpart"),
        (train, [*TINY_ARGS, "--sampling-defaults", "ddim:5", "--out", "{tmp}/r"], "apply to the DDPM/DDIM samplers"),
        (train, ["--model", "sddpm", "--sampling-defaults", "temperature:0.5", "--out", "{tmp}/r"],
         "--temperature does not apply to the sddpm model"),
        (sample, ["--checkpoint", "{vq}"], "cannot generate"),
        (sample, ["--checkpoint", "{sd}", "--sampler", "ddim"], "apply to the DDPM/DDIM samplers"),
        (sample, ["--checkpoint", "{sd}", "--temperature", "-1"], "temperature must be >= 0"),
    ],
)  # fmt: skip
def test_command_errors_are_one_clear_line(runs, tmp_path, capsys, program, args, message):
    paths = {"tmp": tmp_path, "vq": runs / "vq" / "model.safetensors", "sd": runs / "sd"}
    with pytest.raises(SystemExit) as exit_info:
        run_main(program.main, program.PROGRAM, [a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_the_real_command_line_reports_one_line(runs):
    result = subprocess.run(
        [sys.executable, "-m", "spikekern.sample", "--checkpoint", str(runs / "vq"), "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [(
        "python -m spikekern.sample: error: this is a stage-1 spiking-diffusion model (the VQ-SVAE alone), which "
        "cannot generate: train stage 2 with --stage diffusion --init <its model.safetensors> and sample from that"
    )]


def test_the_embedded_default_model_loads_and_samples(tmp_path, capsys):
    config = sample_embedded_default("spiking-diffusion", tmp_path / "embedded.npy", capsys)
    assert config["stage"] == "diffusion" and config["model"]["preset"] == "digits"
    assert config["training"]["step"] == 8000 and config["sampling"] == {"temperature": 0.5}
    assert config["model"]["denoiser_channels"] == 16
