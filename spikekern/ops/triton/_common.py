"""Triton helpers shared by the multi-step neuron kernels (``neuron.py`` and ``leaky.py``).

Launch sizes, the bfloat16 bit helpers (the compact state is stored as raw 16-bit patterns so the
same code runs under ``TRITON_INTERPRET=1``, which has no bfloat16), the register-tile helpers of
the recomputing backward and the backward's reading of a saved step. State modes as in docs/neuron_ops.md.
"""

import torch
import triton
import triton.language as tl

from .._multistep import STATE_BF16, STATE_INPUT

BLOCK = 1024
NUM_WARPS = 4
# Recomputing backward keeps a [T_PAD, block] tile of charges in registers: ~32 floats per thread.
RECOMPUTE_TILE = 4096


@triton.jit
def to_bf16_bits(x):
    """float32 -> bfloat16 bit pattern (int16), round to nearest even, NaN kept NaN."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    bf16 = tl.where(x != x, 0x7FC0, (rounded >> 16) & 0xFFFF)
    return bf16.to(tl.int16)


@triton.jit
def from_bf16_bits(bits):
    return (bits.to(tl.int32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def initial_membrane(v_init_ptr, neurons, mask, v_reset, HAS_V_INIT: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_V_INIT:
        v = tl.load(v_init_ptr + neurons, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32) + v_reset
    return v


@triton.jit
def row(tile, steps, t):
    """Row ``t`` of a [T_PAD, BLOCK] register tile (exact: every other term added is 0)."""
    return tl.sum(tl.where(steps == t, tile, 0.0), axis=0)


@triton.jit
def input_tile(x_ptr, neurons, mask, steps, T, M):
    """All T steps of x for these neurons as a float32 [T_PAD, BLOCK] register tile (zeros beyond T)."""
    tile = tl.load(x_ptr + (steps.to(tl.int64) * M + neurons[None, :]), mask=(steps < T) & mask[None, :], other=0.0)
    return tile.to(tl.float32)


@triton.jit
def saved_step(
    state_ptr, offsets, mask, charge_tile, steps, t, threshold, STATE_MODE: tl.constexpr,
    FIRES_AT_THRESHOLD: tl.constexpr,
):  # fmt: skip
    """(charge, charge - threshold, spike as float) of step t: from the saved charge (STATE_MODE 1), the
    compact margin (2), or row t of the recomputed charge tile (3). FIRES_AT_THRESHOLD: whether a charge
    equal to the threshold spikes (SpikingJelly) or not (snnTorch)."""
    if STATE_MODE == 2:
        margin = from_bf16_bits(tl.load(state_ptr + offsets, mask=mask, other=0))
        charge = margin + threshold
        # The forward stored the sign bit as the spike: rounding to bfloat16 never flips it; NaN never fired.
        spike = ((margin.to(tl.int32, bitcast=True) >= 0) & (margin == margin)).to(tl.float32)
    else:
        if STATE_MODE == 1:
            charge = tl.load(state_ptr + offsets, mask=mask, other=0.0)
        else:
            charge = row(charge_tile, steps, t)
        margin = charge - threshold
        if FIRES_AT_THRESHOLD:
            spike = (margin >= 0).to(tl.float32)
        else:
            spike = (margin > 0).to(tl.float32)
    return charge, margin, spike


def state_view(state, state_mode):
    return state.view(torch.int16) if state_mode == STATE_BF16 else state


def backward_launch(steps, neurons, state_mode):
    """(T_PAD, BLOCK, grid) of a backward: a recomputing one holds a [T_PAD, BLOCK] tile in registers."""
    steps_padded = triton.next_power_of_2(steps) if state_mode == STATE_INPUT else 1
    block = min(BLOCK, RECOMPUTE_TILE // steps_padded)
    return steps_padded, block, (triton.cdiv(neurons, block),)
