"""Triton kernel of conv_bn_lif_inference (contract: spikekern/ops/conv_bn_lif.py, docs/conv_bn_lif.md).

One program owns a tile of output pixels ``m = (n, oh, ow)`` by output channels of one group and walks
t = 0..T-1: the implicit GEMM of step t (spike_conv2d's tap addressing, on a dense NCHW input, float32
accumulation), plus the folded bias, is the neuron's input; charge, fire and reset are the LIF
kernel's own functions, so they round alike; the membrane stays in registers and only spikes are stored.
"""

import torch
import triton
import triton.language as tl

from ..spike_conv2d import output_size
from .neuron import _charge, _reset
from .spike_conv2d import _tap_pixels
from .spike_linear import dot_precision

BLOCK_M = 64  # output pixels per tile
BLOCK_N = 64  # output channels per tile
BLOCK_C = 32  # input channels per reduction step
NUM_WARPS = 4


@triton.jit
def _conv_bn_lif_kernel(
    x_ptr, weight_ptr, bias_ptr, v_init_ptr, spike_ptr,
    T, M, OC, C, H, W, OH, OW, KH, KW, C_per_group, OC_per_group,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, tau, v_threshold, v_reset,
    NEURON_KIND: tl.constexpr, DECAY_INPUT: tl.constexpr, SOFT_RESET: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_V_INIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """spikes[t] ``[N, OC, OH, OW]`` = LIF step of (x[t] ``[N, C, H, W]`` conv weight ``[KH, KW, C_g, OC]``
    + bias), for t = 0..T-1, the membrane carried in registers."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    blocks_per_group = tl.cdiv(OC_per_group, BLOCK_N)
    group = tl.program_id(1) // blocks_per_group
    oc_local = (tl.program_id(1) % blocks_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)
    oc = group * OC_per_group + oc_local
    oc_mask = oc_local < OC_per_group
    out_mask = (m[:, None] < M) & oc_mask[None, :]
    pixels_per_image = OH * OW
    images = M // pixels_per_image
    # Offsets of this tile in one step's [N, OC, OH, OW]; a step is images * OC * OH * OW elements further.
    out_offsets = ((m // pixels_per_image)[:, None].to(tl.int64) * OC + oc[None, :]) * pixels_per_image + (
        m % pixels_per_image
    )[:, None]
    # tl.cast, not .to: a scalar argument equal to 1 arrives as a constant.
    out_step = tl.cast(images, tl.int64) * OC * pixels_per_image
    input_image = tl.cast(C, tl.int64) * H * W
    if HAS_V_INIT:
        v = tl.load(v_init_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32) + v_reset
    if HAS_BIAS:
        bias = tl.load(bias_ptr + oc, mask=oc_mask, other=0.0).to(tl.float32)[None, :]
    for t in range(T):
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kh in range(KH):
            for kw in range(KW):
                pixels, pixels_total = _tap_pixels(m, M, OH, OW, H, W, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                                   dil_h, dil_w)  # fmt: skip
                # The input pixel (n, ih, iw) as row n*H*W + ih*W + iw; padding reads as zeros.
                inside = pixels < pixels_total
                image = pixels // (H * W)
                rows = (t * images + image).to(tl.int64) * input_image + pixels % (H * W)
                for c_start in range(0, C_per_group, BLOCK_C):
                    c_local = c_start + tl.arange(0, BLOCK_C)
                    channels = group * C_per_group + c_local
                    c_mask = c_local < C_per_group
                    x_offsets = rows[:, None] + channels[None, :].to(tl.int64) * (H * W)
                    x = tl.load(x_ptr + x_offsets, mask=inside[:, None] & c_mask[None, :], other=0.0)
                    weight_rows = ((kh * KW + kw) * C_per_group + c_local).to(tl.int64) * OC
                    weight_mask = c_mask[:, None] & oc_mask[None, :]
                    weight = tl.load(weight_ptr + weight_rows[:, None] + oc[None, :], mask=weight_mask, other=0.0)
                    acc = tl.dot(x, weight, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += bias
        h = _charge(acc, v, 0.0, tau, v_reset, NEURON_KIND, DECAY_INPUT)
        spike = (h - v_threshold >= 0).to(tl.float32)
        v = _reset(h, spike, v_threshold, v_reset, SOFT_RESET)
        tl.store(spike_ptr + t * out_step + out_offsets, spike.to(spike_ptr.dtype.element_ty), mask=out_mask)


def conv_bn_lif_inference(
    x_seq, weight, bias, v_init, stride, padding, dilation, groups, neuron_kind, tau, decay_input, v_threshold,
    v_reset, soft_reset,
):  # fmt: skip
    """Spikes ``[T, N, OC, OH, OW]`` for contiguous x_seq ``[T, N, C, H, W]`` and the folded weight (x_seq's
    dtype), float32 bias or None, v_init ``[N, OC, OH, OW]`` or None."""
    steps, batch, _, height, width = x_seq.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = output_size((height, width), (kernel_h, kernel_w), stride, padding, dilation)
    spikes = torch.empty(steps, batch, out_channels, out_h, out_w, dtype=x_seq.dtype, device=x_seq.device)
    # [KH, KW, C_g, OC]: a tap's weight tile is contiguous along the output channels (one copy per call).
    weight_by_tap = weight.permute(2, 3, 1, 0).contiguous()
    pixels = batch * out_h * out_w
    out_per_group = out_channels // groups
    grid = (triton.cdiv(pixels, BLOCK_M), groups * triton.cdiv(out_per_group, BLOCK_N))
    _conv_bn_lif_kernel[grid](
        x_seq, weight_by_tap, bias, v_init, spikes,
        steps, pixels, out_channels, channels_per_group * groups, height, width, out_h, out_w, kernel_h, kernel_w,
        channels_per_group, out_per_group, *stride, *padding, *dilation, tau, v_threshold, v_reset,
        NEURON_KIND=neuron_kind, DECAY_INPUT=decay_input, SOFT_RESET=soft_reset, HAS_BIAS=bias is not None,
        HAS_V_INIT=v_init is not None, DOT_PRECISION=dot_precision(x_seq.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C,
        num_warps=NUM_WARPS, enable_fp_fusion=False,  # no FMA contraction: the neuron rounds as the reference
    )  # fmt: skip
    return spikes
