"""Machinery shared by the multi-step neuron ops (``neuron.py`` and ``leaky.py``).

State modes (what the forward saves for backward), the compute/state dtypes and shapes, the ``[T, M]``
views the kernels take, one backend runner and the argument checks. Private to ``spikekern.ops``.
"""

import functools
import importlib
import math

import torch
from torch import Tensor

from ._dispatch import check_backend_name
from .surrogate import resolve_surrogate

STATE_NONE, STATE_FLOAT, STATE_BF16, STATE_INPUT = 0, 1, 2, 3
# Up to this many steps the backward kernels re-run the forward from the saved input in registers,
# so the forward writes nothing but spikes; longer sequences save the charge instead.
RECOMPUTE_MAX_STEPS = 16
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def choose_state_mode(needs_grad, compact_state, steps):
    """What the forward saves for backward: nothing, 16 bits, the input itself (recompute) or 32 bits."""
    if not needs_grad:
        return STATE_NONE
    if compact_state:
        return STATE_BF16
    return STATE_INPUT if steps <= RECOMPUTE_MAX_STEPS else STATE_FLOAT


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def state_dtype(x_dtype, state_mode):
    return torch.bfloat16 if state_mode == STATE_BF16 else compute_dtype(x_dtype)


def state_shape(x_shape, state_mode):
    """The forward writes a state only in the charge-saving modes; otherwise it returns an empty one."""
    return x_shape if state_mode in (STATE_FLOAT, STATE_BF16) else (0,)


def new_state(x_seq, state_mode):
    """The forward's saved state: ``[T, ...]`` in modes 1 and 2, empty otherwise."""
    return torch.empty(
        state_shape(x_seq.shape, state_mode), dtype=state_dtype(x_seq.dtype, state_mode), device=x_seq.device
    )


def unpack_state(state, state_mode, threshold, cdtype, fires_at_threshold):
    """(charge, charge - threshold, spike) of every step, from the state saved in mode 1 (the charge) or
    2 (the margin in bfloat16: rounding keeps its sign, so the sign bit is the spike; NaN never fired).

    ``fires_at_threshold``: whether a charge equal to the threshold spikes (SpikingJelly) or not (snnTorch).
    """
    if state_mode == STATE_FLOAT:
        charge = state
        margin = charge - threshold
        spike = margin >= 0 if fires_at_threshold else margin > 0
    else:
        margin = state.to(cdtype)
        charge = margin + threshold
        spike = ~torch.signbit(margin) & ~torch.isnan(margin)
    return charge, margin, spike.to(cdtype)


def memory_order(x_seq):
    """The order of ``x_seq``'s dims with time first and the others by decreasing stride, when every step
    is laid out densely in another order than its logical one (channels-last activations, say), else None.
    The neuron dynamics act on each neuron alone, so the ops run on ``x_seq.permute(order)`` (contiguous
    unless time is strided: an expanded input, say) instead of a transposing copy, and permute their
    outputs back: they keep the step's layout."""
    if x_seq.dim() < 3 or x_seq.numel() == 0 or x_seq.is_contiguous():
        return None
    strides = x_seq.stride()
    order = (0, *sorted(range(1, x_seq.dim()), key=lambda dim: -strides[dim]))
    if list(order) == sorted(order) or not x_seq[0].permute([dim - 1 for dim in order[1:]]).is_contiguous():
        return None
    return order


def permuted(order, sequences, neuron_tensors):
    """``[T, N, *]`` tensors permuted as ``order`` says and ``[N, *]`` ones as one step of them (None stays
    None): ``memory_order``'s order on the way in, ``inverse_order`` of it on the way out."""
    step_order = [dim - 1 for dim in order[1:]]
    return (
        [None if t is None else t.permute(order) for t in sequences],
        [None if t is None else t.permute(step_order) for t in neuron_tensors],
    )


def inverse_order(order):
    return tuple(sorted(range(len(order)), key=order.__getitem__))


def as_rows(t, time_steps):
    return t.contiguous().view(time_steps, -1)


def as_row(t):
    return None if t is None else t.contiguous().view(-1)


@functools.lru_cache(maxsize=None)
def _compiled(reference):
    # Dynamic shapes: one compilation per neuron configuration and number of steps, whatever the
    # layer's size. Past dynamo's recompile limit the calls run the reference eagerly (same results).
    return torch.compile(reference, dynamic=True)


def run(backend, name, reference, *args):
    """Run op ``name`` (e.g. "leaky_forward") on ``backend``: ``reference`` for "torch", the reference
    compiled for "compiled", else the same-named function of ``spikekern.ops.triton.<module>`` or
    ``torch.ops.spikekern_cuda``."""
    if backend == "torch":
        return reference(*args)
    if backend == "compiled":
        return _compiled(reference)(*args)
    if backend == "triton":
        # Imported late: TRITON_INTERPRET is read when the kernel module is imported.
        module = importlib.import_module(f"spikekern.ops.triton.{name.rsplit('_', 1)[0]}")
        return getattr(module, name)(*args)
    return getattr(torch.ops.spikekern_cuda, name)(*args)


# ----------------------------------------------------------------------------------------------
# Argument checks of the public functions
# ----------------------------------------------------------------------------------------------


def check_finite_float(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_input_sequence(x_seq):
    """``x_seq``: a floating-point tensor with a leading time dimension."""
    if not isinstance(x_seq, Tensor):
        raise TypeError(f"x_seq must be a torch.Tensor, got {type(x_seq).__name__}")
    if x_seq.dtype not in FLOATING_DTYPES:
        raise TypeError(f"x_seq must be float16, bfloat16, float32 or float64, got {x_seq.dtype}")
    if x_seq.dim() < 1:
        raise ValueError("x_seq must have a leading time dimension: shape [T, N, *], got a 0-d tensor")


def check_tensor_argument(name, value, x_seq, kind="a torch.Tensor", dtypes=None):
    """A floating-point tensor (one of ``dtypes`` if given) on x_seq's device; ``kind`` names what the
    TypeError says was expected."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if not value.dtype.is_floating_point if dtypes is None else value.dtype not in dtypes:
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != x_seq.device:
        raise ValueError(f"{name} is on {value.device} but x_seq is on {x_seq.device}")


def check_initial_membrane(name, value, x_seq, kind="a torch.Tensor", dtypes=None):
    """An optional ``[N, *]`` starting membrane, returned in x_seq's dtype (None stays None)."""
    if value is None:
        return None
    check_tensor_argument(name, value, x_seq, kind, dtypes)
    if value.shape != x_seq.shape[1:]:
        raise ValueError(f"{name} must have shape x_seq.shape[1:] = {tuple(x_seq.shape[1:])}, got {tuple(value.shape)}")
    return value.to(x_seq.dtype)


def needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def resolve_run_options(x_seq, parameters, surrogate, alpha, compact_state, backend):
    """Checks the options every multi-step op takes, in this order; returns ``(surrogate id, alpha,
    state mode)``, the state mode saving for backward only if a gradient can reach x_seq or a parameter."""
    check_bool("compact_state", compact_state)
    check_backend_name(backend)
    surrogate_id, alpha = resolve_surrogate(surrogate, alpha)
    return surrogate_id, alpha, choose_state_mode(needs_grad(x_seq, *parameters), compact_state, x_seq.shape[0])
