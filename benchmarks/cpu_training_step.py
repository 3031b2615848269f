"""The training step of `python -m spikekern.train --data digits` (SDDPM or FSDDIM) on a CPU, per neuron backend:
the eager reference ("torch", the default) against its torch.compile'd form ("compiled",
``--neuron-backend compiled``); ``--compile`` also runs the whole step through torch.compile, as
``train --compile``. Like the train command, it runs the convolutions channels-last and keeps freed memory
(``--plain`` measures without either, as the commands ran before). The GPU harness (``pytest benchmarks``) times CPUs only to smoke-test
itself; this script is what the CPU numbers in docs/neuron_ops.md come from.

    OMP_NUM_THREADS=1 python benchmarks/cpu_training_step.py --base-channels 32 48 --json out.json
    OMP_NUM_THREADS=1 python benchmarks/cpu_training_step.py --model fsddim --base-channels 32
    OMP_NUM_THREADS=1 python benchmarks/cpu_training_step.py --base-channels 48 --neuron-backends compiled --compile
    OMP_NUM_THREADS=1 python benchmarks/cpu_training_step.py --base-channels 48 --neuron-backends compiled --plain
"""

import argparse
import json
import statistics
import sys
import time

import torch
from bench_utils import environment_record

from spikekern._cli import fast_conv_layout, keep_freed_memory
from spikekern.functional import set_backend
from spikekern.pipelines import pipeline_class
from spikekern.train import Trainer


def step_seconds(model_family, base_channels, batch_size, neuron_backend, compile_backend, warmup, rounds, plain):
    """Median wall seconds of ``rounds`` Trainer steps (forward, backward, clipping, Adam, EMA) after
    ``warmup`` untimed ones (which compile, for "compiled" and a ``compile_backend``)."""
    pipeline = pipeline_class(model_family).from_preset("digits", base_channels=base_channels)
    torch.manual_seed(0)
    model = pipeline.build_model(spike_conv=False)
    if not plain:
        model = fast_conv_layout(model, torch.device("cpu"))
    set_backend(model, neuron_backend)
    trainer = Trainer(pipeline, model, lr=3e-4, ema_decay=0.999, grad_clip=1.0, amp=False, device=torch.device("cpu"),
                      compile_backend=compile_backend)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch_size, *pipeline.image_shape, generator=generator) * 2 - 1
    for _ in range(warmup):
        trainer.step(x0, generator=generator)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.step(x0, generator=generator)
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["sddpm", "fsddim"], default="sddpm")
    parser.add_argument("--base-channels", type=int, nargs="+", default=[32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--neuron-backends", nargs="+", default=["torch", "compiled"])
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the whole step too (train --compile)")  # fmt: skip
    parser.add_argument("--plain", action="store_true", help="NCHW convolutions and glibc's default memory reuse")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if not args.plain:
        keep_freed_memory()
    results = []
    for base_channels in args.base_channels:
        for backend in args.neuron_backends:
            seconds, parameters = step_seconds(
                args.model, base_channels, args.batch_size, backend, args.compile, args.warmup, args.rounds, args.plain
            )
            results.append({"base_channels": base_channels, "parameters": parameters, "neuron_backend": backend,
                            "median_step_s": seconds, "images_per_s": args.batch_size / seconds})  # fmt: skip
            label = backend if args.compile is None else f"{backend}, step compiled ({args.compile})"
            print(f"width {base_channels:3d} ({parameters / 1e6:.2f} M)  {label:<9} {seconds:6.3f} s/step  "
                  f"{args.batch_size / seconds:6.1f} images/s", flush=True)  # fmt: skip
    record = {
        "command": "python benchmarks/cpu_training_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment_record(torch.device("cpu")),
        "model": args.model,
        "batch_size": args.batch_size,
        "compile_backend": args.compile,
        "channels_last_and_kept_memory": not args.plain,
        "time_steps": 4,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)
    return record


if __name__ == "__main__":
    main()
