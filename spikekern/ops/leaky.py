"""snnTorch's ``Leaky`` neuron over all T steps: schema, reference, dispatch and autograd.

One pair of custom ops, ``spikekern::leaky_forward`` and ``spikekern::leaky_backward``;
``leaky_multistep`` validates its arguments and calls them. The reference below is the specification
(docs/leaky_op.md); the Triton and CUDA kernels implement the same contract on ``[T, M]`` views.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _multistep as ms
from ._dispatch import BACKENDS, select_backend
from .surrogate import surrogate_gradient

# snnTorch's SpikingNeuron.reset_dict: the same names and ids.
RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2
RESET_MECHANISMS = {"subtract": RESET_SUBTRACT, "zero": RESET_ZERO, "none": RESET_NONE}


def mem_output_shape(x_shape, output_mem_seq):
    return x_shape if output_mem_seq else x_shape[1:]


# ----------------------------------------------------------------------------------------------
# Reference (the specification): snnTorch 1.0.0's Leaky.forward with reset_delay=True, step by step.
# ----------------------------------------------------------------------------------------------


def _initial_membrane(mem_init, shape, dtype, device):
    """snnTorch starts a fresh neuron from zeros."""
    return torch.zeros(shape, dtype=dtype, device=device) if mem_init is None else mem_init.to(dtype, copy=True)


def _decay(beta, dtype):
    """``beta.clamp(0, 1)``, as snnTorch applies it at every step."""
    return beta.to(dtype).clamp(0, 1)


def _leaky_step(x, mem, decay, threshold, reset_mechanism):
    """One step, in snnTorch's order: the reset is decided on the previous membrane and detached."""
    if reset_mechanism == RESET_NONE:
        return decay * mem + x
    reset = (mem - threshold > 0).to(mem.dtype)
    if reset_mechanism == RESET_SUBTRACT:
        return (decay * mem + x) - reset * threshold
    return decay * ((1 - reset) * mem) + x


def _compact_margin(margin):
    """``mem - threshold`` with its sign bit set exactly when the neuron did not fire (margin <= 0 or NaN).

    Rounding to bfloat16 keeps the sign bit but may flush a tiny positive margin to +0, so the sign
    bit, not ``> 0``, carries the spike; a zero margin (no spike) is stored as -0.
    """
    return torch.where(margin > 0, margin, -margin.abs())


def reference_forward(x_seq, mem_init, beta, threshold, reset_mechanism, output_mem_seq, state_mode):
    cdtype = ms.compute_dtype(x_seq.dtype)
    x = x_seq.to(cdtype)
    mem = _initial_membrane(mem_init, x.shape[1:], cdtype, x.device)
    decay = _decay(beta, cdtype)
    threshold = threshold.to(cdtype)
    spikes = torch.empty_like(x_seq)
    mem_seq = torch.empty(x.shape if output_mem_seq else (0,), dtype=x_seq.dtype, device=x.device)
    state = ms.new_state(x_seq, state_mode)
    for t in range(x.shape[0]):
        mem = _leaky_step(x[t], mem, decay, threshold, reset_mechanism)
        margin = mem - threshold
        spikes[t] = margin > 0
        if output_mem_seq:
            mem_seq[t] = mem
        if state_mode == ms.STATE_FLOAT:
            state[t] = mem
        elif state_mode == ms.STATE_BF16:
            state[t] = _compact_margin(margin)
    return spikes, mem_seq if output_mem_seq else mem.to(x_seq.dtype), state


def reference_backward(
    grad_spike, grad_mem, state, mem_init, beta, threshold, reset_mechanism, surrogate, alpha, output_mem_seq,
    state_mode, beta_grad, threshold_grad,
):  # fmt: skip
    x_dtype = grad_spike.dtype
    cdtype = ms.compute_dtype(x_dtype)
    if state_mode == ms.STATE_INPUT:
        _, _, state = reference_forward(state, mem_init, beta, threshold, reset_mechanism, False, ms.STATE_FLOAT)
        state_mode = ms.STATE_FLOAT
    decay = _decay(beta, cdtype)
    threshold = threshold.to(cdtype)
    mem_seq, margin_seq, spike_seq = ms.unpack_state(state, state_mode, threshold, cdtype, fires_at_threshold=False)
    mem_first = _initial_membrane(mem_init, grad_spike.shape[1:], cdtype, grad_spike.device)
    # Step t starts from mem[t-1] and resets on its spike (for t = 0: the initial membrane's).
    mem_prev_seq = torch.cat([mem_first[None], mem_seq])[:-1]
    reset_seq = torch.cat([(mem_first - threshold > 0).to(cdtype)[None], spike_seq])[:-1]
    if reset_mechanism == RESET_ZERO:
        mem_prev_seq = (1 - reset_seq) * mem_prev_seq  # d mem[t] / d decay
        carry_factor_seq = decay * (1 - reset_seq)  # d mem[t] / d mem[t-1]
    else:
        carry_factor_seq = decay.expand(mem_seq.shape)
    grad_from_spike_seq = grad_spike.to(cdtype) * surrogate_gradient(margin_seq, surrogate, alpha)
    grad_carry = torch.zeros(grad_spike.shape[1:], dtype=cdtype, device=grad_spike.device)
    if grad_mem is not None and not output_mem_seq:
        grad_carry = grad_carry + grad_mem.to(cdtype)
    grad_mem_seq = torch.empty_like(grad_from_spike_seq)  # dL / d mem[t], all paths
    for t in range(grad_spike.shape[0] - 1, -1, -1):
        grad = grad_from_spike_seq[t] + grad_carry
        if grad_mem is not None and output_mem_seq:
            grad = grad + grad_mem[t].to(cdtype)
        grad_mem_seq[t] = grad
        grad_carry = grad * carry_factor_seq[t]
    not_requested = grad_spike.new_empty(0, dtype=cdtype)
    grad_decay = not_requested
    if beta_grad:
        grad_decay = (grad_mem_seq * mem_prev_seq).sum(0).reshape(-1)
        grad_decay = grad_decay.sum().reshape(1) if beta.numel() == 1 else grad_decay
    grad_threshold = not_requested
    if threshold_grad:
        # The spike fires on mem - threshold; a subtractive reset removes reset * threshold.
        grad_threshold = -grad_from_spike_seq.sum()
        if reset_mechanism == RESET_SUBTRACT:
            grad_threshold = grad_threshold - (grad_mem_seq * reset_seq).sum()
        grad_threshold = grad_threshold.reshape(1)
    return grad_mem_seq.to(x_dtype), grad_carry.to(x_dtype), grad_decay, grad_threshold


# ----------------------------------------------------------------------------------------------
# Backends: each takes contiguous [T, M] views (the kernel contract in docs/leaky_op.md).
# ----------------------------------------------------------------------------------------------

def _as_mem_rows(mem, steps, output_mem_seq):
    """The membrane output (or its gradient) as ``[T, M]`` or ``[M]``."""
    return ms.as_rows(mem, steps) if output_mem_seq and mem is not None else ms.as_row(mem)


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("spikekern::leaky_forward", mutates_args=())
def leaky_forward(
    x_seq: Tensor, mem_init: Optional[Tensor], beta: Tensor, threshold: Tensor, reset_mechanism: int,
    surrogate: int, alpha: float, output_mem_seq: bool, state_mode: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Spikes ``[T, N, *]``, the membrane (last ``[N, *]``, or every step's with ``output_mem_seq``) and
    the state saved for backward (state_mode 1 and 2; empty for 0 and for 3, where backward recomputes
    from ``x_seq``).

    ``beta`` has one element or shape ``[N, *]``; ``threshold`` one element; both in the compute dtype.
    ``surrogate`` and ``alpha`` only matter for backward; they are arguments here so autograd sees them.
    """
    if x_seq.numel() == 0:
        return reference_forward(x_seq, mem_init, beta, threshold, reset_mechanism, output_mem_seq, state_mode)
    steps = x_seq.shape[0]
    spikes, mem_out, state = ms.run(
        select_backend(backend, x_seq, BACKENDS), "leaky_forward", reference_forward, ms.as_rows(x_seq, steps),
        ms.as_row(mem_init), ms.as_row(beta), threshold, reset_mechanism, output_mem_seq, state_mode,
    )  # fmt: skip
    return (
        spikes.view(x_seq.shape),
        mem_out.view(mem_output_shape(x_seq.shape, output_mem_seq)),
        state.view(ms.state_shape(x_seq.shape, state_mode)),
    )


@leaky_forward.register_fake
def _(x_seq, mem_init, beta, threshold, reset_mechanism, surrogate, alpha, output_mem_seq, state_mode, backend):
    return (
        x_seq.new_empty(x_seq.shape),
        x_seq.new_empty(mem_output_shape(x_seq.shape, output_mem_seq)),
        x_seq.new_empty(ms.state_shape(x_seq.shape, state_mode), dtype=ms.state_dtype(x_seq.dtype, state_mode)),
    )


@torch.library.custom_op("spikekern::leaky_backward", mutates_args=())
def leaky_backward(
    grad_spike: Tensor, grad_mem: Optional[Tensor], state: Tensor, mem_init: Optional[Tensor], beta: Tensor,
    threshold: Tensor, reset_mechanism: int, surrogate: int, alpha: float, output_mem_seq: bool,
    state_mode: int, beta_grad: bool, threshold_grad: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients for ``x_seq``, ``mem_init``, ``beta`` and ``threshold`` (the last two empty unless
    ``beta_grad`` / ``threshold_grad``). ``state`` is the forward's state output, or ``x_seq`` itself
    for state_mode 3.
    """
    if state_mode == ms.STATE_NONE:
        raise RuntimeError("spikekern::leaky_backward needs the state saved by a forward with state_mode != 0")
    args = (reset_mechanism, surrogate, alpha, output_mem_seq, state_mode, beta_grad, threshold_grad)
    if grad_spike.numel() == 0:
        grad_x, grad_mem_init, decay_partials, threshold_partials = reference_backward(
            grad_spike, grad_mem, state, mem_init, beta, threshold, *args
        )
    else:
        steps = grad_spike.shape[0]
        grad_x, grad_mem_init, decay_partials, threshold_partials = ms.run(
            select_backend(backend, grad_spike, BACKENDS), "leaky_backward", reference_backward, ms.as_rows(grad_spike, steps),
            _as_mem_rows(grad_mem, steps, output_mem_seq), ms.as_rows(state, steps), ms.as_row(mem_init),
            ms.as_row(beta), threshold, *args,
        )  # fmt: skip
    grad_beta = beta.new_empty(0)
    if beta_grad:
        # Per-neuron beta: one sum per neuron; a shared beta: partial sums to add up.
        grad_decay = decay_partials.sum() if beta.numel() == 1 else decay_partials
        grad_decay = grad_decay.to(beta.dtype).view(beta.shape)
        # torch.clamp's gradient: zero where beta lies outside [0, 1] (or is NaN).
        grad_beta = torch.where((beta >= 0) & (beta <= 1), grad_decay, 0.0)
    grad_threshold = threshold.new_empty(0)
    if threshold_grad:
        grad_threshold = threshold_partials.sum().to(threshold.dtype).view(threshold.shape)
    return grad_x.view(grad_spike.shape), grad_mem_init.view(grad_spike.shape[1:]), grad_beta, grad_threshold


@leaky_backward.register_fake
def _(grad_spike, grad_mem, state, mem_init, beta, threshold, reset_mechanism, surrogate, alpha, output_mem_seq, state_mode, beta_grad, threshold_grad, backend):
    return (
        grad_spike.new_empty(grad_spike.shape),
        grad_spike.new_empty(grad_spike.shape[1:]),
        beta.new_empty(beta.shape if beta_grad else (0,)),
        threshold.new_empty(threshold.shape if threshold_grad else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x_seq, mem_init, beta, threshold, *params, backend = inputs
    ctx.mark_non_differentiable(output[2])
    state_mode = params[-1]
    ctx.save_for_backward(x_seq if state_mode == ms.STATE_INPUT else output[2], mem_init, beta, threshold)
    ctx.params = params
    ctx.backend = backend


def _backward(ctx, grad_spike, grad_mem, _grad_state):
    state, mem_init, beta, threshold = ctx.saved_tensors
    _, needs_mem_init, needs_beta, needs_threshold = ctx.needs_input_grad[:4]
    grad_x, grad_mem_init, grad_beta, grad_threshold = torch.ops.spikekern.leaky_backward(
        grad_spike, grad_mem, state, mem_init, beta, threshold, *ctx.params, needs_beta, needs_threshold,
        ctx.backend,
    )  # fmt: skip
    return (
        grad_x,
        grad_mem_init if needs_mem_init else None,
        grad_beta if needs_beta else None,
        grad_threshold if needs_threshold else None,
    ) + (None,) * 6


leaky_forward.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def _parameter_tensor(name, value, x_seq):
    """A float or a tensor as a tensor in the compute dtype (a differentiable cast), on x_seq's device."""
    dtype = ms.compute_dtype(x_seq.dtype)
    if isinstance(value, Tensor):
        ms.check_tensor_argument(name, value, x_seq)
        return value.to(dtype)
    ms.check_finite_float(name, value)
    # torch.full, not torch.tensor: a fill kernel rather than a host-to-device copy (CUDA-graph safe).
    return torch.full((1,), float(value), dtype=dtype, device=x_seq.device)


def _beta_argument(beta, x_seq):
    """beta as one element, or expanded to ``[N, *]`` (autograd sums the expansion back to beta's shape)."""
    beta = _parameter_tensor("beta", beta, x_seq)
    if beta.numel() == 1:
        return beta.reshape(1)
    neuron_shape = x_seq.shape[1:]
    try:
        broadcast = torch.broadcast_shapes(beta.shape, neuron_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != neuron_shape:
        raise ValueError(
            f"beta must be a float, one value, or broadcastable to x_seq.shape[1:] = {tuple(neuron_shape)}, "
            f"got shape {tuple(beta.shape)}"
        )
    return beta.expand(neuron_shape)


def _threshold_argument(threshold, x_seq):
    threshold = _parameter_tensor("threshold", threshold, x_seq)
    if threshold.numel() != 1:
        raise ValueError(f"threshold must be a float or hold one value, got shape {tuple(threshold.shape)}")
    return threshold.reshape(1)


def _reset_mechanism_id(reset_mechanism):
    if not isinstance(reset_mechanism, str):
        raise TypeError(f"reset_mechanism must be a str, got {type(reset_mechanism).__name__}")
    if reset_mechanism not in RESET_MECHANISMS:
        raise ValueError(f"reset_mechanism must be one of {list(RESET_MECHANISMS)}, got {reset_mechanism!r}")
    return RESET_MECHANISMS[reset_mechanism]


def leaky_multistep(
    x_seq, beta, mem_init=None, threshold=1.0, reset_mechanism="subtract", surrogate="atan", alpha=None,
    output_mem_seq=False, compact_state=False, backend=None,
):  # fmt: skip
    """snnTorch's ``Leaky`` neuron (``reset_delay=True``) over all T steps in one kernel per pass.

    Per step: ``reset = (mem - threshold > 0)`` on the previous membrane (detached), then
    ``mem = beta.clamp(0, 1) * mem + x - reset * threshold`` ("subtract"), ``beta.clamp(0, 1) *
    ((1 - reset) * mem) + x`` ("zero") or ``beta.clamp(0, 1) * mem + x`` ("none"), and
    ``spike = (mem - threshold > 0)`` with a surrogate gradient.

    x_seq: ``[T, N, *]`` input current, float16/bfloat16/float32 (float64 on the torch backend).
    beta: decay, a float or a tensor broadcastable to ``[N, *]`` (per-neuron); a tensor can be learned.
    mem_init: ``[N, *]`` membrane to start from (cast to x_seq's dtype), or None for zeros.
    threshold: a float or a one-element tensor (learnable).
    reset_mechanism: "subtract", "zero" or "none".
    surrogate: one of ``spikekern.ops.SURROGATES``; alpha: its sharpness (None: its default).
        snnTorch's ``atan(alpha)`` is "atan", ``fast_sigmoid(slope)`` is "fast_sigmoid" and
        ``sigmoid(slope)`` is "sigmoid", with alpha = slope (snnTorch's default slope is 25).
    output_mem_seq: return every step's membrane ``[T, N, *]`` instead of the last one.
    compact_state: save the state for backward in 16 bits (2 bytes per element) instead of 32.
    backend: None for the best available, or "cuda", "triton", "torch", "compiled" (the CPU fast path, never
        chosen by None: docs/neuron_ops.md); an unusable choice raises.

    Returns ``(spike_seq [T, N, *] in x_seq's dtype, mem)``, mem ``[N, *]`` (or ``[T, N, *]``) in
    x_seq's dtype. Gradients flow to x_seq, mem_init, beta and threshold. Semantics, saved memory and
    the NaN/Inf policy: docs/leaky_op.md.
    """
    ms.check_input_sequence(x_seq)
    beta = _beta_argument(beta, x_seq)
    threshold = _threshold_argument(threshold, x_seq)
    mem_init = ms.check_initial_membrane("mem_init", mem_init, x_seq)
    reset_id = _reset_mechanism_id(reset_mechanism)
    ms.check_bool("output_mem_seq", output_mem_seq)
    surrogate_id, alpha, state_mode = ms.resolve_run_options(
        x_seq, (mem_init, beta, threshold), surrogate, alpha, compact_state, backend
    )
    order = ms.memory_order(x_seq)
    if order is not None:
        per_neuron = beta.shape == x_seq.shape[1:]  # else one value, the same in any order
        (x_seq,), (mem_init, permuted_beta) = ms.permuted(order, [x_seq], [mem_init, beta if per_neuron else None])
        beta = permuted_beta if per_neuron else beta
    spikes, mem, _ = torch.ops.spikekern.leaky_forward(
        x_seq, mem_init, beta, threshold, reset_id, surrogate_id, alpha, output_mem_seq, state_mode, backend or ""
    )
    if order is not None:
        mem_seq, mem_last = (mem, None) if output_mem_seq else (None, mem)
        (spikes, mem_seq), (mem_last,) = ms.permuted(ms.inverse_order(order), [spikes, mem_seq], [mem_last])
        mem = mem_seq if output_mem_seq else mem_last
    return spikes, mem
