"""Environment report: ``python -m spikekern.info`` prints versions, what was built, and which backend
each op would use here."""

import importlib.metadata
import platform

import torch

from ._extension import cuda_extension_error
from .ops import BACKENDS, available_backends
from .ops._dispatch import DEFAULT_BACKEND_PREFERENCE, select_backend
from .ops.spike_pack import SPIKE_BACKEND_PREFERENCE

# Op groups that share the backend rules, and the order in which "auto" tries the fast backends.
OP_GROUPS = (
    ("multi-step neuron ops (if/lif/plif/leaky) and conv_bn_lif_inference", DEFAULT_BACKEND_PREFERENCE),
    ("spike ops (pack/spike_linear/spike_conv2d)", SPIKE_BACKEND_PREFERENCE),
)


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> str:
    lines = [
        f"spikekern {_version('spikekern')}",
        f"python {platform.python_version()} on {platform.machine()}",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"triton {_version('triton')}",
    ]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})")
    else:
        lines.append("GPU: none visible")
    lines.append(f"CUDA extension spikekern._C: {cuda_extension_error() or 'built and loaded'}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            probe = torch.empty(1, device=device, dtype=dtype)
            reasons = available_backends(probe)
            for group, preference in OP_GROUPS:
                default = select_backend("", probe, preference=preference)
                lines.append(f"{group} on {device} {str(dtype).replace('torch.', '')}: default backend {default!r}")
            for name in BACKENDS:
                status = "available" if reasons[name] is None else "unavailable: " + reasons[name]
                if name == "compiled" and reasons[name] is None:
                    status += " (neuron ops only, when asked for: seconds of compilation per configuration)"
                lines.append(f"    {name:<8} {status}")
    return "\n".join(lines)


def main():
    print(report())


if __name__ == "__main__":
    main()
