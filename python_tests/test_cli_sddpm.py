"""`python -m spikekern.train` / `sample` end to end at a tiny size on the CPU, their errors, and the
trainer itself: a loss that decreases, resume, DDP equal to one process on the whole batch."""

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from model_helpers import copy_of_run, sample_embedded_default

from spikekern import sample, train
from spikekern._cli import keep_freed_memory
from spikekern.pipelines import SDDPMPipeline

TINY = ["--preset", "digits", "--base-channels", "8", "--time-steps", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main([*TINY, "--out", str(out), "--steps", "4", "--batch-size", "8", "--save-every", "2",
                "--sample-every", "4", "--sample-n", "4", "--sample-steps", "2", "--sampling-defaults", "ddim:3",
                "--no-progress"])  # fmt: skip
    return out


def test_train_writes_checkpoints_config_and_sample_grid(run_dir):
    for name in ("last.safetensors", "last.json", "model.safetensors", "model.json", "samples_0000004.png"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "model.json").read_text())
    assert config["family"] == "sddpm" and config["model"]["base_channels"] == 8 and config["model"]["time_steps"] == 2
    assert config["sampling"] == {"sampler": "ddim", "steps": 3, "eta": 0.0}
    assert config["training"]["step"] == 4 and config["training"]["images_seen"] == 32
    assert config["training"]["commands"] == [
        "python -m spikekern.train " + " ".join([*TINY, "--out", str(run_dir)]) + " --steps 4 --batch-size 8 --save-every 2 "
        "--sample-every 4 --sample-n 4 --sample-steps 2 --sampling-defaults ddim:3 --no-progress"
    ]


def test_resume_continues_the_step_count(run_dir, tmp_path):
    out = copy_of_run(run_dir, tmp_path / "resumed")
    train.main(["--out", str(out), "--resume", "--steps", "6", "--batch-size", "8", "--save-every", "100",
                "--sample-every", "100", "--sample-n", "2", "--sample-steps", "2", "--lr-decay-steps", "2",
                "--no-progress"])  # fmt: skip
    config = json.loads((out / "last.json").read_text())
    assert config["training"]["step"] == 6 and config["model"]["base_channels"] == 8
    assert config["training"]["lr_decay_steps"] == 2 and config["training"]["warmup_steps"] == 0
    commands = config["training"]["commands"]
    assert len(commands) == 2 and "--resume" in commands[1] and "--resume" not in commands[0]


def test_init_from_a_run_of_another_time_steps_fine_tunes_it(run_dir, tmp_path):
    from spikekern.checkpoint import load_checkpoint

    pipeline = SDDPMPipeline.from_preset("digits", base_channels=8, time_steps=3)
    model = pipeline.build_model()
    init_config = train.load_initial_weights(model, pipeline, str(run_dir))
    tensors, _ = load_checkpoint(run_dir / "model.safetensors")
    for name, tensor in model.state_dict().items():  # the weights are shared over the spike steps
        assert torch.equal(tensor, tensors["model." + name]), name
    assert init_config["model"]["time_steps"] == 2
    out = tmp_path / "t3"
    train.main(["--preset", "digits", "--base-channels", "8", "--time-steps", "3", "--init", str(run_dir),
                "--out", str(out), "--steps", "1", "--batch-size", "4", "--save-every", "100", "--sample-every", "100",
                "--no-progress"])  # fmt: skip
    config = json.loads((out / "model.json").read_text())
    assert config["model"]["time_steps"] == 3 and config["training"]["step"] == 1
    commands = config["training"]["commands"]  # the commands that trained the --init weights, then this one
    assert commands[:-1] == init_config["training"]["commands"] and "--init" in commands[-1]


def test_sample_npy_is_deterministic_and_in_range(run_dir, tmp_path, capsys):
    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path in paths:
        sample.main(["--checkpoint", str(run_dir), "--n", "5", "--batch-size", "3", "--out", str(path), "--no-progress"])
    first, second = (np.load(p) for p in paths)
    assert first.shape == (5, 1, 16, 16) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, second)
    printed = capsys.readouterr().out
    assert "firing rates" in printed and "ANN counterpart" in printed and "mJ" in printed


def test_a_model_loaded_for_the_cpu_convolves_channels_last(run_dir):
    _, model, _ = sample.load_model(str(run_dir), torch.device("cpu"))
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_commands_keep_freed_memory_on_glibc():
    assert keep_freed_memory() is True


def test_sample_png_with_threshold_guidance_and_ddpm(run_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    sample.main(["--checkpoint", str(run_dir / "model.safetensors"), "--n", "4", "--sampler", "ddim", "--steps", "2",
                 "--threshold-guided", "0.997", "--out", str(out), "--no-report", "--no-progress"])  # fmt: skip
    assert Image.open(out).size[0] > 16


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "module, args, message",
    [
        ("spikekern.train", ["--out", "{tmp}/r", "--data", "mnist:{tmp}/nowhere"], "data set 'mnist:"),
        ("spikekern.train", ["--out", "{tmp}/r", "--steps", "0"], "--steps must be at least 1"),
        ("spikekern.train", ["--out", "{tmp}/r", "--resume"], "--resume: no checkpoint"),
        ("spikekern.train", ["--out", "{tmp}/r", "--steps", "10", "--lr-decay-steps", "11"], "do not fit in --steps 10"),
        ("spikekern.train", ["--out", "{tmp}/r", "--warmup-steps", "-1"], "--warmup-steps must be at least 0"),
        ("spikekern.train", ["--out", "{tmp}/r", "--preset", "sddpm-cifar10"], "choose a matching --preset"),
        ("spikekern.train", ["--out", "{tmp}/r", "--stage", "vq"], "stage: not a setting of the 'digits' network"),
        ("spikekern.train", ["--out", "{tmp}/r", "--device", "cpu", "--neuron-backend", "cuda"],
         "--neuron-backend cuda cannot run on cpu: the CUDA kernels need a CUDA tensor"),
        ("spikekern.sample", ["--checkpoint", "{run}", "--temperature", "0.5"], "--temperature does not apply"),
        ("spikekern.sample", ["--checkpoint", "{tmp}/corrupt.safetensors"], "truncated or corrupt"),
        ("spikekern.sample", ["--checkpoint", "{tmp}/absent.safetensors"], "does not exist"),
        ("spikekern.sample", ["--out", "{tmp}/samples.jpg"], "--out must end in .png or .npy"),
        ("spikekern.sample", ["--checkpoint", "{run}", "--sampler", "ddpm", "--steps", "5"], "steps applies to the DDIM sampler"),
    ],
)
def test_command_errors_are_one_clear_line(run_dir, tmp_path, module, args, message):
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 40)
    result = _cli(module, *(a.format(tmp=tmp_path, run=run_dir) for a in args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


def _tiny_trainer(device=torch.device("cpu"), lr=1e-2):
    pipeline = SDDPMPipeline.from_preset("digits", base_channels=8, time_steps=2)
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    return pipeline, model, lambda m: train.Trainer(pipeline, m, lr=lr, ema_decay=0.9, grad_clip=1.0, amp=True, device=device)


def _fixed_batch(n=8):
    from spikekern.data import load_digits_images

    images, _ = load_digits_images()
    generator = torch.Generator().manual_seed(1)
    return images[:n], torch.randint(0, 1000, (n,), generator=generator), torch.randn(n, 1, 16, 16, generator=generator)


def test_training_loss_decreases_and_ema_follows():
    _, model, make = _tiny_trainer()
    trainer = make(model)
    x0, t, noise = _fixed_batch()
    losses = [trainer.step(x0, t=t, noise=noise).item() for _ in range(25)]
    assert losses[-1] < 0.6 * losses[0]
    ema_weight = dict(trainer.ema.model.named_parameters())["stem_conv.weight"]
    assert not torch.equal(ema_weight, model.stem_conv.weight)
    assert trainer.step_count == 25


def test_warmup_stable_decay_rates():
    schedule = train.WarmupStableDecay(1.0, total_steps=10, warmup_steps=2, decay_steps=3)
    assert [schedule(step) for step in range(1, 11)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert train.WarmupStableDecay(0.1, total_steps=3)(3) == 0.1


def test_trainer_steps_at_the_scheduled_rate():
    _, model, _ = _tiny_trainer()
    schedule = train.WarmupStableDecay(1e-2, total_steps=4, decay_steps=2)
    trainer = train.Trainer(SDDPMPipeline.from_preset("digits", base_channels=8, time_steps=2), model, lr=schedule,
                            ema_decay=0.9, grad_clip=1.0, amp=False, device=torch.device("cpu"))  # fmt: skip
    x0, t, noise = _fixed_batch()
    rates = []
    for _ in range(4):
        trainer.step(x0, t=t, noise=noise)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-2, 1e-2, 2e-2 / 3, 1e-2 / 3])


def _ddp_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    _, model, make = _tiny_trainer()
    trainer = make(torch.nn.parallel.DistributedDataParallel(model))
    x0, t, noise = _fixed_batch()
    share = slice(rank * 4, rank * 4 + 4)
    loss = trainer.step(x0[share], t=t[share], noise=noise[share])
    if rank == 0:
        grads = {name: p.grad for name, p in model.named_parameters()}
        buffers = dict(model.named_buffers())
        torch.save({"grads": grads, "buffers": buffers, "loss": loss}, result_file)
    dist.destroy_process_group()


def test_ddp_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    result_file = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2, join=True)
    ddp = torch.load(result_file)
    _, model, make = _tiny_trainer()
    x0, t, noise = _fixed_batch()
    make(model).step(x0, t=t, noise=noise)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(ddp["buffers"][name], buffer, rtol=1e-5, atol=1e-6, msg=name)


def test_calibrate_ema_measures_the_averaged_models_own_statistics():
    _, model, make = _tiny_trainer()
    trainer = make(model)
    x0, t, noise = _fixed_batch()
    for _ in range(3):
        trainer.step(x0, t=t, noise=noise)
    norm = trainer.ema.model.stem_bn
    seen = []
    hook = norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    trainer.calibrate_ema(iter([x0, x0.flip(0)]), 2, t=t, noise=noise)
    hook.remove()
    assert len(seen) == 2 and not trainer.ema.model.training
    torch.testing.assert_close(norm.running_mean, torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0))
    assert norm.momentum == torch.nn.BatchNorm2d(1).momentum


def test_sampling_defaults_parse_and_refuse():
    assert train.parse_sampling_defaults("ddim:50:1") == {"sampler": "ddim", "steps": 50, "eta": 1.0}
    assert train.parse_sampling_defaults("ddim:20") == {"sampler": "ddim", "steps": 20, "eta": 0.0}
    assert train.parse_sampling_defaults("ddpm") == {"sampler": "ddpm", "steps": None, "eta": 0.0}
    assert train.parse_sampling_defaults("temperature:0.6") == {"temperature": 0.6}
    for bad in ("ddim", "ddpm:5", "ddim:x", "ddim:5:1:2", "euler:5", "temperature", "temperature:x"):
        with pytest.raises(ValueError, match="--sampling-defaults"):
            train.parse_sampling_defaults(bad)


def test_resuming_a_finished_run_only_records_new_sampling_defaults(run_dir, tmp_path):
    out = copy_of_run(run_dir, tmp_path / "finished")
    trained = json.loads((run_dir / "model.json").read_text())["training"]
    train.main(["--out", str(out), "--resume", "--steps", "4", "--batch-size", "16", "--lr", "0.5", "--seed", "9",
                "--sampling-defaults", "ddim:2:1", "--sample-n", "2", "--sample-steps", "2", "--no-progress"])  # fmt: skip
    config = json.loads((out / "model.json").read_text())
    assert config["training"]["step"] == 4 and config["sampling"] == {"sampler": "ddim", "steps": 2, "eta": 1.0}
    assert (out / "samples_0000004.png").is_file()
    # The settings it trained with, not those of the invocation that trained nothing.
    for key in ("batch_size", "lr", "seed", "lr_decay_steps"):
        assert config["training"][key] == trained[key], key
    assert len(config["training"]["commands"]) == len(trained["commands"]) + 1


def test_the_embedded_default_model_loads_and_samples(tmp_path, capsys):
    config = sample_embedded_default("sddpm", tmp_path / "embedded.npy", capsys, "--steps", "2")
    assert config["model"]["preset"] == "digits" and config["model"]["base_channels"] == 48
    assert config["training"]["step"] == 6250
    assert config["sampling"] == {"sampler": "ddim", "steps": 50, "eta": 1.0}
