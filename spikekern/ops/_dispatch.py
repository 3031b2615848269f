"""Backend selection shared by the ops: each backend says why it cannot take an input.

``backend=None`` picks the first usable of CUDA C++, Triton (CUDA tensors only) and the PyTorch
reference; naming a backend that cannot run raises with its reason instead of falling back silently.
``"compiled"`` is the neuron ops' CPU fast path, never chosen by ``None``: the reference compiled by
``torch.compile`` (inductor's C++ loops fuse each op's elementwise steps), which costs seconds of
compilation per neuron configuration, so it is for long runs (``--neuron-backend compiled`` of train).
"""

import functools
import importlib.util
import os
import shutil

import torch

from .._extension import cuda_extension_error

BACKENDS = ("cuda", "triton", "torch", "compiled")
# What an op implements unless it says otherwise: only the neuron ops have the compiled reference.
KERNEL_BACKENDS = ("cuda", "triton", "torch")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _triton_installed():
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel_dtype_error(x):
    if x.dtype not in KERNEL_DTYPES:
        return f"{x.dtype} is not supported by the kernels (float32, float16, bfloat16); use backend='torch'"
    return None


def _triton_error(x):
    if not _triton_installed():
        return "triton is not installed (pip install triton)"
    if x.device.type == "cpu":
        if not triton_interpreter_enabled():
            return "CPU tensors run on Triton only under TRITON_INTERPRET=1 (the interpreter, for tests)"
        if x.dtype == torch.bfloat16:
            return "the Triton interpreter has no bfloat16"
    elif x.device.type != "cuda":
        return f"Triton kernels run on CUDA devices, not {x.device.type}"
    return _kernel_dtype_error(x)


def _cuda_error(x):
    if x.device.type != "cuda":
        return f"the CUDA kernels need a CUDA tensor, got a {x.device.type} tensor"
    return cuda_extension_error() or _kernel_dtype_error(x)


def _compiled_error(x):
    if x.device.type != "cpu":
        return f"the compiled reference is the CPU fast path; {x.device.type} tensors have their own kernels"
    if os.environ.get("CXX") is None and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        return "torch.compile needs a C++ compiler on the PATH (g++ or clang++) for CPU code"
    return None


_ERRORS = {"cuda": _cuda_error, "triton": _triton_error, "torch": lambda x: None, "compiled": _compiled_error}


def _error(name, x, kernels):
    return _ERRORS[name](x) if name in kernels else "not implemented for this op yet"


def available_backends(x: torch.Tensor, kernels=BACKENDS):
    """For an input tensor: ``{backend: None if it can run, else the reason it cannot}``.

    kernels: the backends the op implements (all of them for the neuron ops, the default)."""
    return {name: _error(name, x, kernels) for name in BACKENDS}


def check_backend_name(backend):
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {list(BACKENDS)}, got {backend!r}")


# Auto's order for CUDA tensors, unless an op family says otherwise (the spike ops put Triton first).
DEFAULT_BACKEND_PREFERENCE = ("cuda", "triton")


def select_backend(requested: str, x: torch.Tensor, kernels=KERNEL_BACKENDS, preference=DEFAULT_BACKEND_PREFERENCE) -> str:
    """The backend that runs ``x``: ``requested`` if it can (else raise why), or the first usable one of
    ``preference`` for CUDA tensors, else the reference. kernels: the backends the op implements."""
    if requested:
        error = _error(requested, x, kernels)
        if error is not None:
            raise RuntimeError(f"backend={requested!r} cannot run this input: {error}")
        return requested
    if x.device.type == "cuda":
        for name in preference:
            if _error(name, x, kernels) is None:
                return name
    return "torch"
