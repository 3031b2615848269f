"""Triton kernels that pack spikes into bits and back (format: docs/spike_ops.md).

A row of ``K`` spikes becomes ``ceil(K / 32)`` int32 words; spike ``k`` is bit ``k % 32`` of word
``k // 32``, and the padding bits of the last word are zero. ``spike_tile`` is the one place that reads
that format, shared by the spike_linear kernels.
"""

import torch
import triton
import triton.language as tl

BITS_PER_WORD = 32
PACK_BLOCK_ROWS = 16
PACK_BLOCK_WORDS = 8
UNPACK_BLOCK_ROWS = 16
UNPACK_BLOCK_K = 256
NUM_WARPS = 4


@triton.jit
def spike_tile(packed_ptr, rows, ks, rows_total, k_total, words_per_row):
    """The 0/1 spikes at ``[rows, ks]`` as int32, zero outside ``rows_total x k_total``.

    Each word is loaded once per bit that reads it; the repeats hit the same cache line, so the tile
    costs 1 bit of memory traffic per spike and no unpacked copy.
    """
    mask = (rows[:, None] < rows_total) & (ks[None, :] < k_total)
    offsets = rows[:, None].to(tl.int64) * words_per_row + (ks[None, :] // 32)
    words = tl.load(packed_ptr + offsets, mask=mask, other=0)
    # An arithmetic shift of a negative word still leaves the wanted bit in bit 0.
    return (words >> (ks[None, :] % 32)) & 1


@triton.jit
def _pack_kernel(
    spikes_ptr, packed_ptr, invalid_ptr, rows_total, k_total, words_per_row,
    VALIDATE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_WORDS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    words = tl.program_id(1) * BLOCK_WORDS + tl.arange(0, BLOCK_WORDS)
    bits = tl.arange(0, 32)
    ks = words[None, :, None] * 32 + bits[None, None, :]
    mask = (rows[:, None, None] < rows_total) & (ks < k_total)
    values = tl.load(spikes_ptr + rows[:, None, None].to(tl.int64) * k_total + ks, mask=mask, other=0)
    # The bits of one word are distinct powers of two, so their int32 sum is their OR (bit 31 wraps to
    # the sign bit, as intended).
    packed = tl.sum((values != 0).to(tl.int32) << bits[None, None, :], axis=2)
    word_mask = (rows[:, None] < rows_total) & (words[None, :] < words_per_row)
    tl.store(packed_ptr + rows[:, None].to(tl.int64) * words_per_row + words[None, :], packed, mask=word_mask)
    if VALIDATE:
        invalid = tl.max(tl.max(((values != 0) & (values != 1)).to(tl.int32), axis=2), axis=1)
        tl.atomic_max(invalid_ptr, tl.max(invalid, axis=0))


@triton.jit
def _unpack_kernel(
    packed_ptr, spikes_ptr, rows_total, k_total, words_per_row, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    spikes = spike_tile(packed_ptr, rows, ks, rows_total, k_total, words_per_row)
    mask = (rows[:, None] < rows_total) & (ks[None, :] < k_total)
    offsets = rows[:, None].to(tl.int64) * k_total + ks[None, :]
    tl.store(spikes_ptr + offsets, spikes.to(spikes_ptr.dtype.element_ty), mask=mask)


def pack_spikes(spikes, validate):
    """``[R, K]`` contiguous spikes -> (``[R, ceil(K/32)]`` int32 words, whether a value was not 0/1).

    The second result is a one-element device tensor (a flag, read by the caller only when validating),
    so the kernel never waits for the host.
    """
    rows, k_total = spikes.shape
    words_per_row = triton.cdiv(k_total, BITS_PER_WORD)
    packed = torch.empty(rows, words_per_row, dtype=torch.int32, device=spikes.device)
    invalid = torch.zeros(1, dtype=torch.int32, device=spikes.device)
    grid = (triton.cdiv(rows, PACK_BLOCK_ROWS), triton.cdiv(words_per_row, PACK_BLOCK_WORDS))
    _pack_kernel[grid](
        spikes, packed, invalid, rows, k_total, words_per_row,
        VALIDATE=validate, BLOCK_ROWS=PACK_BLOCK_ROWS, BLOCK_WORDS=PACK_BLOCK_WORDS, num_warps=NUM_WARPS,
    )  # fmt: skip
    return packed, invalid


def unpack_spikes(packed, k_total, dtype):
    rows, words_per_row = packed.shape
    spikes = torch.empty(rows, k_total, dtype=dtype, device=packed.device)
    grid = (triton.cdiv(rows, UNPACK_BLOCK_ROWS), triton.cdiv(k_total, UNPACK_BLOCK_K))
    _unpack_kernel[grid](
        packed, spikes, rows, k_total, words_per_row,
        BLOCK_ROWS=UNPACK_BLOCK_ROWS, BLOCK_K=UNPACK_BLOCK_K, num_warps=NUM_WARPS,
    )  # fmt: skip
    return spikes
