"""``conv_bn_lif_inference``: convolution, eval-mode BatchNorm and LIF/IF neurons over all T steps, fused.

Inference only (no autograd). One custom op, ``spikekern::conv_bn_lif_inference``, folds the
BatchNorm into the convolution's weight and bias and hands the kernels (Triton, CUDA C++) contiguous
tensors; each kernel computes step t's convolution as an implicit GEMM with float32 accumulation and
feeds it straight into the neuron, whose membrane stays in registers for all T steps and is never
written to memory: only the spikes are. The reference below (fold, ``F.conv2d`` on the time-folded
batch, the LIF op's own reference over T) is the specification; docs/conv_bn_lif.md.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import check_backend_name, select_backend
from ._multistep import (
    FLOATING_DTYPES, STATE_NONE, check_bool, check_finite_float, check_tensor_argument, compute_dtype, run,
)  # fmt: skip
from .neuron import NEURON_IF, NEURON_LIF, reference_forward
from .spike_conv2d import check_convolution_geometry, output_size

NEURONS = {"if": NEURON_IF, "lif": NEURON_LIF}


def fold_batch_norm(weight, bias, bn_mean, bn_var, bn_weight, bn_bias, bn_eps):
    """``(weight, bias)`` of one convolution equal to the convolution followed by eval-mode
    ``F.batch_norm(y, bn_mean, bn_var, bn_weight, bn_bias, eps=bn_eps)``, in float32 (float64 for a
    float64 weight): ``scale = bn_weight / sqrt(bn_var + bn_eps)``, ``weight * scale`` per output channel,
    ``(bias - bn_mean) * scale + bn_bias``. ``bn_weight``/``bn_bias`` None: an affine-free BatchNorm.
    With ``bn_mean`` and ``bn_var`` None there is no BatchNorm: the weight is only widened and a None bias
    stays None."""
    cdtype = compute_dtype(weight.dtype)
    weight = weight.to(cdtype)
    if bn_mean is None:
        return weight, None if bias is None else bias.to(cdtype)
    # 1 / sqrt, as F.batch_norm's inverse standard deviation (not rsqrt, which rounds differently).
    scale = 1.0 / torch.sqrt(bn_var.to(cdtype) + bn_eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(cdtype)
    shifted = -bn_mean.to(cdtype) if bias is None else bias.to(cdtype) - bn_mean.to(cdtype)
    folded_bias = shifted * scale
    if bn_bias is not None:
        folded_bias = folded_bias + bn_bias.to(cdtype)
    return weight * scale.view(-1, 1, 1, 1), folded_bias


# ----------------------------------------------------------------------------------------------
# Reference (the specification) and the kernel contract
# ----------------------------------------------------------------------------------------------
# Every backend takes: x_seq [T, N, C, H, W] contiguous; the folded weight [OC, C/groups, kH, kW] in
# x_seq's dtype (the GEMM's operands), contiguous; the folded bias [OC] in float32 (float64 for float64
# input) or None; v_init [N, OC, OH, OW] in x_seq's dtype or None; the geometry; the neuron's scalars
# (neuron_kind 0 IF / 1 LIF, v_reset 0 for soft reset). It returns the spikes [T, N, OC, OH, OW],
# contiguous, in x_seq's dtype.


def reference(
    x_seq, weight, bias, v_init, stride, padding, dilation, groups, neuron_kind, tau, decay_input, v_threshold,
    v_reset, soft_reset,
):  # fmt: skip
    """``F.conv2d`` in float32 on the time-folded batch, then the LIF op's reference over T."""
    cdtype = compute_dtype(x_seq.dtype)
    steps, batch = x_seq.shape[:2]
    y = F.conv2d(x_seq.flatten(0, 1).to(cdtype), weight.to(cdtype), bias, stride, padding, dilation, groups)
    spikes, *_ = reference_forward(
        y.view(steps, batch, *y.shape[1:]), v_init, None, neuron_kind, tau, decay_input, v_threshold, v_reset,
        soft_reset, False, STATE_NONE,
    )  # fmt: skip
    return spikes.to(x_seq.dtype).contiguous()


def _output_shape(x_seq, weight, stride, padding, dilation):
    steps, batch, _, height, width = x_seq.shape
    return (steps, batch, weight.shape[0], *output_size((height, width), weight.shape[2:], stride, padding, dilation))


@torch.library.custom_op("spikekern::conv_bn_lif_inference", mutates_args=())
def conv_bn_lif_inference_op(
    x_seq: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
    dilation: list[int], groups: int, bn_mean: Optional[Tensor], bn_var: Optional[Tensor],
    bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], bn_eps: float, neuron_kind: int, tau: float,
    decay_input: bool, v_threshold: float, v_reset: float, soft_reset: bool, v_init: Optional[Tensor],
    backend: str,
) -> Tensor:  # fmt: skip
    """Spikes ``[T, N, OC, OH, OW]`` in x_seq's dtype; arguments as ``conv_bn_lif_inference``'s, checked."""
    weight, bias = fold_batch_norm(weight, bias, bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
    cdtype = compute_dtype(x_seq.dtype)
    args = (
        weight.to(x_seq.dtype).contiguous(), None if bias is None else bias.to(cdtype).contiguous(),
        None if v_init is None else v_init.contiguous(), stride, padding, dilation, groups, neuron_kind, tau,
        decay_input, v_threshold, v_reset, soft_reset,
    )  # fmt: skip
    if x_seq.numel() == 0 or weight.shape[0] == 0:
        return reference(x_seq, *args)
    backend = select_backend(backend, x_seq)
    return run(backend, "conv_bn_lif_inference", reference, x_seq.contiguous(), *args)


@conv_bn_lif_inference_op.register_fake
def _(x_seq, weight, bias, stride, padding, dilation, groups, bn_mean, bn_var, bn_weight, bn_bias, bn_eps,
      neuron_kind, tau, decay_input, v_threshold, v_reset, soft_reset, v_init, backend):  # fmt: skip
    return x_seq.new_empty(_output_shape(x_seq, weight, stride, padding, dilation))


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def _check_channel_vector(name, value, x_seq, out_channels):
    check_tensor_argument(name, value, x_seq, "None or a torch.Tensor")
    if tuple(value.shape) != (out_channels,):
        raise ValueError(f"{name} must have shape [out_channels] = ({out_channels},), got {tuple(value.shape)}")


def _check_batch_norm(x_seq, out_channels, bn_mean, bn_var, bn_weight, bn_bias, bn_eps):
    if (bn_mean is None) != (bn_var is None):
        raise ValueError("bn_mean and bn_var must be given together (the running statistics), or both be None")
    if bn_mean is None and (bn_weight is not None or bn_bias is not None):
        raise ValueError("bn_weight/bn_bias need bn_mean and bn_var: without them there is no BatchNorm")
    for name, value in (("bn_mean", bn_mean), ("bn_var", bn_var), ("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if value is not None:
            _check_channel_vector(name, value, x_seq, out_channels)
    check_finite_float("bn_eps", bn_eps)
    if bn_eps < 0:
        raise ValueError(f"bn_eps must be >= 0, got {bn_eps}")


def _check_convolution(x_seq, weight, bias, stride, padding, dilation, groups):
    """The normalised ``(stride, padding, dilation)`` pairs, after refusing what F.conv2d would."""
    if not isinstance(x_seq, Tensor):
        raise TypeError(f"x_seq must be a torch.Tensor, got {type(x_seq).__name__}")
    if x_seq.dtype not in FLOATING_DTYPES:
        raise TypeError(f"x_seq must be float16, bfloat16, float32 or float64, got {x_seq.dtype}")
    if x_seq.dim() != 5:
        raise ValueError(f"x_seq must be time-first [T, N, C, H, W], got shape {tuple(x_seq.shape)}")
    check_tensor_argument("weight", weight, x_seq)
    stride, padding, dilation = check_convolution_geometry("x_seq", x_seq, weight, stride, padding, dilation, groups)
    if bias is not None:
        _check_channel_vector("bias", bias, x_seq, weight.shape[0])
    return stride, padding, dilation


def _check_neuron(neuron, tau, decay_input, v_threshold, v_reset):
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {list(NEURONS)}, got {neuron!r}")
    if neuron == "lif":
        check_finite_float("tau", tau)
        if tau <= 1:
            raise ValueError(f"tau must be > 1 (the membrane decays by 1/tau per step), got {tau}")
    check_bool("decay_input", decay_input)
    check_finite_float("v_threshold", v_threshold)
    check_finite_float("v_reset", v_reset, allow_none=True)


def _check_inference_only(named_tensors):
    if not torch.is_grad_enabled():
        return
    for name, value in named_tensors:
        if value is not None and value.requires_grad:
            raise RuntimeError(
                f"conv_bn_lif_inference is inference-only (no backward), but {name} requires grad: call it "
                "under torch.no_grad() or torch.inference_mode(), or pass detached tensors"
            )


def conv_bn_lif_inference(
    x_seq: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1,
    bn_mean: Optional[Tensor] = None, bn_var: Optional[Tensor] = None, bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None, bn_eps: float = 1e-5, neuron: str = "lif", tau: float = 2.0,
    decay_input: bool = True, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0,
    v_init: Optional[Tensor] = None, backend: Optional[str] = None,
) -> Tensor:  # fmt: skip
    """Spikes of ``lif_multistep(batch_norm(conv2d(x_seq)))`` (IF with ``neuron="if"``), in one kernel
    whose membrane never leaves the chip. Inference only.

    x_seq: ``[T, N, C, H, W]`` float32/float16/bfloat16 (float64 on the torch backend); spikes or any
        real values. weight ``[OC, C/groups, kH, kW]``, bias ``[OC]`` or None: any floating dtype.
    stride, padding, dilation: an int or a pair of ints; groups as F.conv2d.
    bn_mean, bn_var, bn_weight, bn_bias ``[OC]``, bn_eps: an eval-mode BatchNorm2d after the convolution
        (its running statistics); all None: no BatchNorm. Folded into the convolution in float32, the
        weight then rounded to x_seq's dtype (``fold_batch_norm``).
    neuron: "lif" or "if" (no leak; tau ignored). tau, decay_input, v_threshold, v_reset (None: soft
        reset): SpikingJelly's LIF semantics, as ``lif_multistep``.
    v_init: ``[N, OC, OH, OW]`` starting membrane, or None for v_reset (0 for soft reset).
    backend: None for the best available, or "cuda", "triton", "torch"; an unusable choice raises.

    Returns the spikes ``[T, N, OC, OH, OW]`` (0/1, contiguous) in x_seq's dtype. The result equals the
    unfused sequence except where folding's different rounding moves a membrane across the threshold
    (docs/conv_bn_lif.md).
    """
    stride, padding, dilation = _check_convolution(x_seq, weight, bias, stride, padding, dilation, groups)
    out_channels = weight.shape[0]
    _check_batch_norm(x_seq, out_channels, bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
    _check_neuron(neuron, tau, decay_input, v_threshold, v_reset)
    if v_init is not None:
        check_tensor_argument("v_init", v_init, x_seq, "None or a torch.Tensor")
        out_shape = _output_shape(x_seq, weight, stride, padding, dilation)[1:]
        if tuple(v_init.shape) != out_shape:
            raise ValueError(f"v_init must have shape [N, OC, OH, OW] = {out_shape}, got {tuple(v_init.shape)}")
        v_init = v_init.to(x_seq.dtype)
    check_backend_name(backend)
    _check_inference_only(
        (("x_seq", x_seq), ("weight", weight), ("bias", bias), ("bn_mean", bn_mean), ("bn_var", bn_var),
         ("bn_weight", bn_weight), ("bn_bias", bn_bias), ("v_init", v_init))
    )  # fmt: skip
    return torch.ops.spikekern.conv_bn_lif_inference(
        x_seq, weight, bias, stride, padding, dilation, groups, bn_mean, bn_var, bn_weight, bn_bias, float(bn_eps),
        NEURONS[neuron], float(tau) if neuron == "lif" else 0.0, decay_input, float(v_threshold),
        0.0 if v_reset is None else float(v_reset), v_reset is None, v_init, backend or "",
    )  # fmt: skip
