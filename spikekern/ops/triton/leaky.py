"""Triton kernels for snnTorch's Leaky neuron over all T steps (contract and math: docs/leaky_op.md).

Each program owns ``BLOCK`` neurons and walks all ``T`` steps with the membrane in registers, like the
neuron kernels (``neuron.py``); both take their launch sizes, bfloat16 bit helpers and register-tile
helpers from ``_common.py``. Constexpr ids: RESET 0 subtract, 1 zero, 2 none; STATE_MODE as in docs/neuron_ops.md.
"""

import torch
import triton
import triton.language as tl

from .._multistep import new_state
from ..leaky import mem_output_shape
from . import _common as common
from ._common import BLOCK, NUM_WARPS  # also read off this module by the AOT compile tests
from .surrogate import surrogate_gradient


@triton.jit
def _decay(beta_ptr, neurons, mask, PER_NEURON_BETA: tl.constexpr):
    """``beta.clamp(0, 1)``, per neuron or shared; a NaN stays NaN, as in torch.clamp."""
    if PER_NEURON_BETA:
        beta = tl.load(beta_ptr + neurons, mask=mask, other=0.0)
    else:
        beta = tl.load(beta_ptr)
    return tl.where(beta < 0.0, 0.0, tl.where(beta > 1.0, 1.0, beta))


@triton.jit
def _leaky_step(x, mem, decay, threshold, RESET: tl.constexpr):
    """One step in snnTorch's order: the reset is decided on the previous membrane."""
    if RESET == 2:
        new_mem = decay * mem + x
    else:
        reset = (mem - threshold > 0).to(tl.float32)
        if RESET == 0:
            new_mem = (decay * mem + x) - reset * threshold
        else:
            new_mem = decay * ((1.0 - reset) * mem) + x
    return new_mem


@triton.jit
def _forward_kernel(
    x_ptr, mem_init_ptr, beta_ptr, threshold_ptr, spike_ptr, mem_out_ptr, state_ptr, T, M,
    RESET: tl.constexpr, PER_NEURON_BETA: tl.constexpr, HAS_MEM_INIT: tl.constexpr,
    OUTPUT_MEM_SEQ: tl.constexpr, STATE_MODE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    neurons = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = neurons < M
    mem = common.initial_membrane(mem_init_ptr, neurons, mask, 0.0, HAS_MEM_INIT, BLOCK)
    decay = _decay(beta_ptr, neurons, mask, PER_NEURON_BETA)
    threshold = tl.load(threshold_ptr)
    offsets = neurons
    for _ in range(T):
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        mem = _leaky_step(x, mem, decay, threshold, RESET)
        margin = mem - threshold
        tl.store(spike_ptr + offsets, (margin > 0).to(spike_ptr.dtype.element_ty), mask=mask)
        if OUTPUT_MEM_SEQ:
            tl.store(mem_out_ptr + offsets, mem.to(mem_out_ptr.dtype.element_ty), mask=mask)
        if STATE_MODE == 1:
            tl.store(state_ptr + offsets, mem, mask=mask)
        elif STATE_MODE == 2:
            # Sign bit set <=> no spike, so that bfloat16 rounding a tiny margin to zero keeps the spike.
            compact = tl.where(margin > 0, margin, -tl.abs(margin))
            tl.store(state_ptr + offsets, common.to_bf16_bits(compact), mask=mask)
        offsets += M
    if not OUTPUT_MEM_SEQ:
        tl.store(mem_out_ptr + neurons, mem.to(mem_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_spike_ptr, grad_mem_ptr, state_ptr, mem_init_ptr, beta_ptr, threshold_ptr,
    grad_x_ptr, grad_mem_init_ptr, decay_partials_ptr, threshold_partials_ptr,
    T, M, alpha,
    RESET: tl.constexpr, SURROGATE: tl.constexpr, PER_NEURON_BETA: tl.constexpr, HAS_MEM_INIT: tl.constexpr,
    HAS_GRAD_MEM: tl.constexpr, OUTPUT_MEM_SEQ: tl.constexpr, STATE_MODE: tl.constexpr,
    BETA_GRAD: tl.constexpr, THRESHOLD_GRAD: tl.constexpr, T_PAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    neurons = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = neurons < M
    decay = _decay(beta_ptr, neurons, mask, PER_NEURON_BETA)
    threshold = tl.load(threshold_ptr)
    mem_first = common.initial_membrane(mem_init_ptr, neurons, mask, 0.0, HAS_MEM_INIT, BLOCK)
    reset_first = (mem_first - threshold > 0).to(tl.float32)
    if HAS_GRAD_MEM and not OUTPUT_MEM_SEQ:
        grad_carry = tl.load(grad_mem_ptr + neurons, mask=mask, other=0.0).to(tl.float32)
    else:
        grad_carry = tl.zeros([BLOCK], dtype=tl.float32)
    steps = tl.arange(0, T_PAD)[:, None]
    mem_tile = tl.zeros([T_PAD, BLOCK], dtype=tl.float32)
    if STATE_MODE == 3:
        # state_ptr is x_seq: re-run the forward (the same operations, so the same membranes) into registers.
        x_tile = common.input_tile(state_ptr, neurons, mask, steps, T, M)
        mem = mem_first
        for t in range(T):
            mem = _leaky_step(common.row(x_tile, steps, t), mem, decay, threshold, RESET)
            mem_tile = tl.where(steps == t, mem[None, :], mem_tile)
    decay_sum = tl.zeros([BLOCK], dtype=tl.float32)
    threshold_sum = tl.zeros([BLOCK], dtype=tl.float32)
    offsets = neurons + (T - 1).to(tl.int64) * M
    # Step t-1 is prefetched while handling step t (it gives step t's reset), so each step is read once.
    mem_prev, margin_prev, spike_prev = common.saved_step(
        state_ptr, offsets, mask, mem_tile, steps, T - 1, threshold, STATE_MODE, FIRES_AT_THRESHOLD=False
    )
    for i in range(T):
        margin = margin_prev
        has_prev = offsets >= M  # step t > 0
        mem_prev, margin_prev, spike_prev = common.saved_step(
            state_ptr, offsets - M, mask & has_prev, mem_tile, steps, T - 2 - i, threshold, STATE_MODE,
            FIRES_AT_THRESHOLD=False,
        )
        mem_before = tl.where(has_prev, mem_prev, mem_first)
        reset = tl.where(has_prev, spike_prev, reset_first)
        sg = surrogate_gradient(margin, alpha, SURROGATE)
        grad_spike = tl.load(grad_spike_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        grad_from_spike = grad_spike * sg
        grad_mem = grad_from_spike + grad_carry
        if HAS_GRAD_MEM and OUTPUT_MEM_SEQ:
            grad_mem += tl.load(grad_mem_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_x_ptr + offsets, grad_mem.to(grad_x_ptr.dtype.element_ty), mask=mask)
        if BETA_GRAD:
            if RESET == 1:
                mem_before = (1.0 - reset) * mem_before
            decay_sum += tl.where(mask, grad_mem * mem_before, 0.0)
        if THRESHOLD_GRAD:
            if RESET == 0:
                threshold_sum -= tl.where(mask, grad_from_spike + grad_mem * reset, 0.0)
            else:
                threshold_sum -= tl.where(mask, grad_from_spike, 0.0)
        if RESET == 1:
            grad_carry = grad_mem * (decay * (1.0 - reset))
        else:
            grad_carry = grad_mem * decay
        offsets -= M
    tl.store(grad_mem_init_ptr + neurons, grad_carry.to(grad_mem_init_ptr.dtype.element_ty), mask=mask)
    if BETA_GRAD:
        if PER_NEURON_BETA:
            tl.store(decay_partials_ptr + neurons, decay_sum, mask=mask)
        else:
            tl.store(decay_partials_ptr + tl.program_id(0), tl.sum(decay_sum, axis=0))
    if THRESHOLD_GRAD:
        tl.store(threshold_partials_ptr + tl.program_id(0), tl.sum(threshold_sum, axis=0))


def leaky_forward(x_seq, mem_init, beta, threshold, reset_mechanism, output_mem_seq, state_mode):
    neurons = x_seq.shape[1]
    spikes = torch.empty_like(x_seq)
    mem_out = x_seq.new_empty(mem_output_shape(x_seq.shape, output_mem_seq))
    state = new_state(x_seq, state_mode)
    _forward_kernel[(triton.cdiv(neurons, BLOCK),)](
        x_seq, mem_init, beta, threshold, spikes, mem_out, common.state_view(state, state_mode), x_seq.shape[0],
        neurons,
        RESET=reset_mechanism, PER_NEURON_BETA=beta.numel() != 1, HAS_MEM_INIT=mem_init is not None,
        OUTPUT_MEM_SEQ=output_mem_seq, STATE_MODE=state_mode, BLOCK=BLOCK,
        num_warps=NUM_WARPS, enable_fp_fusion=False,  # no FMA contraction: bit-exact with the reference
    )  # fmt: skip
    return spikes, mem_out, state


def leaky_backward(
    grad_spike, grad_mem, state, mem_init, beta, threshold, reset_mechanism, surrogate, alpha, output_mem_seq,
    state_mode, beta_grad, threshold_grad,
):  # fmt: skip
    steps, neurons = grad_spike.shape
    steps_padded, block, grid = common.backward_launch(steps, neurons, state_mode)
    per_neuron_beta = beta.numel() != 1
    grad_x = torch.empty_like(grad_spike)
    grad_mem_init = grad_spike.new_empty(neurons)
    partial_options = dict(dtype=torch.float32, device=grad_spike.device)
    decay_partials = torch.empty((neurons if per_neuron_beta else grid[0]) if beta_grad else 0, **partial_options)
    threshold_partials = torch.empty(grid[0] if threshold_grad else 0, **partial_options)
    _backward_kernel[grid](
        grad_spike, grad_mem, common.state_view(state, state_mode), mem_init, beta, threshold,
        grad_x, grad_mem_init, decay_partials, threshold_partials,
        steps, neurons, alpha,
        RESET=reset_mechanism, SURROGATE=surrogate, PER_NEURON_BETA=per_neuron_beta,
        HAS_MEM_INIT=mem_init is not None, HAS_GRAD_MEM=grad_mem is not None, OUTPUT_MEM_SEQ=output_mem_seq,
        STATE_MODE=state_mode, BETA_GRAD=beta_grad, THRESHOLD_GRAD=threshold_grad, T_PAD=steps_padded,
        BLOCK=block, num_warps=NUM_WARPS, enable_fp_fusion=False,  # the recomputed forward must round like the forward
    )  # fmt: skip
    return grad_x, grad_mem_init, decay_partials, threshold_partials
