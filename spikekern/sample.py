"""Sample images from a trained spiking diffusion model.

    python -m spikekern.sample                                  # the embedded digits model, 64 samples
    python -m spikekern.sample --checkpoint runs/cifar/model.safetensors --sampler ddim --steps 50
    python -m spikekern.sample --threshold-guided 0.997 --out samples.npy
    python -m spikekern.sample --checkpoint runs/spiking-diffusion --temperature 0.8

With no ``--checkpoint`` the model family's embedded default (a digits model shipped in the package) is
used. ``.png`` writes a grid, ``.npy`` the images in [0, 1] as float32 ``[n, C, H, W]``. Prints the
per-layer firing rates and the spike-count energy estimate against the ANN counterpart.
"""

import argparse
import contextlib
import os
import time
from importlib import resources

import numpy as np
import torch

from ._cli import (
    CUDA_GRAPH_CHOICES, check_applies, cuda_graphs_for, fast_conv_layout, resolve_device, run_main, spike_conv_for,
)  # fmt: skip
from .checkpoint import CheckpointError, load_checkpoint, load_state
from .energy import ActivityMonitor
from .images import save_image_grid
from .pipelines import PIPELINES, pipeline_from_config

PROGRAM = "python -m spikekern.sample"


def embedded_checkpoint(family):
    """The path of the family's embedded default checkpoint (shipped in ``spikekern/assets``)."""
    path = resources.files("spikekern") / "assets" / f"{family}-digits.safetensors"
    if not path.is_file():
        raise ValueError(f"no embedded default checkpoint for --model {family}; pass --checkpoint")
    return str(path)


def load_model(checkpoint, device, spike_conv="auto"):
    """``(pipeline, model in eval mode, config)`` from a checkpoint file or a run directory."""
    if os.path.isdir(checkpoint):
        checkpoint = os.path.join(checkpoint, "model.safetensors")
    tensors, config = load_checkpoint(checkpoint)
    pipeline = pipeline_from_config(config)
    model = pipeline.build_model(spike_conv=spike_conv_for(device, spike_conv))
    prefix = "ema." if any(name.startswith("ema.") for name in tensors) else "model."
    load_state(model, tensors, prefix, source=f"checkpoint {checkpoint!r}")
    return pipeline, fast_conv_layout(model.to(device), device).eval(), config


def generate(pipeline, model, n, *, batch_size, seed, device, progress=True, cuda_graphs=False, **sampling):
    """``n`` images in [-1, 1], in batches; the same seed gives the same images for any batch size
    that divides the work the same way (each batch draws from one generator in order). ``cuda_graphs``
    replays the network from CUDA graphs, captured anew for each batch."""
    generator = torch.Generator(device).manual_seed(seed)
    batches = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        batches.append(
            pipeline.sample(
                model, count, generator=generator, device=device, progress=progress, cuda_graphs=cuda_graphs,
                **sampling,
            )
        )  # fmt: skip
    return torch.cat(batches)


def ann_macs_per_image(pipeline, device):
    """Multiply-accumulates of one forward of the ANN counterpart (ReLU, one step) on one image; None for
    a family without one."""
    if not hasattr(pipeline.model_config, "ann_counterpart"):
        return None
    config = pipeline.model_config.ann_counterpart()
    ann = type(pipeline)(config).build_model(spike_conv=False).to(device).eval()
    with torch.no_grad(), ActivityMonitor(ann) as monitor:
        ann(torch.zeros(1, *pipeline.image_shape, device=device), torch.zeros(1, dtype=torch.long, device=device))
    return monitor.report.macs


def sampling_arguments(args):
    """The sampling options given on the command line (the pipeline fills in the rest)."""
    given = {
        "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "v_threshold": args.threshold_guided,
        "temperature": args.temperature,
    }  # fmt: skip
    return {name: value for name, value in given.items() if value is not None}


def _parser():
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, choices=sorted(PIPELINES),
                        help="model family (default: the checkpoint's; sddpm for the embedded default)")  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help="model.safetensors or a run directory (default: embedded)")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--sampler", default=None, choices=["ddpm", "ddim"], help="default: the checkpoint's")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (0: deterministic)")
    parser.add_argument("--threshold-guided", type=float, default=None, metavar="V_TH",
                        help="threshold-guided sampling: this firing threshold in every neuron (e.g. 0.997)")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=None,
                        help="spiking-diffusion: softmax temperature of the unmasking (0: the likeliest token)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="samples.png", help=".png grid or .npy array")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--spike-conv", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--cuda-graphs", default="auto", choices=CUDA_GRAPH_CHOICES,
                        help="replay the network from CUDA graphs (auto: on GPUs when there is no report)")  # fmt: skip
    parser.add_argument("--no-report", action="store_true", help="skip the firing-rate and energy report")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        raise ValueError(f"--n and --batch-size must be at least 1, got {args.n} and {args.batch_size}")
    suffix = os.path.splitext(args.out)[1].lower()
    if suffix not in (".png", ".npy"):
        raise ValueError(f"--out must end in .png or .npy, got {args.out!r}")
    device = resolve_device(args.device)
    cuda_graphs = cuda_graphs_for(device, args.cuda_graphs, reporting=not args.no_report)
    checkpoint = args.checkpoint or embedded_checkpoint(args.model or "sddpm")
    pipeline, model, config = load_model(checkpoint, device, args.spike_conv)
    if args.model is not None and pipeline.name != args.model:
        raise CheckpointError(f"--checkpoint {checkpoint!r} holds a {pipeline.name!r} model, not {args.model!r}")
    sampling = sampling_arguments(args)
    check_applies(pipeline.sampling_options, sampling, pipeline.name)
    pipeline.sampling_options(**sampling)  # refuse bad options before loading anything else
    graphs = ", the network replayed from CUDA graphs" if cuda_graphs else ""
    print(f"{pipeline.name} {config['model'].get('preset') or ''} from {checkpoint} on {device}{graphs}")
    started = time.perf_counter()
    with torch.no_grad(), ActivityMonitor(model) if not args.no_report else contextlib.nullcontext() as monitor:
        images = generate(
            pipeline, model, args.n, batch_size=args.batch_size, seed=args.seed, device=device,
            progress=not args.no_progress, cuda_graphs=cuda_graphs, **sampling,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if suffix == ".npy":
        np.save(args.out, ((images.float().cpu() + 1) / 2).clamp(0, 1).numpy().astype(np.float32))
    else:
        save_image_grid(images.cpu(), args.out, scale=max(1, 128 // pipeline.image_shape[-1]))
    print(f"wrote {args.n} samples to {args.out} in {seconds:.1f} s ({args.n / seconds:.1f} images/s)")
    if monitor is not None and pipeline.is_spiking:
        print(monitor.report.format(ann_macs_per_image(pipeline, device)))


if __name__ == "__main__":
    run_main(main, PROGRAM)
