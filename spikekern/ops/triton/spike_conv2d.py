"""Triton kernels of spike_conv2d on bit-packed spikes (contract: docs/spike_conv2d.md).

Layout: the input is packed channels-last, ``[N, H, W, ceil(C/32)]`` int32 words, i.e. the pixels
``(n, h, w)`` are the rows of spike_pack's format and the channels are its bits. The convolution is
an implicit GEMM over output pixels ``m = (n, oh, ow)`` (``M = N*OH*OW`` rows), output channels
(columns) and the reduction ``(kh, kw, c)``: for each kernel tap ``(kh, kw)`` the input pixel of every
output pixel is computed, and ``spike_tile`` reads its channel bits straight from the packed words
(out-of-image pixels, i.e. padding, read as zeros). No unpacked copy of the input exists in memory.

Dense path: ``tl.dot`` on spike tiles unpacked in registers. Sparse path: per tile of output pixels
and tap, zero words are skipped and the weight row of every set bit is added, in ascending
``(kh, kw, c)`` order (spike_conv2d.ordered_reference_forward is that order in PyTorch).

grad_s is the transposed convolution of grad_out with the weight, an implicit GEMM over input pixels
taken one stride phase at a time (only the taps that reach a phase run).
Groups: a program's output channels (or, for grad_s, input channels) lie in one group; its reduction
runs over that group's channels.
"""

import torch
import triton
import triton.language as tl

from .spike_linear import _lowest_set_bit, dot_precision
from .spike_pack import BITS_PER_WORD, spike_tile

BLOCK_M = 64  # output pixels (input pixels for grad_s) per tile
BLOCK_N = 64  # output channels (input channels for grad_s) per tile
BLOCK_C = 32  # input channels per reduction step: one packed word when the group starts on a word
GRAD_INPUT_BLOCK_K = 32  # output channels per reduction step of grad_s
SPARSE_BLOCK_M = 32  # output pixels per sparse tile: a set bit loads one weight row per pixel
PACK_BLOCK_PIXELS = 64
NUM_WARPS = 4


@triton.jit
def _group_block(program, per_group, BLOCK: tl.constexpr):
    """(group, channels within the group, mask) of the ``program``-th block of ``BLOCK`` channels, the
    blocks of each group being numbered consecutively."""
    blocks_per_group = tl.cdiv(per_group, BLOCK)
    local = (program % blocks_per_group) * BLOCK + tl.arange(0, BLOCK)
    return program // blocks_per_group, local, local < per_group


@triton.jit
def _tap_pixels(m, M, OH, OW, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """The packed row (input pixel ``(n, ih, iw)``) that output pixels ``m`` read at tap ``(kh, kw)``;
    ``N*H*W`` (past the last row, so ``spike_tile`` reads zeros) where that pixel is padding."""
    pixels_per_image = OH * OW
    n = m // pixels_per_image
    oh = (m % pixels_per_image) // OW
    ow = m % OW
    ih = oh * stride_h - pad_h + kh * dil_h
    iw = ow * stride_w - pad_w + kw * dil_w
    inside = (m < M) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pixels_total = (M // pixels_per_image) * H * W
    return tl.where(inside, (n * H + ih) * W + iw, pixels_total), pixels_total


@triton.jit
def _phase_pixels(program, N, H, W, stride_h, stride_w, BLOCK_M: tl.constexpr):
    """The stride phase ``(ph, pw)`` of grad_s program ``program`` and its input pixels ``(n, ih, iw)``
    with ``ih % stride_h == ph`` and ``iw % stride_w == pw`` (``BLOCK_M`` of them, masked past the end)."""
    phase_rows = tl.cdiv(H, stride_h)
    phase_cols = tl.cdiv(W, stride_w)
    per_phase = N * phase_rows * phase_cols
    blocks_per_phase = tl.cdiv(per_phase, BLOCK_M)
    phase = program // blocks_per_phase
    ph = phase // stride_w
    pw = phase % stride_w
    local = (program % blocks_per_phase) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = local // (phase_rows * phase_cols)
    ih = ph + ((local // phase_cols) % phase_rows) * stride_h
    iw = pw + (local % phase_cols) * stride_w
    return ph, pw, n, ih, iw, (local < per_phase) & (ih < H) & (iw < W)


@triton.jit
def _group_channels(c_local, group, C_per_group, C):
    """Global input channels of a group's ``c_local``; ``C`` (masked by ``spike_tile``) past the group."""
    return tl.where(c_local < C_per_group, group * C_per_group + c_local, C)


@triton.jit
def _group_bits(word_index, group, C_per_group):
    """The bits of packed word ``word_index`` that hold channels of ``group``, as an int32 mask (built
    in int64 so that a shift by 32 is defined)."""
    first = tl.maximum(group * C_per_group - word_index * 32, 0).to(tl.int64)
    end = tl.minimum((group + 1) * C_per_group - word_index * 32, 32).to(tl.int64)
    one = tl.full((), 1, tl.int64)
    return ((one << end) - (one << first)).to(tl.int32)


@triton.jit
def _store_output(acc, bias_ptr, out_ptr, m, M, OC, oc, oc_mask, HAS_BIAS: tl.constexpr):
    """Adds the bias to the fp32 ``acc`` and stores it, rounded once, as rows ``m`` of out ``[M, OC]``."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=oc_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = (m[:, None] < M) & oc_mask[None, :]
    out_offsets = m[:, None].to(tl.int64) * OC + oc[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dense_forward_kernel(
    packed_ptr, weight_ptr, bias_ptr, out_ptr, M, words_per_pixel,
    OC, C, H, W, OH, OW, KH, KW, C_per_group, OC_per_group, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out ``[M, OC]`` (channels-last) = spikes at each tap ``[M, C_g]`` @ weight ``[KH, KW, C_g, OC]``."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    group, oc_local, oc_mask = _group_block(tl.program_id(1), OC_per_group, BLOCK_N)
    oc = group * OC_per_group + oc_local
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(KH):
        for kw in range(KW):
            pixels, pixels_total = _tap_pixels(m, M, OH, OW, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                               dil_h, dil_w)  # fmt: skip
            for c_start in range(0, C_per_group, BLOCK_C):
                c_local = c_start + tl.arange(0, BLOCK_C)
                channels = _group_channels(c_local, group, C_per_group, C)
                spikes = spike_tile(packed_ptr, pixels, channels, pixels_total, C, words_per_pixel)
                weight_rows = ((kh * KW + kw) * C_per_group + c_local).to(tl.int64) * OC
                weight_mask = (c_local[:, None] < C_per_group) & oc_mask[None, :]
                weight = tl.load(weight_ptr + weight_rows[:, None] + oc[None, :], mask=weight_mask, other=0.0)
                acc = tl.dot(spikes.to(weight.dtype), weight, acc, input_precision=DOT_PRECISION)
    _store_output(acc, bias_ptr, out_ptr, m, M, OC, oc, oc_mask, HAS_BIAS)


@triton.jit
def _sparse_forward_kernel(
    packed_ptr, weight_ptr, bias_ptr, out_ptr, M, words_per_pixel,
    OC, C, H, W, OH, OW, KH, KW, C_per_group, OC_per_group, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """out ``[M, OC]`` (channels-last): for each tap, each packed word of the group's channels and each
    set bit, the weight row ``[kh, kw, c, :]`` of ``[KH, KW, C_g, OC]`` is added to the pixel's sum.

    The tile's pixels walk their own bits in lockstep (lowest first), so a word that is zero for every
    pixel of the tile costs one load and no iteration. Each pixel's sum runs from +0 over ascending
    ``(kh, kw, c)`` in fp32, then the bias: exactly ``ordered_reference_forward``'s order.
    """
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    group, oc_local, oc_mask = _group_block(tl.program_id(1), OC_per_group, BLOCK_N)
    oc = group * OC_per_group + oc_local
    first_word = group * C_per_group // 32
    last_word = ((group + 1) * C_per_group - 1) // 32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(KH):
        for kw in range(KW):
            pixels, pixels_total = _tap_pixels(m, M, OH, OW, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                               dil_h, dil_w)  # fmt: skip
            word_ptrs = packed_ptr + pixels.to(tl.int64) * words_per_pixel
            for word_index in range(first_word, last_word + 1):
                words = tl.load(word_ptrs + word_index, mask=pixels < pixels_total, other=0)
                words = words & _group_bits(word_index, group, C_per_group)
                # Weight row of bit 0 of this word, counted in the group's channels (may be negative).
                row_base = (kh * KW + kw) * C_per_group + word_index * 32 - group * C_per_group
                while tl.max((words != 0).to(tl.int32), axis=0) != 0:
                    lowest, bit = _lowest_set_bit(words)
                    rows = (row_base + bit).to(tl.int64) * OC
                    mask = (words != 0)[:, None] & oc_mask[None, :]
                    acc += tl.load(weight_ptr + rows[:, None] + oc[None, :], mask=mask, other=0.0).to(tl.float32)
                    words = words ^ lowest
    _store_output(acc, bias_ptr, out_ptr, m, M, OC, oc, oc_mask, HAS_BIAS)


@triton.jit
def _dense_grad_weight_kernel(
    grad_out_ptr, packed_ptr, grad_weight_ptr, M, words_per_pixel,
    OC, C, H, W, OH, OW, KH, KW, C_per_group, OC_per_group, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """grad_weight ``[OC, C_g, KH, KW]``: per tap, grad_out^T ``[OC, M]`` @ spikes at the tap ``[M, C_g]``.

    One program per block of output channels, block of input channels and tap; spike tiles whose bits
    are all zero (silent inputs or padding) skip the grad_out load and the product.
    """
    group, oc_local, oc_mask = _group_block(tl.program_id(0), OC_per_group, BLOCK_N)
    oc = group * OC_per_group + oc_local
    c_local = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channels = _group_channels(c_local, group, C_per_group, C)
    kh = tl.program_id(2) // KW
    kw = tl.program_id(2) % KW
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for m_start in range(0, M, BLOCK_M):
        m = m_start + tl.arange(0, BLOCK_M)
        pixels, pixels_total = _tap_pixels(m, M, OH, OW, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                           dil_h, dil_w)  # fmt: skip
        spikes = spike_tile(packed_ptr, pixels, channels, pixels_total, C, words_per_pixel)
        if tl.max(tl.max(spikes, axis=1), axis=0) != 0:
            grad_mask = oc_mask[:, None] & (m[None, :] < M)
            grad_offsets = m[None, :].to(tl.int64) * OC + oc[:, None]
            grad_t = tl.load(grad_out_ptr + grad_offsets, mask=grad_mask, other=0.0)
            acc = tl.dot(grad_t, spikes.to(grad_t.dtype), acc, input_precision=DOT_PRECISION)
    mask = oc_mask[:, None] & (c_local[None, :] < C_per_group)
    offsets = ((oc[:, None].to(tl.int64) * C_per_group + c_local[None, :]) * KH + kh) * KW + kw
    tl.store(grad_weight_ptr + offsets, acc.to(grad_weight_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_input_kernel(
    grad_out_ptr, weight_ptr, grad_input_ptr, N,
    OC, C, H, W, OH, OW, KH, KW, C_per_group, OC_per_group, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """grad_s ``[N*H*W, C]`` (input pixels, channels-last) = per tap, the grad_out rows of the output
    pixels that read each input pixel ``[BLOCK_M, OC_g]`` @ weight ``[KH, KW, OC, C_g]``.

    An output pixel reads input row ``oh * stride_h - pad_h + kh * dil_h``, so a tap reaches the input
    rows of one residue modulo the stride: a program takes the pixels of one stride phase ``(ph, pw)``
    and skips the taps that cannot reach it, instead of masking ``1 - 1/(stride_h*stride_w)`` of its work.
    """
    ph, pw, n, ih, iw, pixel_mask = _phase_pixels(tl.program_id(0), N, H, W, stride_h, stride_w, BLOCK_M)
    group, c_local, c_mask = _group_block(tl.program_id(1), C_per_group, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(KH):
        # Offset by a multiple of the stride to keep % off negative numbers, which the GPU rounds towards
        # zero and the interpreter towards minus infinity.
        reaches_rows = (ph + pad_h + stride_h * KH * dil_h - kh * dil_h) % stride_h == 0
        for kw in range(KW):
            reaches_cols = (pw + pad_w + stride_w * KW * dil_w - kw * dil_w) % stride_w == 0
            if reaches_rows & reaches_cols:
                oh_strided = ih + pad_h - kh * dil_h
                ow_strided = iw + pad_w - kw * dil_w
                oh = oh_strided // stride_h
                ow = ow_strided // stride_w
                inside = pixel_mask & (oh_strided >= 0) & (ow_strided >= 0) & (oh < OH) & (ow < OW)
                rows = (n * OH + oh) * OW + ow
                for oc_start in range(0, OC_per_group, BLOCK_K):
                    oc_local = oc_start + tl.arange(0, BLOCK_K)
                    oc_mask = oc_local < OC_per_group
                    oc = group * OC_per_group + oc_local
                    grad_mask = inside[:, None] & oc_mask[None, :]
                    grad_offsets = rows[:, None].to(tl.int64) * OC + oc[None, :]
                    grad = tl.load(grad_out_ptr + grad_offsets, mask=grad_mask, other=0.0)
                    weight_rows = ((kh * KW + kw) * OC + oc).to(tl.int64) * C_per_group
                    weight_mask = oc_mask[:, None] & c_mask[None, :]
                    weight = tl.load(weight_ptr + weight_rows[:, None] + c_local[None, :], mask=weight_mask, other=0.0)
                    acc = tl.dot(grad, weight, acc, input_precision=DOT_PRECISION)
    pixels = (n.to(tl.int64) * H + ih) * W + iw
    mask = pixel_mask[:, None] & c_mask[None, :]
    offsets = pixels[:, None] * C + group * C_per_group + c_local[None, :]
    tl.store(grad_input_ptr + offsets, acc.to(grad_input_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pack_nchw_kernel(
    spikes_ptr, packed_ptr, invalid_ptr, pixels_total, C, HW, words_per_pixel,
    VALIDATE: tl.constexpr, BLOCK_PIXELS: tl.constexpr,
):  # fmt: skip
    """Word ``program_id(1)`` of ``BLOCK_PIXELS`` pixels ``(n, h, w)``: its 32 channels are gathered from
    32 planes of NCHW ``spikes``, each read along the pixels (contiguous there, so coalesced)."""
    pixels = tl.program_id(0) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    word_index = tl.program_id(1)
    bits = tl.arange(0, 32)
    channels = word_index * 32 + bits
    images = (pixels // HW).to(tl.int64)
    offsets = (images[:, None] * C + channels[None, :]) * HW + (pixels % HW)[:, None]
    mask = (pixels[:, None] < pixels_total) & (channels[None, :] < C)
    values = tl.load(spikes_ptr + offsets, mask=mask, other=0)
    # Distinct powers of two: their int32 sum is their OR (bit 31 wraps to the sign bit, as intended).
    packed = tl.sum((values != 0).to(tl.int32) << bits[None, :], axis=1)
    word_offsets = pixels.to(tl.int64) * words_per_pixel + word_index
    tl.store(packed_ptr + word_offsets, packed, mask=pixels < pixels_total)
    if VALIDATE:
        invalid = tl.max(tl.max(((values != 0) & (values != 1)).to(tl.int32), axis=1), axis=0)
        tl.atomic_max(invalid_ptr, invalid)


def _geometry(weight, in_size, out_size, stride, padding, dilation, groups):
    """The kernels' shared integer arguments, in their order after ``M`` (and ``words_per_pixel``)."""
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    return (
        out_channels, channels_per_group * groups, *in_size, *out_size, kernel_h, kernel_w,
        channels_per_group, out_channels // groups, *stride, *padding, *dilation,
    )  # fmt: skip


def _forward(kernel, packed, weight, bias, out_size, stride, padding, dilation, groups, block_m, **constexprs):
    """Runs a forward kernel (one program per ``block_m`` output pixels and ``BLOCK_N`` output channels
    of one group) on the packed ``[N, H, W, ceil(C/32)]`` spikes; the output is channels-last."""
    batch, height, width, words_per_pixel = packed.shape
    out_channels = weight.shape[0]
    out = torch.empty(batch, out_channels, *out_size, dtype=weight.dtype, device=weight.device,
                      memory_format=torch.channels_last)  # fmt: skip
    # [KH, KW, C_g, OC]: a tap's weight rows are contiguous along the output channels (one copy per call).
    weight_by_tap = weight.permute(2, 3, 1, 0).contiguous()
    bias = None if bias is None else bias.contiguous()
    rows = batch * out_size[0] * out_size[1]
    geometry = _geometry(weight, (height, width), out_size, stride, padding, dilation, groups)
    grid = (triton.cdiv(rows, block_m), groups * triton.cdiv(out_channels // groups, BLOCK_N))
    kernel[grid](
        packed.contiguous(), weight_by_tap, bias, out, rows, words_per_pixel, *geometry,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS, **constexprs,
    )  # fmt: skip
    return out


def dense_forward(packed, weight, bias, out_size, stride, padding, dilation, groups):
    """Packed ``[N, H, W, ceil(C/32)]`` spikes -> output ``[N, OC, OH, OW]`` in channels-last memory."""
    return _forward(
        _dense_forward_kernel, packed, weight, bias, out_size, stride, padding, dilation, groups, BLOCK_M,
        DOT_PRECISION=dot_precision(weight.dtype), BLOCK_C=BLOCK_C,
    )  # fmt: skip


def sparse_forward(packed, weight, bias, out_size, stride, padding, dilation, groups):
    """As ``dense_forward``, adding the weight rows of the set bits only (work grows with the spikes)."""
    return _forward(
        _sparse_forward_kernel, packed, weight, bias, out_size, stride, padding, dilation, groups, SPARSE_BLOCK_M
    )


def _grad_rows(grad_out):
    """``grad_out`` ``[N, OC, OH, OW]`` as ``[N*OH*OW, OC]`` rows: free when it is channels-last, as the
    forward's output is."""
    return grad_out.permute(0, 2, 3, 1).contiguous()


def dense_grad_weight(grad_out, packed, weight, stride, padding, dilation, groups):
    """grad_weight ``[OC, C/groups, KH, KW]`` from ``grad_out`` ``[N, OC, OH, OW]`` and the packed input."""
    batch, height, width, words_per_pixel = packed.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    out_size = grad_out.shape[2:]
    geometry = _geometry(weight, (height, width), out_size, stride, padding, dilation, groups)
    grid = (groups * triton.cdiv(out_channels // groups, BLOCK_N), triton.cdiv(channels_per_group, BLOCK_C),
            kernel_h * kernel_w)  # fmt: skip
    _dense_grad_weight_kernel[grid](
        _grad_rows(grad_out), packed.contiguous(), grad_weight, batch * out_size[0] * out_size[1], words_per_pixel,
        *geometry, DOT_PRECISION=dot_precision(grad_out.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_weight


def grad_input(grad_out, weight, in_size, stride, padding, dilation, groups):
    """grad_s ``[N, C, H, W]`` (channels-last memory; ``in_size = [H, W]``): the transposed convolution
    of ``grad_out`` ``[N, OC, OH, OW]`` with ``weight`` ``[OC, C/groups, KH, KW]``."""
    batch = grad_out.shape[0]
    channels_per_group = weight.shape[1]
    grad_s = torch.empty(batch, channels_per_group * groups, *in_size, dtype=grad_out.dtype,
                         device=grad_out.device, memory_format=torch.channels_last)  # fmt: skip
    # [KH, KW, OC, C_g]: a tap's weight tile is contiguous along the input channels (one copy per call).
    weight_by_tap = weight.permute(2, 3, 0, 1).contiguous()
    geometry = _geometry(weight, in_size, grad_out.shape[2:], stride, padding, dilation, groups)
    # One run of programs per stride phase, each as long as the largest phase (the first).
    per_phase = batch * triton.cdiv(in_size[0], stride[0]) * triton.cdiv(in_size[1], stride[1])
    grid = (stride[0] * stride[1] * triton.cdiv(per_phase, BLOCK_M), groups * triton.cdiv(channels_per_group, BLOCK_N))
    _grad_input_kernel[grid](
        _grad_rows(grad_out), weight_by_tap, grad_s, batch, *geometry,
        DOT_PRECISION=dot_precision(grad_out.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=GRAD_INPUT_BLOCK_K, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_s


def pack_nchw(spikes, validate):
    """NCHW ``[N, C, H, W]`` spikes -> (``[N, H, W, ceil(C/32)]`` int32 words, a one-element int32 flag
    set to 1 if a value other than 0/1 was seen while ``validate``), with no transposed copy."""
    batch, channels, height, width = spikes.shape
    words_per_pixel = triton.cdiv(channels, BITS_PER_WORD)
    packed = torch.empty(batch, height, width, words_per_pixel, dtype=torch.int32, device=spikes.device)
    invalid = torch.zeros(1, dtype=torch.int32, device=spikes.device)
    pixels = batch * height * width
    grid = (triton.cdiv(pixels, PACK_BLOCK_PIXELS), words_per_pixel)
    _pack_nchw_kernel[grid](
        spikes.contiguous(), packed, invalid, pixels, channels, height * width, words_per_pixel,
        VALIDATE=validate, BLOCK_PIXELS=PACK_BLOCK_PIXELS, num_warps=NUM_WARPS,
    )  # fmt: skip
    return packed, invalid
