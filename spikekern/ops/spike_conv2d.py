"""``spike_conv2d``: ``F.conv2d`` for binary spikes, keeping 1 bit per input element for backward.

Two custom ops, ``spikekern::spike_conv2d_forward`` (returns the output and the packed input) and
``spikekern::spike_conv2d_backward``; autograd saves only the packed bits (and the weight, which the
module holds anyway). The input is packed channels-last: ``[N, C, H, W]`` spikes become
``[N, H, W, ceil(C/32)]`` int32 words in spike_pack's format, each pixel's channels being one packed
row, which is what an implicit GEMM reads per kernel tap. The reference, unpack + ``F.conv2d``, is the
specification; the Triton backend has a dense implicit-GEMM path and a sparse path that adds the
weight rows of active inputs (chosen from the spike density), a transposed implicit GEMM for grad_s
and a pack kernel for NCHW input (docs/spike_conv2d.md).
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import check_backend_name
from .spike_linear import PATHS, _use_reference, choose_path, ordered_masked_sum
from .spike_pack import (
    as_rows, backend_kernels, check_spikes, pack_rows, raise_if_not_binary, select_spike_backend, unpack_rows,
    validation_enabled, words_per_row,
)  # fmt: skip

# Every backend: the CUDA C++ kernels are CUDA_KERNEL_OPS (csrc/spike/spike_conv2d_*).
CONV_KERNELS = ("cuda", "triton", "torch")
# "auto" takes the sparse path up to this fraction of active inputs. Provisional (spike_linear's
# threshold, from published sparse-vs-dense crossovers near 1-2%): to be measured on the H100 against
# this op's dense implicit GEMM, which reuses each spike tile across the output channels.
SPARSE_MAX_DENSITY = 0.02


def output_size(in_size, kernel_size, stride, padding, dilation):
    """``(OH, OW)`` of the convolution, as ``F.conv2d`` computes it."""
    return tuple(
        (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
        for size, kernel, step, pad, dil in zip(in_size, kernel_size, stride, padding, dilation)
    )


def unpack_channels_last(packed: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """Packed ``[N, H, W, ceil(C/32)]`` words -> NCHW-contiguous 0/1 spikes (reference backend)."""
    batch, height, width, _ = packed.shape
    rows = unpack_rows(as_rows(packed), channels, dtype, "torch")
    return rows.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()


def resolve_path(path: str, packed: Tensor, channels: int):
    return choose_path(path, as_rows(packed), channels, SPARSE_MAX_DENSITY)


def _empty_output(like: Tensor, batch, out_channels, out_size):
    """The forward output's layout on every backend: channels-last, the implicit GEMM's natural order."""
    return like.new_empty((batch, out_channels, *out_size)).contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------
# Reference (the specification) and the sparse path's summation order
# ----------------------------------------------------------------------------------------------


def reference_forward(packed, weight, bias, stride, padding, dilation, groups):
    """Unpack + ``F.conv2d``, written into the channels-last output every backend returns."""
    spikes = unpack_channels_last(packed, weight.shape[1] * groups, weight.dtype)
    out_size = output_size(packed.shape[1:3], weight.shape[2:], stride, padding, dilation)
    out = _empty_output(weight, packed.shape[0], weight.shape[0], out_size)
    return out.copy_(F.conv2d(spikes, weight, bias, stride, padding, dilation, groups))


def ordered_reference_forward(s, weight, bias, stride, padding, dilation, groups):
    """``F.conv2d`` for NCHW spikes summed in the sparse path's order: for each output element, in fp32
    from +0, the weights of its active inputs in ascending ``(kh, kw, c)`` (tap row-major, then the
    channel within the group), then the bias, rounded once to the dtype (``ordered_masked_sum`` on the
    unfolded input). The sparse Triton path equals it bit for bit (finite weights)."""
    batch, channels, _, _ = s.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    out_size = output_size(s.shape[2:], weight.shape[2:], stride, padding, dilation)
    # [N, C, KH*KW, L] -> per group [N*L, (kh, kw, c)]: the reduction in the documented order.
    columns = F.unfold(s.float(), (kernel_h, kernel_w), dilation, padding, stride)
    columns = columns.view(batch, channels, kernel_h * kernel_w, -1).permute(0, 3, 2, 1)
    out_per_group = out_channels // groups
    sums = []
    for group in range(groups):
        mask = columns[..., group * channels_per_group : (group + 1) * channels_per_group].flatten(0, 1).flatten(1)
        group_weight = weight[group * out_per_group : (group + 1) * out_per_group]
        sums.append(ordered_masked_sum(mask, group_weight.permute(2, 3, 1, 0).reshape(-1, out_per_group)))
    out = torch.cat(sums, 1)
    if bias is not None:
        out = out + bias.float()
    rows = out.to(weight.dtype).view(batch, *out_size, out_channels)
    return rows.permute(0, 3, 1, 2)


def _reference_backward(grad_out, packed, weight, stride, padding, dilation, groups, output_mask):
    """Unpack, then the very call autograd makes for ``F.conv2d`` (torch.nn.grad.conv2d_input and
    conv2d_weight wrap it), so the three gradients are bit-identical to F.conv2d's."""
    spikes = unpack_channels_last(packed, weight.shape[1] * groups, grad_out.dtype)
    return torch.ops.aten.convolution_backward(
        grad_out, spikes, weight, [weight.shape[0]], stride, padding, dilation, False, [0, 0], groups, output_mask
    )


# ----------------------------------------------------------------------------------------------
# Kernel backends
# ----------------------------------------------------------------------------------------------


# The spikekern_cuda ops behind each Triton host function, taking the same positional arguments.
CUDA_KERNEL_OPS = {
    "pack_nchw": "spike_conv2d_pack_nchw",
    "dense_forward": "spike_conv2d_dense_forward",
    "sparse_forward": "spike_conv2d_sparse_forward",
    "dense_grad_weight": "spike_conv2d_dense_grad_weight",
    "grad_input": "spike_conv2d_grad_input",
}


def _kernels(backend):
    return backend_kernels(backend, "spike_conv2d", CUDA_KERNEL_OPS)


def pack_channels_last(s: Tensor, validate: bool, backend: str) -> Tensor:
    """``[N, C, H, W]`` spikes -> ``[N, H, W, ceil(C/32)]`` words. A channels-last ``s`` is packed as rows
    of spike_pack's format (the permute is a view); an NCHW ``s`` goes to the backend's pack kernel,
    which gathers the channels itself, with no transposed copy."""
    batch, channels, height, width = s.shape
    pixels = s.permute(0, 2, 3, 1)
    if backend == "torch" or s.numel() == 0 or pixels.is_contiguous():
        return pack_rows(as_rows(pixels), validate, backend).view(batch, height, width, words_per_row(channels))
    packed, invalid = _kernels(backend).pack_nchw(s.contiguous(), validate)
    if validate:
        raise_if_not_binary(bool(invalid.item()), "s")
    return packed


def _run_forward(backend, path, packed, weight, bias, stride, padding, dilation, groups):
    if backend == "torch":
        return reference_forward(packed, weight, bias, stride, padding, dilation, groups)
    kernels = _kernels(backend)
    chosen, _ = resolve_path(path, packed, weight.shape[1] * groups)
    run = kernels.sparse_forward if chosen == "sparse" else kernels.dense_forward
    out_size = list(output_size(packed.shape[1:3], weight.shape[2:], stride, padding, dilation))
    return run(packed, weight, bias, out_size, stride, padding, dilation, groups)


def _kernel_backward(backend, grad_out, packed, weight, stride, padding, dilation, groups, output_mask):
    """grad_s: the transposed-convolution kernel; grad_weight: the kernel on the packed bits (both
    paths: it skips all-zero spike tiles); grad_bias: a sum."""
    needs_input_grad, needs_weight_grad, needs_bias_grad = output_mask
    kernels = _kernels(backend)
    grad_input = grad_weight = grad_bias = None
    if needs_input_grad:
        in_size = list(packed.shape[1:3])
        grad_input = kernels.grad_input(grad_out, weight, in_size, stride, padding, dilation, groups)
    if needs_weight_grad:
        grad_weight = kernels.dense_grad_weight(grad_out, packed, weight, stride, padding, dilation, groups)
    if needs_bias_grad:
        grad_bias = grad_out.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Custom ops, on [N, C, H, W] spikes
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("spikekern::spike_conv2d_forward", mutates_args=())
def spike_conv2d_forward(
    s: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int], dilation: list[int],
    groups: int, validate: bool, path: str, backend: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``F.conv2d(s, ...)`` in channels-last memory, and packed ``s``: the words that backward reads."""
    backend = select_spike_backend(backend, s, CONV_KERNELS)
    packed = pack_channels_last(s, validate, backend)
    if _use_reference(s, weight):
        backend = "torch"
    bias = None if bias is None else bias.contiguous()
    out = _run_forward(backend, path, packed, weight.contiguous(), bias, stride, padding, dilation, groups)
    return out, packed


@spike_conv2d_forward.register_fake
def _(s, weight, bias, stride, padding, dilation, groups, validate, path, backend):
    batch, channels, height, width = s.shape
    out_size = output_size((height, width), weight.shape[2:], stride, padding, dilation)
    packed = s.new_empty((batch, height, width, words_per_row(channels)), dtype=torch.int32)
    return _empty_output(s, batch, weight.shape[0], out_size), packed


@torch.library.custom_op("spikekern::spike_conv2d_backward", mutates_args=())
def spike_conv2d_backward(
    grad_out: Tensor, packed: Tensor, weight: Tensor, stride: list[int], padding: list[int], dilation: list[int],
    groups: int, needs_input_grad: bool, needs_weight_grad: bool, needs_bias_grad: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients for ``s`` (channels-last memory), ``weight`` and ``bias``; empty tensors when not needed."""
    backend = select_spike_backend(backend, grad_out, CONV_KERNELS)
    if _use_reference(grad_out, packed, weight):
        backend = "torch"
    output_mask = [needs_input_grad, needs_weight_grad, needs_bias_grad]
    args = (grad_out, packed, weight.contiguous(), stride, padding, dilation, groups, output_mask)
    grads = _reference_backward(*args) if backend == "torch" else _kernel_backward(backend, *args)
    grad_input, grad_weight, grad_bias = grads
    # Fixed layouts, the ones the fake kernel promises, whatever the backend's convolution chose; one
    # empty tensor for each gradient not asked for, as a custom op's outputs may not alias one another.
    return (
        grad_out.new_empty(0) if grad_input is None else grad_input.contiguous(memory_format=torch.channels_last),
        grad_out.new_empty(0) if grad_weight is None else grad_weight.contiguous(),
        grad_out.new_empty(0) if grad_bias is None else grad_bias,
    )


@spike_conv2d_backward.register_fake
def _(grad_out, packed, weight, stride, padding, dilation, groups, needs_input_grad, needs_weight_grad,
      needs_bias_grad, backend):  # fmt: skip
    batch, height, width, _ = packed.shape
    input_shape = (batch, weight.shape[1] * groups, height, width)
    return (
        grad_out.new_empty(input_shape).contiguous(memory_format=torch.channels_last)
        if needs_input_grad
        else grad_out.new_empty(0),
        grad_out.new_empty(weight.shape if needs_weight_grad else (0,)),
        grad_out.new_empty(weight.shape[0] if needs_bias_grad else 0),
    )


def _setup_context(ctx, inputs, output):
    _, weight, bias, stride, padding, dilation, groups, _, _, backend = inputs
    _, packed = output
    ctx.mark_non_differentiable(packed)
    ctx.save_for_backward(packed, weight)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.backend = backend
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_packed):
    packed, weight = ctx.saved_tensors
    needs_input_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
    needs_bias_grad = needs_bias_grad and ctx.has_bias
    grad_input, grad_weight, grad_bias = torch.ops.spikekern.spike_conv2d_backward(
        grad_out, packed, weight, *ctx.geometry, needs_input_grad, needs_weight_grad, needs_bias_grad, ctx.backend
    )
    return (
        grad_input if needs_input_grad else None,
        grad_weight if needs_weight_grad else None,
        grad_bias if needs_bias_grad else None,
        None, None, None, None, None, None, None,
    )  # fmt: skip


spike_conv2d_forward.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _pair(name, value, minimum):
    """``value`` (an int or two ints, each at least ``minimum``) as a list of two ints."""
    pair = [value, value] if isinstance(value, int) else list(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return pair


def _check_tensor_argument(name, t, s):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != s.dtype:
        raise TypeError(f"{name} must have s's dtype {s.dtype}, got {t.dtype}")
    if t.device != s.device:
        raise ValueError(f"{name} is on {t.device} but s is on {s.device}")


def check_convolution_geometry(name, x, weight, stride, padding, dilation, groups):
    """The normalised ``(stride, padding, dilation)`` pairs for the input ``x`` ``[..., C, H, W]`` (called
    ``name`` in errors) and ``weight``, after refusing the groups, weight shapes and geometries that
    F.conv2d would refuse."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    channels = x.shape[-3]
    if channels % groups or weight.dim() != 4 or weight.shape[1] * groups != channels or weight.shape[0] % groups:
        raise ValueError(
            f"weight must have shape [out_channels (a multiple of groups={groups}), C/groups={channels / groups:g}, "
            f"kH, kW] for {name} of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    out_size = output_size(x.shape[-2:], weight.shape[2:], stride, padding, dilation)
    if min(out_size) < 1:
        raise ValueError(
            f"the kernel {tuple(weight.shape[2:])} with dilation {dilation} does not fit the input "
            f"{tuple(x.shape[-2:])} with padding {padding}: output size {out_size}"
        )
    return stride, padding, dilation


def _check_arguments(s, weight, bias, stride, padding, dilation, groups, path, backend):
    """The normalised ``(stride, padding, dilation)`` pairs, after refusing what F.conv2d would."""
    check_spikes("s", s)
    if s.dim() not in (4, 5):
        raise ValueError(f"s must be [N, C, H, W] or time-first [T, N, C, H, W], got shape {tuple(s.shape)}")
    _check_tensor_argument("weight", weight, s)
    geometry = check_convolution_geometry("s", s, weight, stride, padding, dilation, groups)
    if bias is not None:
        _check_tensor_argument("bias", bias, s)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape [out_channels] = ({weight.shape[0]},), got {tuple(bias.shape)}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
    check_backend_name(backend)
    return geometry


class SpikeConv2dPlan(NamedTuple):
    backend: str
    path: str  # "dense", "sparse", or "reference" for the torch backend
    reason: str


def spike_conv2d(
    s: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1,
    path: str = "auto", backend: Optional[str] = None,
) -> Tensor:  # fmt: skip
    """``F.conv2d(s, weight, bias, stride, padding, dilation, groups)`` for spikes ``s`` (0/1) of shape
    ``[N, C, H, W]`` or time-first ``[T, N, C, H, W]`` (time folded into the batch).

    s, weight, bias: one dtype of float32/float16/bfloat16; weight ``[OC, C/groups, kH, kW]``, bias ``[OC]``.
    stride, padding, dilation: an int or a pair of ints (no padding strings).
    The output is in channels-last memory whatever the layout of ``s``.
    path: "dense" (implicit GEMM on tensor cores), "sparse" (adds the weight rows of the active inputs,
        skipping silent words) or "auto" (sparse up to SPARSE_MAX_DENSITY; costs one host
        synchronisation per forward to count spikes; dense while a CUDA graph is captured). Only the forward has two paths; the torch
        backend has one. ``spike_conv2d_plan`` reports the choice.
    backend: None for the best available, or "cuda", "triton", "torch"; an unusable choice raises.
    Non-binary ``s`` raises ValueError while validation is on (``spike_pack.set_validation``).
    """
    stride, padding, dilation = _check_arguments(s, weight, bias, stride, padding, dilation, groups, path, backend)
    images = s.flatten(0, 1) if s.dim() == 5 else s
    y, _ = torch.ops.spikekern.spike_conv2d_forward(
        images, weight, bias, stride, padding, dilation, groups, validation_enabled(s.device), path, backend or ""
    )
    return y.view(*s.shape[:-3], *y.shape[1:]) if s.dim() == 5 else y


def spike_conv2d_plan(
    s: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1,
    path: str = "auto", backend: Optional[str] = None,
) -> SpikeConv2dPlan:  # fmt: skip
    """Which backend and path ``spike_conv2d`` would run for these arguments, and why."""
    _check_arguments(s, weight, bias, stride, padding, dilation, groups, path, backend)
    chosen_backend = select_spike_backend(backend or "", s, CONV_KERNELS)
    if chosen_backend == "torch":
        return SpikeConv2dPlan("torch", "reference", "the torch backend runs the reference (unpack + F.conv2d)")
    images = s.flatten(0, 1) if s.dim() == 5 else s
    packed = pack_channels_last(images, validation_enabled(s.device), chosen_backend)
    return SpikeConv2dPlan(chosen_backend, *resolve_path(path, packed, images.shape[1]))
