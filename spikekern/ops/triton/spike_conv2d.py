"""Triton kernels of spike_conv2d on bit-packed spikes (contract: docs/spike_conv2d.md).

Layout: the input is packed channels-last, ``[N, H, W, ceil(C/32)]`` int32 words, i.e. the pixels
``(n, h, w)`` are the rows of spike_pack's format and the channels are its bits. The convolution is
an implicit GEMM over output pixels ``m = (n, oh, ow)`` (``M = N*OH*OW`` rows), output channels
(columns) and the reduction ``(kh, kw, c)``: for each kernel tap ``(kh, kw)`` the input pixel of every
output pixel is computed, and ``spike_tile`` reads its channel bits straight from the packed words
(out-of-image pixels, i.e. padding, read as zeros). No unpacked copy of the input exists in memory.

Groups: a program's output channels lie in one group; its reduction runs over that group's channels.
"""

import torch
import triton
import triton.language as tl

from .spike_linear import dot_precision
from .spike_pack import spike_tile

BLOCK_M = 64  # output pixels per tile
BLOCK_N = 64  # output channels per tile
BLOCK_C = 32  # input channels per reduction step: one packed word when the group starts on a word
NUM_WARPS = 4


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
def _group_channels(c_local, group, C_per_group, C):
    """Global input channels of a group's ``c_local``; ``C`` (masked by ``spike_tile``) past the group."""
    return tl.where(c_local < C_per_group, group * C_per_group + c_local, C)


@triton.jit
def _dense_forward_kernel(
    packed_ptr, weight_ptr, bias_ptr, out_ptr,
    M, OC, C, H, W, OH, OW, KH, KW, words_per_pixel, C_per_group, OC_per_group,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """out ``[M, OC]`` (channels-last) = spikes at each tap ``[M, C_g]`` @ weight ``[KH, KW, C_g, OC]``."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    blocks_per_group = tl.cdiv(OC_per_group, BLOCK_N)
    group = tl.program_id(1) // blocks_per_group
    oc_local = (tl.program_id(1) % blocks_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)
    oc = group * OC_per_group + oc_local
    oc_mask = oc_local < OC_per_group
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
    if HAS_BIAS:
        acc += tl.load(bias_ptr + oc, mask=oc_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = (m[:, None] < M) & oc_mask[None, :]
    out_offsets = m[:, None].to(tl.int64) * OC + oc[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dense_grad_weight_kernel(
    grad_out_ptr, packed_ptr, grad_weight_ptr,
    M, OC, C, H, W, OH, OW, KH, KW, words_per_pixel, C_per_group, OC_per_group,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """grad_weight ``[OC, C_g, KH, KW]``: per tap, grad_out^T ``[OC, M]`` @ spikes at the tap ``[M, C_g]``.

    One program per block of output channels, block of input channels and tap; spike tiles whose bits
    are all zero (silent inputs or padding) skip the grad_out load and the product.
    """
    blocks_per_group = tl.cdiv(OC_per_group, BLOCK_N)
    group = tl.program_id(0) // blocks_per_group
    oc_local = (tl.program_id(0) % blocks_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)
    oc = group * OC_per_group + oc_local
    oc_mask = oc_local < OC_per_group
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


def _geometry(packed, weight, out_size, stride, padding, dilation, groups):
    """The kernels' shared integer arguments, in their order after the pointers."""
    batch, height, width, words_per_pixel = packed.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = out_size
    return (
        batch * out_h * out_w, out_channels, channels_per_group * groups, height, width, out_h, out_w,
        kernel_h, kernel_w, words_per_pixel, channels_per_group, out_channels // groups,
        *stride, *padding, *dilation,
    )  # fmt: skip


def dense_forward(packed, weight, bias, out_size, stride, padding, dilation, groups):
    """Packed ``[N, H, W, ceil(C/32)]`` spikes -> output ``[N, OC, OH, OW]`` in channels-last memory."""
    batch = packed.shape[0]
    out_channels = weight.shape[0]
    out = torch.empty(batch, out_channels, *out_size, dtype=weight.dtype, device=weight.device,
                      memory_format=torch.channels_last)  # fmt: skip
    # [KH, KW, C_g, OC]: a tap's weight tile is contiguous along the output channels (one copy per call).
    weight_by_tap = weight.permute(2, 3, 1, 0).contiguous()
    geometry = _geometry(packed, weight, out_size, stride, padding, dilation, groups)
    blocks_per_group = triton.cdiv(out_channels // groups, BLOCK_N)
    grid = (triton.cdiv(geometry[0], BLOCK_M), groups * blocks_per_group)
    _dense_forward_kernel[grid](
        packed, weight_by_tap, bias, out, *geometry,
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(weight.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def dense_grad_weight(grad_out, packed, weight, stride, padding, dilation, groups):
    """grad_weight ``[OC, C/groups, KH, KW]`` from ``grad_out`` ``[N, OC, OH, OW]`` and the packed input."""
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    # [N, OH, OW, OC] rows: free when grad_out is channels-last, as the forward's output is.
    grad_rows = grad_out.permute(0, 2, 3, 1).contiguous()
    geometry = _geometry(packed, weight, grad_out.shape[2:], stride, padding, dilation, groups)
    blocks_per_group = triton.cdiv(out_channels // groups, BLOCK_N)
    grid = (groups * blocks_per_group, triton.cdiv(channels_per_group, BLOCK_C), kernel_h * kernel_w)
    _dense_grad_weight_kernel[grid](
        grad_rows, packed, grad_weight, *geometry,
        DOT_PRECISION=dot_precision(grad_out.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS,
    )  # fmt: skip
    return grad_weight
