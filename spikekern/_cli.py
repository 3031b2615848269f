"""What the command-line programs share: one clear error line instead of a traceback, device choice."""

import ctypes
import inspect
import sys

import torch

from .checkpoint import CheckpointError
from .ops import BACKENDS, available_backends

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, CheckpointError)


# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory():
    """Make glibc keep freed memory for the next allocation instead of handing it back to the OS.

    By default glibc maps every block above its mmap threshold (32 MB at most) anew and unmaps it when it
    is freed, so every large activation of every network call page-faults its memory in again: about a
    tenth of a sampling run's time on a small CPU. Serving all blocks from the heap, never trimmed, keeps
    the pages of one call for the next; the process keeps its peak memory until it exits, which suits a
    command. Does nothing where the C library is not glibc. Returns whether the setting took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def run_main(main, program, argv=None):
    """Run ``main(argv)``; a user error (bad argument, missing data, corrupt checkpoint) prints one line
    ``<program>: error: <message>`` and exits with status 2, as argparse does for its own errors. The
    commands run with ``keep_freed_memory``."""
    keep_freed_memory()
    try:
        return main(argv)
    except USER_ERRORS as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def resolve_device(name):
    """``auto`` -> CUDA when available, else CPU; any other name is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here")
    return device


def fast_conv_layout(model, device):
    """``model`` with channels-last convolution weights on a CPU, where oneDNN convolves them faster and the
    activations follow their layout: a fifth of a width-48 digits U-Net's sampling time and a twelfth of
    its training step on two cores. Elsewhere ``model`` as it is (not measured on GPUs yet)."""
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def spike_conv_for(device, choice):
    """Whether convolutions that read spikes run as SpikeConv2d: by default on GPUs, where the
    spike-driven kernels and 1-bit saved inputs pay off; on a CPU the reference path would only add work."""
    if choice == "auto":
        return device.type == "cuda"
    return choice == "on"


NEURON_BACKEND_CHOICES = ("auto", *BACKENDS)


def neuron_backend_for(device, choice):
    """The backend every neuron runs on (``--neuron-backend``): None for ``auto`` (the best per call), else
    the named one, refused here with its reason when it cannot run on ``device``."""
    if choice == "auto":
        return None
    error = available_backends(torch.empty(0, device=device))[choice]
    if error is not None:
        raise ValueError(f"--neuron-backend {choice} cannot run on {device}: {error}")
    return choice


CUDA_GRAPH_CHOICES = ("auto", "on", "off")


def cuda_graphs_for(device, choice, reporting=False):
    """Whether sampling replays the network from CUDA graphs (``--cuda-graphs``): by default on GPUs,
    unless the firing-rate report is on, whose hooks read every layer's spikes on the host, which a replayed
    graph would skip."""
    if choice == "auto":
        return device.type == "cuda" and not reporting
    if choice == "on":
        if device.type != "cuda":
            raise ValueError(f"--cuda-graphs on needs a CUDA device, got {device}")
        if reporting:
            raise ValueError("--cuda-graphs on: the firing-rate report reads spikes at every layer, which a replayed "
                             "graph skips; add --no-report")  # fmt: skip
        return True
    return False


def check_applies(function, options, family):
    """Refuse, by option name, command-line options that ``function`` of the ``family`` pipeline does not
    take (``--temperature`` for a Gaussian diffusion, ``--stage`` for a one-stage family), instead of a
    TypeError about keyword arguments."""
    parameters = inspect.signature(function).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unsupported = [f"--{name.replace('_', '-')}" for name in options if name not in parameters]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} does not apply to the {family} model")
