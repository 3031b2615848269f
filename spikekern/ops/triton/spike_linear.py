"""Triton kernels of spike_linear on bit-packed spikes (contract and orders: docs/spike_ops.md).

Shapes: packed spikes ``[M, W]`` int32 (``W = ceil(K / 32)``), weight ``[N, K]``, output ``[M, N]``.

Dense path: tensor-core tiles; each program unpacks its ``[BLOCK_M, BLOCK_K]`` spike tile in registers
and feeds it to ``tl.dot``. Sparse path: one program per input row and block of outputs walks the row's
words, skips zero words and adds the weight row of every set bit in ascending input order, so its fp32
sum is exactly the ordered sum the reference ``reference_ordered_linear`` computes.
"""

import torch
import triton
import triton.language as tl

from .spike_pack import spike_tile

DENSE_BLOCK_M = 64
DENSE_BLOCK_N = 64
DENSE_BLOCK_K = 64
SPARSE_BLOCK_N = 128
NUM_WARPS = 4


def dot_precision(dtype):
    """float32 inputs use three TF32 products (close to fp32, like cuBLAS without TF32); 16-bit inputs
    are exact on tensor cores anyway."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


@triton.jit
def _dense_forward_kernel(
    packed_ptr, weight_ptr, bias_ptr, out_ptr, M, N, K, words_per_row,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        spikes = spike_tile(packed_ptr, rows, ks, M, K, words_per_row).to(weight_ptr.dtype.element_ty)
        weight_mask = (ks[:, None] < K) & (cols[None, :] < N)
        weight_t = tl.load(weight_ptr + cols[None, :].to(tl.int64) * K + ks[:, None], mask=weight_mask, other=0.0)
        acc = tl.dot(spikes, weight_t, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _lowest_set_bit(word):
    """Index of the lowest set bit of a nonzero int32 word: the exponent of ``word & -word`` as a float
    (a power of two, exact in fp32; for bit 31 the value is -2**31, hence the abs)."""
    lowest = word & -word
    exponent = (tl.abs(lowest.to(tl.float32)).to(tl.int32, bitcast=True) >> 23) - 127
    return lowest, exponent


@triton.jit
def _sparse_forward_kernel(
    packed_ptr, weight_t_ptr, bias_ptr, out_ptr, N, words_per_row, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for word_index in range(words_per_row):
        word = tl.load(packed_ptr + row * words_per_row + word_index)
        while word != 0:
            lowest, bit = _lowest_set_bit(word)
            k = word_index * 32 + bit
            acc += tl.load(weight_t_ptr + k.to(tl.int64) * N + cols, mask=col_mask, other=0.0).to(tl.float32)
            word = word ^ lowest
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _dense_grad_weight_kernel(
    grad_out_ptr, packed_ptr, grad_weight_ptr, M, N, K, words_per_row, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """grad_weight ``[N, K]`` = grad_out^T ``[N, M]`` @ spikes ``[M, K]``; all-silent spike tiles are skipped."""
    outs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m_start in range(0, M, BLOCK_M):
        rows = m_start + tl.arange(0, BLOCK_M)
        spikes = spike_tile(packed_ptr, rows, ks, M, K, words_per_row)
        if tl.max(tl.max(spikes, axis=1), axis=0) != 0:
            grad_mask = (outs[:, None] < N) & (rows[None, :] < M)
            grad_t = tl.load(grad_out_ptr + rows[None, :].to(tl.int64) * N + outs[:, None], mask=grad_mask, other=0.0)
            acc = tl.dot(grad_t, spikes.to(grad_t.dtype), acc, input_precision=DOT_PRECISION)
    mask = (outs[:, None] < N) & (ks[None, :] < K)
    offsets = outs[:, None].to(tl.int64) * K + ks[None, :]
    tl.store(grad_weight_ptr + offsets, acc.to(grad_weight_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sparse_grad_weight_kernel(
    grad_out_ptr, packed_ptr, grad_weight_ptr, M, N, K, words_per_row, BLOCK_N: tl.constexpr
):
    """One program per block of outputs and one packed word (32 inputs): rows whose word is zero are
    skipped; the others add grad_out's row to the columns of their set bits, in ascending row order."""
    outs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    word_index = tl.program_id(1)
    bit_numbers = tl.arange(0, 32)
    out_mask = outs < N
    acc = tl.zeros((BLOCK_N, 32), dtype=tl.float32)
    # Row pointers advance by increments: 64-bit pointer arithmetic, no int32 row * width product.
    word_ptr = packed_ptr + word_index
    grad_ptr = grad_out_ptr + outs
    for _ in range(M):
        word = tl.load(word_ptr)
        if word != 0:
            bits = ((word >> bit_numbers) & 1).to(tl.float32)
            grad = tl.load(grad_ptr, mask=out_mask, other=0.0).to(tl.float32)
            acc += grad[:, None] * bits[None, :]
        word_ptr += words_per_row
        grad_ptr += N
    ks = word_index * 32 + bit_numbers
    mask = out_mask[:, None] & (ks[None, :] < K)
    offsets = outs[:, None].to(tl.int64) * K + ks[None, :]
    tl.store(grad_weight_ptr + offsets, acc.to(grad_weight_ptr.dtype.element_ty), mask=mask)


def dense_forward(packed, k_total, weight, bias):
    rows, words_per_row = packed.shape
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=weight.dtype, device=weight.device)
    grid = (triton.cdiv(rows, DENSE_BLOCK_M), triton.cdiv(out_features, DENSE_BLOCK_N))
    _dense_forward_kernel[grid](
        packed, weight, bias, out, rows, out_features, k_total, words_per_row,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(weight.dtype),
        BLOCK_M=DENSE_BLOCK_M, BLOCK_N=DENSE_BLOCK_N, BLOCK_K=DENSE_BLOCK_K, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def sparse_forward(packed, k_total, weight, bias):
    rows, words_per_row = packed.shape
    out_features = weight.shape[0]
    out = torch.empty(rows, out_features, dtype=weight.dtype, device=weight.device)
    # The gather reads whole weight columns; transposed they are contiguous rows (one copy per call).
    weight_t = weight.t().contiguous()
    grid = (rows, triton.cdiv(out_features, SPARSE_BLOCK_N))
    _sparse_forward_kernel[grid](
        packed, weight_t, bias, out, out_features, words_per_row,
        HAS_BIAS=bias is not None, BLOCK_N=SPARSE_BLOCK_N, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def dense_grad_weight(grad_out, packed, k_total):
    rows, out_features = grad_out.shape
    grad_weight = torch.empty(out_features, k_total, dtype=grad_out.dtype, device=grad_out.device)
    grid = (triton.cdiv(out_features, DENSE_BLOCK_N), triton.cdiv(k_total, DENSE_BLOCK_K))
    _dense_grad_weight_kernel[grid](
        grad_out, packed, grad_weight, rows, out_features, k_total, packed.shape[1],
        DOT_PRECISION=dot_precision(grad_out.dtype),
        BLOCK_M=DENSE_BLOCK_M, BLOCK_N=DENSE_BLOCK_N, BLOCK_K=DENSE_BLOCK_K, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_weight


def sparse_grad_weight(grad_out, packed, k_total):
    rows, out_features = grad_out.shape
    grad_weight = torch.empty(out_features, k_total, dtype=grad_out.dtype, device=grad_out.device)
    grid = (triton.cdiv(out_features, SPARSE_BLOCK_N), packed.shape[1])
    _sparse_grad_weight_kernel[grid](
        grad_out, packed, grad_weight, rows, out_features, k_total, packed.shape[1],
        BLOCK_N=SPARSE_BLOCK_N, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_weight
