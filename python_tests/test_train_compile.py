"""`python -m spikekern.train --compile`: the training step through torch.compile takes the step the eager
one takes, alone and under DDP, and its checkpoints are those of an eager run. The fast tests compile with
aot_eager (dynamo's graph capture and AOT autograd, where a network can fail to compile); inductor's code
generation, minutes of C++ compilation on a CPU, is the slow test's."""

import json

import pytest
import torch
from test_cli_sddpm import TINY, _fixed_batch, _tiny_trainer

from spikekern import train
from spikekern.checkpoint import load_checkpoint
from spikekern.data import load_digits_images
from spikekern.pipelines import pipeline_class
from spikekern.pipelines.base import unwrapped


def _compiled_trainer(model, backend, *, ddp=False):
    pipeline, _, _ = _tiny_trainer()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    return train.Trainer(pipeline, wrapped, lr=1e-2, ema_decay=0.9, grad_clip=1.0, amp=True, device=torch.device("cpu"),
                         compile_backend=backend)  # fmt: skip


def _eager_step_on_the_whole_batch():
    _, model, make = _tiny_trainer()
    x0, t, noise = _fixed_batch()
    loss = make(model).step(x0, t=t, noise=noise)
    return model, loss


def _assert_same_gradients_and_statistics(grads, buffers, eager_model):
    # Gradients, not updated weights: Adam turns the ~0 gradients of a bias before a BatchNorm into whole
    # steps of either sign, so rounding noise would decide a comparison of the weights.
    for name, p in eager_model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in eager_model.named_buffers():
        torch.testing.assert_close(buffers[name], buffer, rtol=1e-5, atol=1e-6, msg=name)


def test_unwrapped_reaches_the_network_under_compile():
    _, model, _ = _tiny_trainer()
    assert unwrapped(model) is model
    assert unwrapped(torch.compile(model)) is model


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_compiled_trainer_steps_like_the_eager_one(backend):
    _, model, _ = _tiny_trainer()
    trainer = _compiled_trainer(model, backend)
    assert trainer.module is model and trainer.model is not model
    x0, t, noise = _fixed_batch()
    loss = trainer.step(x0, t=t, noise=noise)
    eager_model, eager_loss = _eager_step_on_the_whole_batch()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    grads = {name: p.grad for name, p in model.named_parameters()}
    _assert_same_gradients_and_statistics(grads, dict(model.named_buffers()), eager_model)
    saved = {name.removeprefix("model.") for name in trainer.state_tensors() if name.startswith("model.")}
    assert saved == eager_model.state_dict().keys()


def _ddp_compiled_worker(rank, world_size, init_file, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    _, model, _ = _tiny_trainer()
    trainer = _compiled_trainer(model, "aot_eager", ddp=True)
    assert trainer.module is model
    x0, t, noise = _fixed_batch()
    share = slice(rank * 4, rank * 4 + 4)
    trainer.step(x0[share], t=t[share], noise=noise[share])
    if rank == 0:
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save({"grads": grads, "buffers": dict(model.named_buffers())}, result_file)
    dist.destroy_process_group()


def test_compiled_ddp_over_two_processes_equals_one_eager_process_on_the_whole_batch(tmp_path):
    result_file = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_ddp_compiled_worker, args=(2, str(tmp_path / "init"), result_file), nprocs=2, join=True)
    ddp = torch.load(result_file)
    eager_model, _ = _eager_step_on_the_whole_batch()
    _assert_same_gradients_and_statistics(ddp["grads"], ddp["buffers"], eager_model)


def test_train_compile_writes_a_checkpoint_an_eager_run_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--batch-size", "8", "--save-every", "100", "--sample-every", "100",
              "--sample-n", "2", "--sample-steps", "2", "--no-progress"]  # fmt: skip
    train.main([*TINY, *common, "--steps", "2", "--compile", "aot_eager"])
    first, _ = load_checkpoint(str(out / "last.safetensors"))
    assert not any("_orig_mod" in name for name in first)
    train.main([*common, "--resume", "--steps", "3"])
    config = json.loads((out / "last.json").read_text())
    assert config["training"]["step"] == 3 and "--compile aot_eager" in config["training"]["commands"][0]


def test_train_refuses_an_unknown_compile_backend(tmp_path):
    with pytest.raises(ValueError, match=r"compile_backend \(--compile\): unknown torch.compile backend 'fastest'"):
        train.main([*TINY, "--out", str(tmp_path / "run"), "--compile", "fastest", "--no-progress"])
    _, model, _ = _tiny_trainer()
    with pytest.raises(ValueError, match="compile_backend"):
        _compiled_trainer(model, "fastest")


@pytest.mark.parametrize(
    "family, options",
    [("fsddim", {"base_channels": 4, "time_steps": 2}),
     ("spiking-diffusion", {"base_channels": 2, "denoiser_channels": 2, "time_steps": 2, "stage": "vq"}),
     # The second stage's loss reaches its frozen first stage through the compile wrapper.
     ("spiking-diffusion", {"base_channels": 2, "denoiser_channels": 2, "time_steps": 2, "stage": "diffusion"})],
)  # fmt: skip
def test_every_family_trains_compiled_as_eager(family, options):
    pipeline = pipeline_class(family).from_preset("digits", **options)
    losses = []
    for backend in ("aot_eager", None):
        torch.manual_seed(0)
        model = pipeline.build_model(spike_conv=False)
        trainer = train.Trainer(pipeline, model, lr=1e-2, ema_decay=0.9, grad_clip=1.0, amp=False,
                                device=torch.device("cpu"), compile_backend=backend)  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        x0 = load_digits_images()[0][:8]
        losses.append(trainer.step(x0, **({} if options.get("stage") == "vq" else {"generator": generator})))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-6)
