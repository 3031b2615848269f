"""Judge a trained model's samples.

    python -m spikekern.evaluate                                   # the embedded digits model, 1,000 samples
    python -m spikekern.evaluate --checkpoint runs/digits --json metrics.json
    python -m spikekern.evaluate --checkpoint runs/cifar --data cifar10:DIR --n 50000 \\
        --inception-weights ~/weights/pt_inception-2015-12-05.pth

Digits models (1x16x16) are judged by the shipped digit classifier (``spikekern.evaluation``): the
fraction of samples it classifies with confidence >= 0.9, the classes present, and the Fréchet distance
of its penultimate features against all 1,797 real digits. Any model gets the Inception FID when
``--inception-weights`` points to the Inception weights on disk (torch-fidelity or pytorch-fid must be
installed; nothing is downloaded), against ``--data`` images (train split, or ``--reference-split test``)
or a precomputed ``--reference-stats`` .npz. The protocol (sample count, reference) is printed and
written with the numbers, since the papers differ on it.
"""

import argparse
import json
import os

import torch

from ._cli import CUDA_GRAPH_CHOICES, check_applies, cuda_graphs_for, resolve_device, run_main
from .data import load_dataset
from .pipelines import PIPELINES
from .sample import embedded_checkpoint, generate, load_model, sampling_arguments

PROGRAM = "python -m spikekern.evaluate"
DIGIT_SHAPE = (1, 16, 16)


def _reference_images(spec, image_size, split, limit):
    dataset = load_dataset(spec, image_size=image_size, train=split == "train", hflip=False)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


def _parser():
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, choices=sorted(PIPELINES), help="family of the embedded default")
    parser.add_argument("--checkpoint", default=None, help="model.safetensors or a run directory (default: embedded)")
    parser.add_argument("--n", type=int, default=1000, help="number of samples")
    parser.add_argument("--sampler", default=None, choices=["ddpm", "ddim"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eta", type=float, default=None)
    parser.add_argument("--threshold-guided", type=float, default=None, metavar="V_TH")
    parser.add_argument("--temperature", type=float, default=None, help="spiking-diffusion's unmasking temperature")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--data", default=None, help="reference data set for the Inception FID (as --data of train)")
    parser.add_argument("--reference-split", default="train", choices=["train", "test"])
    parser.add_argument("--reference-limit", type=int, default=None, help="use at most this many reference images")
    parser.add_argument("--reference-stats", default=None, help=".npz with mu and sigma of the reference features")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights file")
    parser.add_argument("--fid-backend", default="auto", choices=["auto", "torch-fidelity", "pytorch-fid"])
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", default="auto", choices=CUDA_GRAPH_CHOICES,
                        help="replay the network from CUDA graphs while sampling (auto: on GPUs)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.n < 2 or args.batch_size < 1:
        raise ValueError(f"--n must be at least 2 and --batch-size at least 1, got {args.n} and {args.batch_size}")
    if args.inception_weights is None and (args.data or args.reference_stats):
        raise ValueError("--data and --reference-stats are the Inception FID's reference: pass --inception-weights too")
    if args.inception_weights is not None and not (args.data or args.reference_stats):
        raise ValueError("--inception-weights needs a reference: --data DATA or --reference-stats FILE")
    device = resolve_device(args.device)
    cuda_graphs = cuda_graphs_for(device, args.cuda_graphs)
    checkpoint = args.checkpoint or embedded_checkpoint(args.model or "sddpm")
    pipeline, model, config = load_model(checkpoint, device)
    is_digits = pipeline.image_shape == DIGIT_SHAPE
    if not is_digits and args.inception_weights is None:
        raise ValueError(
            f"{'x'.join(map(str, pipeline.image_shape))} images have no classifier metrics; pass --inception-weights "
            "and --data (or --reference-stats) for the Inception FID"
        )
    sampling = sampling_arguments(args)
    check_applies(pipeline.sampling_options, sampling, pipeline.name)
    settings = pipeline.sampling_options(**sampling)
    with torch.no_grad():
        images = generate(
            pipeline, model, args.n, batch_size=args.batch_size, seed=args.seed, device=device,
            progress=not args.no_progress, cuda_graphs=cuda_graphs, **sampling,
        ).float().cpu()  # fmt: skip
    results = {
        "checkpoint": checkpoint, "family": pipeline.name, "preset": config["model"].get("preset"),
        "num_samples": args.n, "seed": args.seed, **settings,
    }  # fmt: skip
    if is_digits:
        from .evaluation import classifier_report

        report = classifier_report(images)
        results["classifier"] = report | {
            "protocol": f"{args.n} samples vs all 1,797 real digits, features of the shipped digit classifier"
        }
        print(
            f"digit classifier: {report['confident_fraction']:.1%} of {args.n} samples with confidence >= "
            f"{report['confidence_threshold']}, {report['classes_present']}/10 classes present "
            f"(counts {report['confident_class_counts']}), feature FID {report['feature_fid']:.3f}"
        )
    if args.inception_weights is not None:
        from .evaluation import inception_fid

        if args.reference_stats is not None:
            reference, described = args.reference_stats, f"statistics in {args.reference_stats}"
        else:
            reference = _reference_images(args.data, pipeline.image_shape[-1], args.reference_split, args.reference_limit)
            described = f"{len(reference)} {args.reference_split} images of {args.data}"
        fid = inception_fid(images, reference, weights_path=args.inception_weights, backend=args.fid_backend, device=device)
        results["inception_fid"] = {"fid": fid, "protocol": f"{args.n} samples vs {described}, Inception pool3 2048-d"}
        print(f"Inception FID {fid:.3f} ({results['inception_fid']['protocol']})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)
    return results


if __name__ == "__main__":
    run_main(main, PROGRAM)
