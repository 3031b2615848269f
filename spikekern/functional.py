"""Whole-network helpers, as in SpikingJelly's ``functional``: reset state, step mode, backend."""

import torch

from .nn._modes import STEP_MODES, HasBackend
from .ops._dispatch import check_backend_name


def reset_net(net: torch.nn.Module):
    """Call ``reset()`` on every stateful module of ``net`` (spikekern's and any other with a ``reset``
    method, such as SpikingJelly's), so the next call starts from fresh membranes."""
    for module in net.modules():
        reset = getattr(module, "reset", None)
        if callable(reset):
            reset()


def set_step_mode(net: torch.nn.Module, step_mode: str):
    """Set ``step_mode`` ('s' or 'm') on every module of ``net`` that has one."""
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    for module in net.modules():
        if hasattr(module, "step_mode"):
            module.step_mode = step_mode


def set_backend(net: torch.nn.Module, backend):
    """Choose the backend (None for the best available, "cuda", "triton", "torch" or "compiled") of every
    spikekern module in ``net``: neurons (SpikingJelly-style and Leaky) and spike layers. "compiled", the CPU
    fast path, exists for the neurons only; the other modules keep their own choice then. Returns how
    many modules were set."""
    check_backend_name(backend)
    modules = [
        module for module in net.modules()
        if isinstance(module, HasBackend) and (backend is None or backend in module.supported_backends)
    ]  # fmt: skip
    for module in modules:
        module.backend = backend
    return len(modules)
