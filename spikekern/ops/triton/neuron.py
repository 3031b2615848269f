"""Triton kernels for the multi-timestep neurons (contract and math: docs/neuron_ops.md).

Each program owns ``BLOCK`` neurons and walks all ``T`` steps with the membrane in registers: one
launch for the forward, one for the backward. Launch sizes, the bfloat16 bit helpers (the state is
stored as raw 16-bit patterns, for ``TRITON_INTERPRET=1``) and the register-tile helpers: ``_common.py``.
"""

import torch
import triton
import triton.language as tl

from .._multistep import new_state
from ..neuron import NEURON_PLIF
from . import _common as common
from ._common import BLOCK, NUM_WARPS  # also read off this module by the AOT compile tests
from .surrogate import surrogate_gradient


@triton.jit
def _charge(x, v, k, tau, v_reset, NEURON_KIND: tl.constexpr, DECAY_INPUT: tl.constexpr):
    if NEURON_KIND == 0:
        h = v + x
    elif NEURON_KIND == 1:
        if DECAY_INPUT:
            h = v + tl.math.div_rn(x - (v - v_reset), tau)
        else:
            h = v - tl.math.div_rn(v - v_reset, tau) + x
    else:
        if DECAY_INPUT:
            h = v + (x - (v - v_reset)) * k
        else:
            h = v - (v - v_reset) * k + x
    return h


@triton.jit
def _reset(h, spike, v_threshold, v_reset, SOFT_RESET: tl.constexpr):
    if SOFT_RESET:
        v = h - spike * v_threshold
    else:
        v = spike * v_reset + (1.0 - spike) * h
    return v


@triton.jit
def _forward_kernel(
    x_ptr, v_init_ptr, decay_ptr, spike_ptr, v_last_ptr, state_ptr, v_seq_ptr,
    T, M, tau, v_threshold, v_reset,
    NEURON_KIND: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT_RESET: tl.constexpr,
    HAS_V_INIT: tl.constexpr, STORE_V_SEQ: tl.constexpr, STATE_MODE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    neurons = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = neurons < M
    v = common.initial_membrane(v_init_ptr, neurons, mask, v_reset, HAS_V_INIT, BLOCK)
    k = 0.0
    if NEURON_KIND == 2:
        k = tl.load(decay_ptr)
    offsets = neurons
    for _ in range(T):
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        h = _charge(x, v, k, tau, v_reset, NEURON_KIND, DECAY_INPUT)
        spike = (h - v_threshold >= 0).to(tl.float32)
        v = _reset(h, spike, v_threshold, v_reset, SOFT_RESET)
        tl.store(spike_ptr + offsets, spike.to(spike_ptr.dtype.element_ty), mask=mask)
        if STORE_V_SEQ:
            tl.store(v_seq_ptr + offsets, v.to(v_seq_ptr.dtype.element_ty), mask=mask)
        if STATE_MODE == 1:
            tl.store(state_ptr + offsets, h, mask=mask)
        elif STATE_MODE == 2:
            # + 0.0 turns a -0 margin (which fired) into +0: the stored sign bit is the spike.
            tl.store(state_ptr + offsets, common.to_bf16_bits(h - v_threshold + 0.0), mask=mask)
        offsets += M
    tl.store(v_last_ptr + neurons, v.to(v_last_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_spike_ptr, grad_v_last_ptr, grad_v_seq_ptr, state_ptr, v_init_ptr, decay_ptr,
    grad_x_ptr, grad_v_init_ptr, plif_partials_ptr,
    T, M, tau, v_threshold, v_reset, alpha,
    NEURON_KIND: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr, SURROGATE: tl.constexpr, HAS_GRAD_V_LAST: tl.constexpr,
    HAS_GRAD_V_SEQ: tl.constexpr, HAS_V_INIT: tl.constexpr, STATE_MODE: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    neurons = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = neurons < M
    if HAS_GRAD_V_LAST:
        grad_v = tl.load(grad_v_last_ptr + neurons, mask=mask, other=0.0).to(tl.float32)
    else:
        grad_v = tl.zeros([BLOCK], dtype=tl.float32)
    if NEURON_KIND == 0:
        k = 0.0
    elif NEURON_KIND == 1:
        k = 1.0 / tau
    else:
        k = tl.load(decay_ptr)
    v_first = common.initial_membrane(v_init_ptr, neurons, mask, v_reset, HAS_V_INIT, BLOCK)
    plif_sum = tl.zeros([BLOCK], dtype=tl.float32)
    steps = tl.arange(0, T_PAD)[:, None]
    charge_tile = tl.zeros([T_PAD, BLOCK], dtype=tl.float32)
    if STATE_MODE == 3:
        # state_ptr is x_seq: re-run the forward (the same operations, so the same charges) into registers.
        x_tile = common.input_tile(state_ptr, neurons, mask, steps, T, M)
        v = v_first
        for t in range(T):
            h = _charge(common.row(x_tile, steps, t), v, k, tau, v_reset, NEURON_KIND, DECAY_INPUT)
            v = _reset(h, (h - v_threshold >= 0).to(tl.float32), v_threshold, v_reset, SOFT_RESET)
            charge_tile = tl.where(steps == t, h[None, :], charge_tile)
    offsets = neurons + (T - 1).to(tl.int64) * M
    # The state of step t-1 is prefetched while handling step t, so each step is read once.
    h_prev, shifted_prev, spike_prev = common.saved_step(
        state_ptr, offsets, mask, charge_tile, steps, T - 1, v_threshold, STATE_MODE, FIRES_AT_THRESHOLD=True
    )
    for i in range(T):
        h, shifted, spike = h_prev, shifted_prev, spike_prev
        has_prev = offsets >= M  # step t > 0
        h_prev, shifted_prev, spike_prev = common.saved_step(
            state_ptr, offsets - M, mask & has_prev, charge_tile, steps, T - 2 - i, v_threshold, STATE_MODE,
            FIRES_AT_THRESHOLD=True,
        )
        sg = surrogate_gradient(shifted, alpha, SURROGATE)
        if SOFT_RESET:
            if DETACH_RESET:
                dv_dh = 1.0
            else:
                dv_dh = 1.0 - v_threshold * sg
        else:
            if DETACH_RESET:
                dv_dh = 1.0 - spike
            else:
                dv_dh = (1.0 - spike) + (v_reset - h) * sg
        if HAS_GRAD_V_SEQ:
            grad_v += tl.load(grad_v_seq_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        grad_spike = tl.load(grad_spike_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        grad_h = grad_spike * sg + grad_v * dv_dh
        if NEURON_KIND == 0 or not DECAY_INPUT:
            grad_x = grad_h
        elif NEURON_KIND == 1:
            grad_x = grad_h / tau
        else:
            grad_x = grad_h * k
        tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        if NEURON_KIND == 2:
            v_prev = tl.where(has_prev, _reset(h_prev, spike_prev, v_threshold, v_reset, SOFT_RESET), v_first)
            if DECAY_INPUT:
                plif_sum += tl.where(mask, grad_h * (h - v_prev), 0.0)
            else:
                plif_sum += tl.where(mask, grad_h * (v_reset - v_prev), 0.0)
        grad_v = grad_h * (1.0 - k)
        offsets -= M
    tl.store(grad_v_init_ptr + neurons, grad_v.to(grad_v_init_ptr.dtype.element_ty), mask=mask)
    if NEURON_KIND == 2:
        tl.store(plif_partials_ptr + tl.program_id(0), tl.sum(plif_sum, axis=0))


def neuron_forward(
    x_seq, v_init, decay, neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, store_v_seq, state_mode
):
    steps, neurons = x_seq.shape
    spikes = torch.empty_like(x_seq)
    v_last = torch.empty(neurons, dtype=x_seq.dtype, device=x_seq.device)
    state = new_state(x_seq, state_mode)
    v_seq = torch.empty((steps, neurons) if store_v_seq else (0,), dtype=x_seq.dtype, device=x_seq.device)
    grid = (triton.cdiv(neurons, BLOCK),)
    _forward_kernel[grid](
        x_seq, v_init, decay, spikes, v_last, common.state_view(state, state_mode), v_seq,
        steps, neurons, tau, v_threshold, v_reset,
        NEURON_KIND=neuron_kind, DECAY_INPUT=decay_input, SOFT_RESET=soft_reset,
        HAS_V_INIT=v_init is not None, STORE_V_SEQ=store_v_seq, STATE_MODE=state_mode, BLOCK=BLOCK,
        num_warps=NUM_WARPS, enable_fp_fusion=False,  # no FMA contraction: bit-exact with the reference
    )  # fmt: skip
    return spikes, v_last, state, v_seq


def neuron_backward(
    grad_spike, grad_v_last, grad_v_seq, state, v_init, decay, neuron_kind, tau, decay_input, v_threshold, v_reset,
    soft_reset, detach_reset, surrogate, alpha, state_mode,
):  # fmt: skip
    steps, neurons = grad_spike.shape
    steps_padded, block, grid = common.backward_launch(steps, neurons, state_mode)
    grad_x = torch.empty_like(grad_spike)
    grad_v_init = torch.empty(neurons, dtype=grad_spike.dtype, device=grad_spike.device)
    partials = torch.empty(grid[0] if neuron_kind == NEURON_PLIF else 0, dtype=torch.float32, device=grad_spike.device)
    _backward_kernel[grid](
        grad_spike, grad_v_last, grad_v_seq, common.state_view(state, state_mode), v_init, decay,
        grad_x, grad_v_init, partials,
        steps, neurons, tau, v_threshold, v_reset, alpha,
        NEURON_KIND=neuron_kind, DECAY_INPUT=decay_input, SOFT_RESET=soft_reset,
        DETACH_RESET=detach_reset, SURROGATE=surrogate, HAS_GRAD_V_LAST=grad_v_last is not None,
        HAS_GRAD_V_SEQ=grad_v_seq is not None, HAS_V_INIT=v_init is not None, STATE_MODE=state_mode,
        T_PAD=steps_padded, BLOCK=block,
        num_warps=NUM_WARPS, enable_fp_fusion=False,  # the recomputed forward must round like the forward
    )  # fmt: skip
    return grad_x, grad_v_init, partials
