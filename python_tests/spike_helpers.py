"""What the spike-op tests share: backends that run here, tolerances, a forward+backward runner and
the AOT case maker for kernels that read packed words."""

import pytest
import torch
from conftest import DEVICE, assert_close_verbose
from triton_aot import case

from spikekern.ops import available_backends

BACKEND_ERRORS = available_backends(torch.empty(1, device=DEVICE))
TRITON_USABLE = BACKEND_ERRORS["triton"] is None
FAST_BACKENDS = [name for name in ("cuda", "triton") if BACKEND_ERRORS[name] is None]
# Relative to the output's scale; in float16/bfloat16 that is 4 units of the dtype's rounding.
FLOAT_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GPU_ONLY = pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16 needs a GPU (the Triton interpreter has none)")
PACKED_POINTERS = {"packed_ptr": "*i32", "invalid_ptr": "*i32"}


def forward_backward(function, *inputs_and_grad_out):
    """Output and the gradients of the inputs for the given output gradient (the last argument)."""
    *inputs, grad_out = inputs_and_grad_out
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = function(*leaves)
    out.backward(grad_out)
    return out.detach(), [leaf.grad for leaf in leaves]


def check_gradients_of_subset(function, reference, inputs, grad_out, wanted):
    """Runs ``function(s, weight, bias)`` with only the inputs named in ``wanted`` ("s+bias", ...)
    requiring gradients: those must match ``reference``'s (float32 tolerance), the others stay None."""
    names = ("s", "weight", "bias")
    leaves = [t.clone().requires_grad_(name in wanted.split("+")) for name, t in zip(names, inputs)]
    function(*leaves).backward(grad_out)
    _, expected = forward_backward(reference, *inputs, grad_out)
    tolerance = FLOAT_TOLERANCE[torch.float32]
    for name, leaf, expected_grad in zip(names, leaves, expected):
        if leaf.requires_grad:
            scale = max(expected_grad.abs().max().item(), 1.0)
            assert_close_verbose(leaf.grad, expected_grad, tolerance, tolerance * scale, f"grad {name}")
        else:
            assert leaf.grad is None, name


def spike_aot_case(module, kernel, dtype, constexprs):
    """An AOT case of a spike kernel: packed words are int32, scalar arguments integers."""
    return case(module, kernel, constexprs, dtype, pointer_types=PACKED_POINTERS, scalar_type="i32")
