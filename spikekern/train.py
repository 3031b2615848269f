"""Train a spiking diffusion model.

    python -m spikekern.train --model sddpm --data digits --out runs/digits
    python -m spikekern.train --model sddpm --preset sddpm-cifar10 --data cifar10:~/data/cifar-10-batches-py \\
        --out runs/cifar --batch-size 128 --steps 500000
    torchrun --nproc-per-node 8 -m spikekern.train ...        # DDP, batch split over the processes
    python -m spikekern.train --model spiking-diffusion --stage vq --out runs/vq      # a staged family: stage 1,
    python -m spikekern.train --model spiking-diffusion --stage diffusion --init runs/vq --out runs/sd   # then 2
    python -m spikekern.train --model sddpm --init runs/digits --time-steps 8 --out runs/t8   # fine-tune at T=8

Writes ``OUT/last.safetensors`` (weights, EMA weights, optimizer, step: what ``--resume`` continues from),
``OUT/model.safetensors`` (the EMA weights, what ``python -m spikekern.sample --checkpoint`` reads), each
with a JSON config beside it, and sample grids ``OUT/samples_<step>.png`` (none for a stage that cannot
generate). bfloat16 autocast on GPUs (``--no-amp`` turns it off), gradient clipping, an EMA of the
weights, a warmup-stable-decay learning rate (``--warmup-steps``, ``--lr-decay-steps``), a tqdm bar with the
loss and images/s. ``--compile`` runs the training forward and backward through ``torch.compile``.
On resume the weights, EMA, optimizer and step continue; the data order is drawn afresh.
"""

import argparse
import copy
import os
import shlex
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from ._cli import (
    NEURON_BACKEND_CHOICES, check_applies, fast_conv_layout, neuron_backend_for, resolve_device, run_main,
    spike_conv_for,
)  # fmt: skip
from .checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from .data import load_dataset
from .images import save_image_grid
from .functional import set_backend
from .pipelines import PIPELINES, pipeline_class, pipeline_from_config
from .pipelines.base import unwrapped

PROGRAM = "python -m spikekern.train"


class EMA:
    """An exponential moving average of a model's parameters. The decay ramps up as
    ``min(decay, (1 + step) / (10 + step))`` so short runs are not dominated by the random initial weights.

    Buffers are copied from the model, but BatchNorm statistics gathered with the current weights do not
    fit the averaged ones (in a spiking network a small shift of a BN output flips spikes): before the
    averaged model is used, ``Trainer.calibrate_ema`` measures its statistics afresh."""

    def __init__(self, model, decay):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model, step):
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1.0 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)


class WarmupStableDecay:
    """The learning rate of each optimisation step: a linear warm-up over the first ``warmup_steps``, ``lr``
    held, then a linear decay towards 0 over the last ``decay_steps`` of ``total_steps``. The held phase is
    what lets a run be resumed and extended (``--steps`` raised) before the decay starts; the decay is what
    the EMA weights gain most from at the end of a run."""

    def __init__(self, lr, *, total_steps, warmup_steps=0, decay_steps=0):
        if lr <= 0:
            raise ValueError(f"--lr must be positive, got {lr}")
        for name, value in (("--warmup-steps", warmup_steps), ("--lr-decay-steps", decay_steps)):
            if value < 0:
                raise ValueError(f"{name} must be at least 0, got {value}")
        if warmup_steps + decay_steps > total_steps:
            raise ValueError(
                f"--warmup-steps {warmup_steps} and --lr-decay-steps {decay_steps} do not fit in --steps {total_steps}"
            )
        self.lr, self.total_steps, self.warmup_steps, self.decay_steps = lr, total_steps, warmup_steps, decay_steps

    def __call__(self, step):
        """The rate of step ``step`` (1 for the first); the last step of the decay still moves the weights."""
        remaining = self.total_steps - step + 1
        if remaining <= self.decay_steps:
            return self.lr * remaining / (self.decay_steps + 1)
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        return self.lr


class Trainer:
    """One optimisation step at a time: the unit the command drives and the DDP test checks. ``lr`` is a
    rate or a schedule (a callable of the 1-based step, such as ``WarmupStableDecay``)."""

    def __init__(self, pipeline, model, *, lr, ema_decay, grad_clip, amp, device, compile_backend=None):
        if compile_backend is not None and compile_backend not in torch.compiler.list_backends(exclude_tags=()):
            raise ValueError(f"compile_backend (--compile): unknown torch.compile backend {compile_backend!r}; "
                             f"choose one of {torch.compiler.list_backends(exclude_tags=())}")  # fmt: skip
        self.pipeline = pipeline
        self.module = unwrapped(model)
        # Outside DDP's wrapper, as PyTorch advises: dynamo then splits the graph at DDP's gradient buckets.
        self.model = model if compile_backend is None else torch.compile(model, backend=compile_backend)
        self.lr_at = lr if callable(lr) else (lambda step: lr)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr_at(1))
        self.ema = EMA(self.module, ema_decay)
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"--grad-clip must be positive, got {grad_clip}")
        self.grad_clip = grad_clip
        self.amp = amp and device.type == "cuda"
        self.device = device
        self.step_count = 0

    def step(self, x0, **loss_options):
        """One step on the batch ``x0`` (this process's share under DDP); returns the loss tensor (no sync)."""
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.pipeline.loss(self.model, x0, **loss_options)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count + 1)
        self.optimizer.step()
        self.step_count += 1
        self.ema.update(self.module, self.step_count)
        return loss.detach()

    @torch.no_grad()
    def calibrate_ema(self, batches, num_batches, **loss_options):
        """Recompute the BatchNorm statistics of the EMA model as plain averages over ``num_batches``
        training forwards of its own (the loss's forward: random steps and noise), as SWA's ``update_bn``.
        Only the BatchNorms being trained are measured (a frozen part, such as a first stage, keeps its own).
        Under DDP every process must call it (the statistics are global)."""
        model = self.ema.model
        trained = {
            name for name, module in self.module.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and any(p.requires_grad for p in module.parameters(recurse=False))
        }  # fmt: skip
        norms = [module for name, module in model.named_modules() if name in trained]
        if not norms:
            return
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
        model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            for _ in range(num_batches):
                self.pipeline.loss(model, next(batches).to(self.device, non_blocking=True), **loss_options)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()

    def state_tensors(self):
        tensors = {f"model.{k}": v for k, v in self.module.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.model.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            tensors |= {f"optimizer.{index}.{k}": v for k, v in state.items()}
        return tensors

    def load_state_tensors(self, tensors, step):
        load_state(self.module, tensors, "model.")
        load_state(self.ema.model, tensors, "ema.")
        state = {}
        for name, tensor in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = tensor
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self.step_count = step


def _distributed_setup(device_name):
    """``(rank, world_size, device)``; joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def _batches(dataset, batch_size, rank, world_size, seed, workers):
    """Endless batches of this process's share; every pass over the data reshuffles."""
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
    )  # fmt: skip
    if len(loader) == 0:
        raise ValueError(
            f"the data set has {len(dataset)} images, fewer than one batch of {batch_size} per process"
        )
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for images, _ in loader:
            yield images
        epoch += 1


def _parser():
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, choices=sorted(PIPELINES),
                        help="diffusion family (default: sddpm; with --resume, the run's own)")  # fmt: skip
    parser.add_argument("--preset", default=None, help="network preset (default: the family's digits preset)")
    parser.add_argument("--neuron", default=None, choices=["if", "lif", "relu"],
                        help="override the preset's neuron; relu trains the ANN counterpart")  # fmt: skip
    parser.add_argument("--time-steps", type=int, default=None, help="override the preset's spike steps T")
    parser.add_argument("--base-channels", type=int, default=None, help="override the preset's base width")
    parser.add_argument("--denoiser-channels", type=int, default=None,
                        help="spiking-diffusion: the stage-2 denoiser's own base width")  # fmt: skip
    parser.add_argument("--stage", default=None,
                        help="training stage of a staged family (spiking-diffusion: vq, then diffusion)")  # fmt: skip
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint's weights (same family and network, T may differ; e.g. a "
                             "later stage from the earlier stage's model.safetensors); the rest keep their "
                             "initialisation")  # fmt: skip
    parser.add_argument("--data", default="digits", help="digits | mnist:DIR | fashion-mnist:DIR | cifar10:DIR | celeba:DIR | folder:DIR")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--steps", type=int, default=10000, help="optimisation steps in total (including resumed ones)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size (split over DDP processes)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up of the learning rate over these first steps")
    parser.add_argument("--lr-decay-steps", type=int, default=0,
                        help="linear decay of the learning rate to 0 over these last steps of --steps (0: none)")  # fmt: skip
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--sample-n", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sample grids")
    parser.add_argument("--sampling-defaults", default=None,
                        help="what `spikekern.sample` uses for this model: ddim:50, ddim:50:1, ddpm, or temperature:0.6 for "
                             "spiking-diffusion (default: the family's)")  # fmt: skip
    parser.add_argument("--calibration-batches", type=int, default=16,
                        help="batches over which the EMA model's BatchNorm statistics are measured before each save")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--spike-conv", default="auto", choices=["auto", "on", "off"],
                        help="SpikeConv2d for convolutions reading spikes (auto: on GPUs)")  # fmt: skip
    parser.add_argument("--neuron-backend", default="auto", choices=NEURON_BACKEND_CHOICES,
                        help="the neurons' backend (auto: the best per call; compiled: the CPU fast path, "
                             "seconds of compilation per neuron configuration)")  # fmt: skip
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the training forward and backward with this backend (default inductor; "
                             "minutes of compilation at the start; on a CPU, with --neuron-backend compiled)")  # fmt: skip
    parser.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on GPUs")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _check_positive(args, *names):
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


SAMPLING_DEFAULTS_FORMS = "'ddpm', 'ddim:STEPS', 'ddim:STEPS:ETA' or 'temperature:T'"


def parse_sampling_defaults(text):
    """``ddim:50`` -> {"sampler": "ddim", "steps": 50, "eta": 0.0}; ``ddim:50:1`` sets eta too;
    ``ddpm`` -> every step; ``temperature:0.6`` -> {"temperature": 0.6} (Spiking-Diffusion's unmasking)."""
    sampler, *rest = text.split(":")
    if sampler == "temperature" and len(rest) == 1:
        try:
            return {"temperature": float(rest[0])}
        except ValueError:
            pass
    try:
        steps = int(rest[0]) if rest else None
        eta = float(rest[1]) if len(rest) == 2 else 0.0
    except ValueError:
        steps = None
    if sampler not in ("ddpm", "ddim") or (sampler == "ddim") != (steps is not None) or len(rest) > 2:
        raise ValueError(f"--sampling-defaults must be {SAMPLING_DEFAULTS_FORMS}, got {text!r}")
    return {"sampler": sampler, "steps": steps, "eta": eta}


def load_initial_weights(model, pipeline, path):
    """Load the weights of the checkpoint at ``path`` (``--init``) into ``model``: a checkpoint of the same
    family and network config (``pipeline.init_differences``), every weight of which must fit; the model's
    other weights (e.g. a second stage's network) keep their initialisation. Its EMA weights where it has
    them. Returns the checkpoint's config."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    tensors, config = load_checkpoint(path)
    if config.get("family") != pipeline.name:
        raise CheckpointError(f"--init {path!r} holds a {config.get('family')!r} model, not {pipeline.name!r}")
    differing = pipeline.init_differences(config)
    if differing:
        raise CheckpointError(
            f"--init {path!r} has another network config ({', '.join(differing)} differ); "
            "pass its --preset and overrides"
        )
    prefix = "ema." if any(name.startswith("ema.") for name in tensors) else "model."
    initial = {prefix + name: tensor for name, tensor in model.state_dict().items()}
    load_state(model, initial | tensors, prefix, source=f"--init checkpoint {path!r}")
    return config


def main(argv=None):
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    _check_positive(args, "steps", "batch_size", "save_every", "sample_every", "sample_n", "sample_steps", "calibration_batches")
    args.lr_schedule = WarmupStableDecay(
        args.lr, total_steps=args.steps, warmup_steps=args.warmup_steps, decay_steps=args.lr_decay_steps
    )
    rank, world_size, device = _distributed_setup(args.device)
    try:
        _train(args, rank, world_size, device)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _train(args, rank, world_size, device):
    if args.batch_size % world_size:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world_size} processes")
    last_path = os.path.join(args.out, "last.safetensors")
    resumed = None
    if args.resume and args.init:
        raise ValueError("--init starts a new run; --resume continues one: pass only one of them")
    if args.resume:
        network_options = ("preset", "neuron", "time_steps", "base_channels", "denoiser_channels", "stage")
        given = [f"--{name.replace('_', '-')}" for name in network_options if getattr(args, name) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)}: --resume continues the run's own network; these choose a new run's "
                "(start one with --init to change them)"
            )
        if not os.path.isfile(last_path):
            raise ValueError(f"--resume: no checkpoint at {last_path}")
        resumed = load_checkpoint(last_path)
        pipeline = pipeline_from_config(resumed[1])
        if args.model is not None and pipeline.name != args.model:
            raise CheckpointError(f"--resume: {last_path} is a {pipeline.name!r} run, not {args.model!r}")
    else:
        model_family = args.model or "sddpm"
        family = pipeline_class(model_family)
        overrides = dict(
            neuron=args.neuron, time_steps=args.time_steps, base_channels=args.base_channels,
            denoiser_channels=args.denoiser_channels, stage=args.stage,
        )  # fmt: skip
        overrides = {name: value for name, value in overrides.items() if value is not None}
        check_applies(family.from_preset, overrides, model_family)
        pipeline = family.from_preset(args.preset or family.default_preset, **overrides)
        if args.init is None and getattr(pipeline, "requires_init", None):
            raise ValueError(pipeline.requires_init)
    if args.sampling_defaults:  # on a resumed run too: what sampling works best is often known late
        sampling = parse_sampling_defaults(args.sampling_defaults)
        check_applies(pipeline.sampling_options, sampling, pipeline.name)
        pipeline.sampling_options(**sampling)  # a family with other samplers refuses them here
        pipeline.sampling = sampling
    dataset = load_dataset(args.data, image_size=pipeline.image_shape[-1])
    if (dataset.channels, dataset.image_size, dataset.image_size) != pipeline.image_shape:
        raise ValueError(
            f"--data {args.data} gives {dataset.channels}x{dataset.image_size}x{dataset.image_size} images but the "
            f"model takes {'x'.join(map(str, pipeline.image_shape))}; choose a matching --preset"
        )

    torch.manual_seed(args.seed)  # the same initial weights in every process
    model = pipeline.build_model(spike_conv=spike_conv_for(device, args.spike_conv)).to(device)
    model = fast_conv_layout(model, device)
    set_backend(model, neuron_backend_for(device, args.neuron_backend))
    # The commands that made the --init weights come first: the record says how the whole model was trained.
    commands = []
    if args.init is not None:
        commands = load_initial_weights(model, pipeline, args.init).get("training", {}).get("commands", [])
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(
        pipeline, model, lr=args.lr_schedule, ema_decay=args.ema_decay, grad_clip=args.grad_clip, amp=not args.no_amp,
        device=device, compile_backend=args.compile,
    )  # fmt: skip
    command = " ".join([PROGRAM, *map(shlex.quote, args.argv)])
    history = {"images_seen": 0, "elapsed_s": 0.0, "commands": [*commands, command]}
    settings = _training_settings(args)
    if resumed is not None:
        training = resumed[1].get("training", {})
        trainer.load_state_tensors({k: v.to(device) for k, v in resumed[0].items()}, training.get("step", 0))
        history = {key: training.get(key, history[key]) for key in history}
        history["commands"] = [*training.get("commands", []), command]  # every invocation that trained it
        if trainer.step_count >= args.steps:
            # A finished run resumed for new sampling defaults: its settings are those it trained with.
            settings = {key: training.get(key, value) for key, value in settings.items()}
    torch.manual_seed(args.seed * 1000 + rank + 7919 * trainer.step_count)  # distinct noise per process and resume
    batches = _batches(dataset, args.batch_size // world_size, rank, world_size, args.seed + trainer.step_count, args.workers)

    def save():
        record = {"step": trainer.step_count, **settings, "loss": float(loss_mean), **history}
        config = pipeline.config() | {"training": record}
        save_checkpoint(last_path, trainer.state_tensors(), config)
        weights = {f"model.{k}": v for k, v in trainer.ema.model.state_dict().items()}
        save_checkpoint(os.path.join(args.out, "model.safetensors"), weights, config)

    # DDIM grids for the Gaussian families; the others sample with their own defaults, and a stage that
    # cannot generate (spiking-diffusion's VQ-SVAE) writes none.
    grid_options = {"sampler": "ddim", "steps": args.sample_steps} if "sampler" in pipeline.sampling else {}

    def sample_grid():
        generator = torch.Generator(device).manual_seed(args.seed)
        images = pipeline.sample(trainer.ema.model, args.sample_n, generator=generator, device=device, **grid_options)
        save_image_grid(images, os.path.join(args.out, f"samples_{trainer.step_count:07d}.png"), scale=_grid_scale(pipeline))

    def save_and_sample(saving, sampling):
        sampling = sampling and getattr(pipeline, "can_sample", True)
        if saving or sampling:
            trainer.calibrate_ema(batches, args.calibration_batches)
        if rank == 0 and saving:
            save()
        if rank == 0 and sampling:
            sample_grid()

    main_process = rank == 0
    progress = tqdm(
        total=args.steps, initial=trainer.step_count, desc=f"training {pipeline.name}", unit="step",
        disable=args.no_progress or not main_process, dynamic_ncols=True,
    )  # fmt: skip
    loss_mean = resumed[1].get("training", {}).get("loss", float("nan")) if resumed else float("nan")
    loss_sum, loss_count = torch.zeros((), device=device), 0
    window_start, window_images = time.perf_counter(), 0
    while trainer.step_count < args.steps:
        images = next(batches).to(device, non_blocking=True)
        loss_sum += trainer.step(images)
        loss_count += 1
        window_images += images.shape[0] * world_size
        progress.update(1)
        step = trainer.step_count
        if step % 20 == 0 or step == args.steps:
            loss_mean = (loss_sum / loss_count).item()  # the one host sync, every 20 steps
            elapsed = time.perf_counter() - window_start
            history["elapsed_s"] += elapsed
            history["images_seen"] += window_images
            progress.set_postfix(loss=f"{loss_mean:.4f}", img_per_s=f"{window_images / elapsed:.1f}")
            loss_sum.zero_()
            loss_count, window_start, window_images = 0, time.perf_counter(), 0
        if step < args.steps:  # the last step's save and grid follow the loop
            save_and_sample(step % args.save_every == 0, step % args.sample_every == 0)
    progress.close()
    # Also when a resumed run is already complete: with new sampling defaults, say.
    save_and_sample(True, True)


def _grid_scale(pipeline):
    return max(1, 128 // pipeline.image_shape[-1])


def _training_settings(args):
    return {
        "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
        "lr_decay_steps": args.lr_decay_steps, "ema_decay": args.ema_decay, "grad_clip": args.grad_clip,
        "data": args.data, "seed": args.seed,
    }  # fmt: skip


if __name__ == "__main__":
    run_main(main, PROGRAM)
