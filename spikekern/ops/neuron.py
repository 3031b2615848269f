"""Multi-timestep IF, LIF and parametric-LIF neurons: schema, reference, dispatch and autograd.

One pair of custom ops, ``spikekern::neuron_forward`` and ``spikekern::neuron_backward``, serves the
three neuron kinds; ``if_multistep``, ``lif_multistep`` and ``plif_multistep`` validate their
arguments and call it. The reference below is the specification (docs/neuron_ops.md); the Triton
and CUDA kernels implement the same contract on ``[T, M]`` views.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _multistep as ms
from ._dispatch import BACKENDS, select_backend
from .surrogate import surrogate_gradient

NEURON_IF, NEURON_LIF, NEURON_PLIF = 0, 1, 2


def _v_seq_shape(x_shape, store_v_seq):
    return x_shape if store_v_seq else (0,)


# ----------------------------------------------------------------------------------------------
# Reference (the specification). Each step mirrors SpikingJelly 2.0's operations one by one.
# ----------------------------------------------------------------------------------------------


def _charge(x, v, neuron_kind, tau, decay, decay_input, v_reset):
    if neuron_kind == NEURON_IF:
        return v + x
    if neuron_kind == NEURON_LIF:
        # A tensor divisor keeps this an IEEE division on CUDA too (a Python-scalar divisor is
        # turned into a multiplication by its reciprocal there), matching the kernels bit for bit.
        return v + (x - (v - v_reset)) / tau if decay_input else v - (v - v_reset) / tau + x
    return v + (x - (v - v_reset)) * decay if decay_input else v - (v - v_reset) * decay + x


def _reset(h, spike, v_threshold, v_reset, soft_reset):
    return h - spike * v_threshold if soft_reset else spike * v_reset + (1.0 - spike) * h


def _initial_v(v_init, shape, dtype, device, v_reset):
    if v_init is not None:
        return v_init.to(dtype, copy=True)
    return torch.full(shape, v_reset, dtype=dtype, device=device)


def _decay_factor(w, x_dtype):
    """PLIF's ``k = sigmoid(w)``, computed in w's dtype like SpikingJelly, widened to the compute dtype."""
    return torch.sigmoid(w).reshape(1).to(ms.compute_dtype(x_dtype))


def reference_forward(
    x_seq, v_init, decay, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, store_v_seq, state_mode
):
    cdtype = ms.compute_dtype(x_seq.dtype)
    x = x_seq.to(cdtype)
    v = _initial_v(v_init, x.shape[1:], cdtype, x.device, v_reset)
    tau = torch.tensor(tau, dtype=cdtype, device=x.device)
    decay = None if decay is None else decay.to(cdtype)
    spikes = torch.empty_like(x_seq)
    state = ms.new_state(x_seq, state_mode)
    v_seq = x_seq.new_empty(_v_seq_shape(x.shape, store_v_seq))
    for t in range(x.shape[0]):
        h = _charge(x[t], v, neuron_kind, tau, decay, decay_input, v_reset)
        spike = (h - v_threshold >= 0).to(cdtype)
        v = _reset(h, spike, v_threshold, v_reset, soft_reset)
        spikes[t] = spike
        if store_v_seq:
            v_seq[t] = v
        if state_mode == ms.STATE_FLOAT:
            state[t] = h
        elif state_mode == ms.STATE_BF16:
            state[t] = (h - v_threshold) + 0.0  # -0 (fired) becomes +0: the sign bit is the spike
    return spikes, v.to(x_seq.dtype), state, v_seq


def reference_backward(
    grad_spike, grad_v_last, grad_v_seq, state, v_init, decay, neuron_kind, tau, decay_input, v_threshold, v_reset,
    soft_reset, detach_reset, surrogate, alpha, state_mode,
):  # fmt: skip
    x_dtype = grad_spike.dtype
    cdtype = ms.compute_dtype(x_dtype)
    if state_mode == ms.STATE_INPUT:
        _, _, state, _ = reference_forward(
            state, v_init, decay, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, False, ms.STATE_FLOAT
        )
        state_mode = ms.STATE_FLOAT
    h_seq, shifted_seq, spike_seq = ms.unpack_state(state, state_mode, v_threshold, cdtype, fires_at_threshold=True)
    surrogate_seq = surrogate_gradient(shifted_seq, surrogate, alpha)
    grad_spike = grad_spike.to(cdtype)
    shape = state.shape[1:]
    grad_v = torch.zeros(shape, dtype=cdtype, device=state.device)
    if grad_v_last is not None:
        grad_v = grad_v + grad_v_last.to(cdtype)
    k = 1.0 / tau if neuron_kind == NEURON_LIF else (decay.to(cdtype) if neuron_kind == NEURON_PLIF else 0.0)
    grad_x = torch.empty_like(grad_spike)
    plif_sum = torch.zeros((), dtype=cdtype, device=state.device)
    v_first = None
    if neuron_kind == NEURON_PLIF:
        v_first = _initial_v(v_init, shape, cdtype, state.device, v_reset)
    for t in range(state.shape[0] - 1, -1, -1):
        h, spike, sg = h_seq[t], spike_seq[t], surrogate_seq[t]
        if grad_v_seq is not None:
            grad_v = grad_v + grad_v_seq[t].to(cdtype)
        if soft_reset:
            dv_dh = 1.0 if detach_reset else 1.0 - v_threshold * sg
        else:
            dv_dh = 1.0 - spike if detach_reset else (1.0 - spike) + (v_reset - h) * sg
        grad_h = grad_spike[t] * sg + grad_v * dv_dh
        if neuron_kind == NEURON_IF or not decay_input:
            grad_x[t] = grad_h
        elif neuron_kind == NEURON_LIF:
            grad_x[t] = grad_h / tau
        else:
            grad_x[t] = grad_h * k
        if neuron_kind == NEURON_PLIF:
            v_prev = v_first if t == 0 else _reset(h_seq[t - 1], spike_seq[t - 1], v_threshold, v_reset, soft_reset)
            dh_dk_scaled = h - v_prev if decay_input else v_reset - v_prev
            plif_sum = plif_sum + (grad_h * dh_dk_scaled).sum()
        grad_v = grad_h * (1.0 - k)
    plif_partials = plif_sum.reshape(1) if neuron_kind == NEURON_PLIF else grad_v.new_empty(0, dtype=torch.float32)
    return grad_x.to(x_dtype), grad_v.to(x_dtype), plif_partials


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("spikekern::neuron_forward", mutates_args=())
def neuron_forward(
    x_seq: Tensor, v_init: Optional[Tensor], w: Optional[Tensor], neuron_kind: int, tau: float,
    decay_input: bool, v_threshold: float, v_reset: float, soft_reset: bool, detach_reset: bool,
    surrogate: int, alpha: float, store_v_seq: bool, state_mode: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Spikes ``[T, N, *]``, last membrane ``[N, *]``, the charge state for backward (state_mode 1
    and 2; empty for 0, no backward, and 3, where backward recomputes it from ``x_seq``) and the
    post-reset membrane of every step ``[T, N, *]`` (empty unless ``store_v_seq``).

    ``detach_reset``, ``surrogate`` and ``alpha`` only matter for backward; they are arguments here so
    that autograd sees them.
    """
    decay = _decay_factor(w, x_seq.dtype) if neuron_kind == NEURON_PLIF else None
    steps = x_seq.shape[0]
    args = (decay, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, store_v_seq, state_mode)
    if x_seq.numel() == 0:
        return reference_forward(x_seq, v_init, *args)
    spikes, v_last, state, v_seq = ms.run(
        select_backend(backend, x_seq, BACKENDS), "neuron_forward", reference_forward, ms.as_rows(x_seq, steps),
        ms.as_row(v_init), *args,
    )  # fmt: skip
    return (
        spikes.view(x_seq.shape),
        v_last.view(x_seq.shape[1:]),
        state.view(ms.state_shape(x_seq.shape, state_mode)),
        v_seq.view(_v_seq_shape(x_seq.shape, store_v_seq)),
    )


@neuron_forward.register_fake
def _(x_seq, v_init, w, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha, store_v_seq, state_mode, backend):
    return (
        x_seq.new_empty(x_seq.shape),
        x_seq.new_empty(x_seq.shape[1:]),
        x_seq.new_empty(ms.state_shape(x_seq.shape, state_mode), dtype=ms.state_dtype(x_seq.dtype, state_mode)),
        x_seq.new_empty(_v_seq_shape(x_seq.shape, store_v_seq)),
    )


@torch.library.custom_op("spikekern::neuron_backward", mutates_args=())
def neuron_backward(
    grad_spike: Tensor, grad_v_last: Optional[Tensor], grad_v_seq: Optional[Tensor], state: Tensor,
    v_init: Optional[Tensor], w: Optional[Tensor], neuron_kind: int, tau: float, decay_input: bool,
    v_threshold: float, v_reset: float, soft_reset: bool, detach_reset: bool, surrogate: int,
    alpha: float, state_mode: int, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients for ``x_seq``, ``v_init`` and PLIF's ``w`` (empty unless PLIF).

    ``grad_v_seq`` is the gradient w.r.t. the forward's ``v_seq`` (None when it was not stored).
    ``state`` is the forward's state output, or ``x_seq`` itself for state_mode 3.
    """
    if state_mode == ms.STATE_NONE:
        raise RuntimeError("spikekern::neuron_backward needs the state saved by a forward with state_mode != 0")
    decay = _decay_factor(w, grad_spike.dtype) if neuron_kind == NEURON_PLIF else None
    steps = grad_spike.shape[0]
    args = (neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha, state_mode)
    if grad_spike.numel() == 0:
        grad_x, grad_v_init, plif_partials = reference_backward(
            grad_spike, grad_v_last, grad_v_seq, state, v_init, decay, *args
        )
    else:
        grad_x, grad_v_init, plif_partials = ms.run(
            select_backend(backend, grad_spike, BACKENDS), "neuron_backward", reference_backward,
            ms.as_rows(grad_spike, steps), ms.as_row(grad_v_last),
            None if grad_v_seq is None else ms.as_rows(grad_v_seq, steps), ms.as_rows(state, steps),
            ms.as_row(v_init), decay, *args,
        )  # fmt: skip
    grad_x = grad_x.view(grad_spike.shape)
    grad_v_init = grad_v_init.view(grad_spike.shape[1:])
    if neuron_kind != NEURON_PLIF:
        return grad_x, grad_v_init, grad_spike.new_empty(0)
    scale = (1.0 - decay) if decay_input else decay * (1.0 - decay)
    grad_w = (scale * plif_partials.to(decay.dtype).sum()).to(w.dtype).view(w.shape)
    return grad_x, grad_v_init, grad_w


@neuron_backward.register_fake
def _(grad_spike, grad_v_last, grad_v_seq, state, v_init, w, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, detach_reset, surrogate, alpha, state_mode, backend):
    grad_w = w.new_empty(w.shape) if neuron_kind == NEURON_PLIF else grad_spike.new_empty(0)
    return grad_spike.new_empty(grad_spike.shape), grad_spike.new_empty(grad_spike.shape[1:]), grad_w


def _setup_context(ctx, inputs, output):
    x_seq, v_init, w, *params, store_v_seq, state_mode, backend = inputs
    _, _, state, v_seq = output
    ctx.mark_non_differentiable(state)
    if not store_v_seq:
        ctx.mark_non_differentiable(v_seq)
    ctx.save_for_backward(x_seq if state_mode == ms.STATE_INPUT else state, v_init, w)
    ctx.backward_scalars = (*params, state_mode)  # neuron_backward's arguments from neuron_kind on
    ctx.store_v_seq = store_v_seq
    ctx.backend = backend
    ctx.has_v_init = v_init is not None


def _backward(ctx, grad_spike, grad_v_last, _grad_state, grad_v_seq):
    state, v_init, w = ctx.saved_tensors
    neuron_kind = ctx.backward_scalars[0]
    # Without store_v_seq, grad_v_seq is a materialised placeholder: not worth a read per element.
    grad_x, grad_v_init, grad_w = torch.ops.spikekern.neuron_backward(
        grad_spike, grad_v_last, grad_v_seq if ctx.store_v_seq else None, state, v_init, w, *ctx.backward_scalars,
        ctx.backend,
    )  # fmt: skip
    return (
        grad_x,
        grad_v_init if ctx.has_v_init else None,
        grad_w if neuron_kind == NEURON_PLIF else None,
    ) + (None,) * 12


neuron_forward.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _check_tensors(x_seq, v_init, w):
    """Checks the tensors; returns v_init in x_seq's dtype."""
    ms.check_input_sequence(x_seq)
    v_init = ms.check_initial_membrane("v_init", v_init, x_seq, "None or a torch.Tensor", ms.FLOATING_DTYPES)
    if w is not None:
        ms.check_tensor_argument("w", w, x_seq, dtypes=ms.FLOATING_DTYPES)
        if w.numel() != 1:
            raise ValueError(f"w must hold one value (the shared decay parameter), got shape {tuple(w.shape)}")
    return v_init


def _neuron_multistep(
    x_seq, v_init, w, neuron_kind, tau, decay_input, v_threshold, v_reset, detach_reset, surrogate, alpha,
    store_v_seq, compact_state, backend,
):  # fmt: skip
    v_init = _check_tensors(x_seq, v_init, w)
    ms.check_finite_float("v_threshold", v_threshold)
    ms.check_finite_float("v_reset", v_reset, allow_none=True)
    ms.check_bool("decay_input", decay_input)
    ms.check_bool("detach_reset", detach_reset)
    ms.check_bool("store_v_seq", store_v_seq)
    surrogate_id, alpha, state_mode = ms.resolve_run_options(
        x_seq, (v_init, w), surrogate, alpha, compact_state, backend
    )
    order = ms.memory_order(x_seq)
    if order is not None:
        (x_seq,), (v_init,) = ms.permuted(order, [x_seq], [v_init])
    spikes, v_last, _, v_seq = torch.ops.spikekern.neuron_forward(
        x_seq, v_init, w, neuron_kind, float(tau), decay_input, float(v_threshold),
        0.0 if v_reset is None else float(v_reset), v_reset is None, detach_reset, surrogate_id, alpha,
        store_v_seq, state_mode, backend or "",
    )  # fmt: skip
    if order is not None:
        stored_v_seq = v_seq if store_v_seq else None
        (spikes, v_seq), (v_last,) = ms.permuted(ms.inverse_order(order), [spikes, stored_v_seq], [v_last])
    return (spikes, v_last, v_seq) if store_v_seq else (spikes, v_last)


_COMMON_ARGS = """
    x_seq: ``[T, N, *]`` input current, float16/bfloat16/float32 (float64 on the torch backend).
    v_init: ``[N, *]`` membrane potential carried over from a previous call, or None for ``v_reset``
        (0 for soft reset). Cast to ``x_seq``'s dtype.
    v_threshold: firing threshold; a neuron fires when ``H - v_threshold >= 0``.
    v_reset: hard-reset potential, or None for a soft reset (subtract ``v_threshold``).
    detach_reset: cut the spike's gradient in the reset term.
    surrogate: one of ``spikekern.ops.SURROGATES`` (sigmoid, atan, piecewise_quadratic,
        piecewise_exp, soft_sign, super_spike, erf, fast_sigmoid, triangle); alpha: its sharpness (None: its
        default).
    store_v_seq: also return the membrane after the reset of every step (SpikingJelly's ``v_seq``),
        differentiable; costs one extra write per element and step.
    compact_state: save the state for backward in 16 bits (2 bytes per element) instead of 32.
    backend: None for the best available, or "cuda", "triton", "torch", "compiled" (the CPU fast path, never
        chosen by None: docs/neuron_ops.md); an unusable choice raises.

Returns ``(spike_seq [T, N, *] in x_seq's dtype, v_last [N, *])``, and with ``store_v_seq`` a third
element ``v_seq [T, N, *]`` (``v_seq[-1]`` equals ``v_last``). Semantics, saved memory and the
NaN/Inf policy: docs/neuron_ops.md.
"""


def if_multistep(
    x_seq, v_init=None, v_threshold=1.0, v_reset=0.0, detach_reset=False, surrogate="sigmoid", alpha=None,
    store_v_seq=False, compact_state=False, backend=None,
):  # fmt: skip
    return _neuron_multistep(
        x_seq, v_init, None, NEURON_IF, 0.0, False, v_threshold, v_reset, detach_reset, surrogate, alpha,
        store_v_seq, compact_state, backend,
    )  # fmt: skip


def lif_multistep(
    x_seq, v_init=None, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=False,
    surrogate="sigmoid", alpha=None, store_v_seq=False, compact_state=False, backend=None,
):  # fmt: skip
    ms.check_finite_float("tau", tau)
    if tau <= 1:
        raise ValueError(f"tau must be > 1 (the membrane decays by 1/tau per step), got {tau}")
    return _neuron_multistep(
        x_seq, v_init, None, NEURON_LIF, tau, decay_input, v_threshold, v_reset, detach_reset, surrogate,
        alpha, store_v_seq, compact_state, backend,
    )  # fmt: skip


def plif_multistep(
    x_seq, w, v_init=None, decay_input=True, v_threshold=1.0, v_reset=0.0, detach_reset=False,
    surrogate="sigmoid", alpha=None, store_v_seq=False, compact_state=False, backend=None,
):  # fmt: skip
    if w is None:
        raise TypeError("w must be a one-element tensor (tau = 1 / sigmoid(w)), got None")
    return _neuron_multistep(
        x_seq, v_init, w, NEURON_PLIF, 0.0, decay_input, v_threshold, v_reset, detach_reset, surrogate,
        alpha, store_v_seq, compact_state, backend,
    )  # fmt: skip


if_multistep.__doc__ = "Integrate-and-fire neurons over all T steps: ``H = V + X``.\n" + _COMMON_ARGS
lif_multistep.__doc__ = (
    "Leaky integrate-and-fire neurons over all T steps (SpikingJelly's LIFNode, step_mode='m').\n"
    "    tau: membrane time constant, > 1. decay_input: whether the input is divided by tau too.\n" + _COMMON_ARGS
)
plif_multistep.__doc__ = (
    "Parametric LIF neurons over all T steps: tau = 1 / sigmoid(w) with w a learnable one-element tensor\n"
    "    (SpikingJelly's ParametricLIFNode). Gradients flow to w.\n" + _COMMON_ARGS
)
