"""``spike_linear``: ``F.linear`` for binary spikes, keeping 1 bit per input element for backward.

Two custom ops, ``spikekern::spike_linear_forward`` (returns the output and the packed input) and
``spikekern::spike_linear_backward``; autograd saves only the packed bits (and the weight, which the
module holds anyway). The reference, unpack + ``F.linear``, is the specification; the CUDA C++ and
Triton backends each have a dense GEMM path and a sparse gather path, chosen from the spike density
(docs/spike_ops.md).
"""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import check_backend_name
from .spike_pack import (
    as_rows, backend_kernels, check_spikes, pack_rows, select_spike_backend, unpack_rows, validation_enabled,
    words_per_row,
)  # fmt: skip

PATHS = ("auto", "dense", "sparse")
# "auto" takes the sparse path up to this fraction of active inputs. Provisional: published sparse
# spike GEMMs win over cuBLAS near 1% and lose by a few percent (anchors.md); to be set from the
# H100 benchmark of this op.
SPARSE_MAX_DENSITY = 0.02
# Set bits per byte value: the spike count is read from the packed words (1/32 of the dense bytes).
_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


def spike_density(packed: Tensor, in_features: int) -> float:
    """Fraction of 1s among the ``rows x in_features`` spikes in ``packed`` (waits for the device)."""
    total = packed.shape[0] * in_features
    if total == 0:
        return 0.0
    count = _POPCOUNT.to(packed.device)[packed.view(torch.uint8).long()].sum()
    return count.item() / total


def choose_path(path: str, packed: Tensor, in_features: int, sparse_max_density: float):
    """(the path that runs, why) for packed rows of ``in_features`` spikes: ``path`` itself unless it is
    "auto", which compares the spike density counted from the words with ``sparse_max_density`` (one host
    synchronisation), except while a CUDA graph is captured, where nothing may wait: then dense."""
    if path != "auto":
        return path, f"path={path!r} requested"
    if packed.is_cuda and torch.cuda.is_current_stream_capturing():
        return "dense", "auto: dense while a CUDA graph is captured (counting spikes would synchronise)"
    density = spike_density(packed, in_features)
    chosen, relation = ("sparse", "<=") if density <= sparse_max_density else ("dense", ">")
    return chosen, f"auto: spike density {density:.4f} {relation} SPARSE_MAX_DENSITY {sparse_max_density}"


def resolve_path(path: str, packed: Tensor, in_features: int):
    return choose_path(path, packed, in_features, SPARSE_MAX_DENSITY)


# ----------------------------------------------------------------------------------------------
# Reference (the specification) and the sparse path's summation order
# ----------------------------------------------------------------------------------------------


def reference_forward(packed, in_features, weight, bias):
    return F.linear(unpack_rows(packed, in_features, weight.dtype, "torch"), weight, bias)


def reference_backward(grad_out, packed, weight, needs_input_grad, needs_weight_grad, needs_bias_grad):
    spikes = unpack_rows(packed, weight.shape[1], grad_out.dtype, "torch") if needs_weight_grad else None
    return _backward_results(
        grad_out, weight, needs_input_grad, needs_bias_grad, grad_out.t().mm(spikes) if needs_weight_grad else None
    )


def ordered_masked_sum(mask: Tensor, values: Tensor) -> Tensor:
    """``mask [A, B] (0/1) @ values [B, C]`` summed in fp32 one ``b`` at a time, ascending, from +0.

    The order of the sparse Triton path: forward ``y = ordered_masked_sum(s, weight.T) + bias``
    (ascending input index), grad_weight ``= ordered_masked_sum(s.T, grad_out).T`` (ascending row).
    With finite values each step adds either the value or a zero, so the result is exact for this order.
    """
    values = values.float()
    acc = torch.zeros(mask.shape[0], values.shape[1], dtype=torch.float32, device=values.device)
    for b in range(mask.shape[1]):
        acc = acc + mask[:, b : b + 1].float() * values[b]
    return acc


def _backward_results(grad_out, weight, needs_input_grad, needs_bias_grad, grad_weight):
    """The three gradients, with an empty tensor for each one not asked for (a custom op's outputs may
    not alias one another)."""
    grad_input = grad_out.mm(weight) if needs_input_grad else grad_out.new_empty(0)
    grad_bias = grad_out.sum(0) if needs_bias_grad else grad_out.new_empty(0)
    return grad_input, grad_out.new_empty(0) if grad_weight is None else grad_weight, grad_bias


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


# The spikekern_cuda ops (csrc/spike/spike_bindings.cpp) behind each Triton host function; they take
# the same positional arguments.
CUDA_KERNEL_OPS = {
    "dense_forward": "spike_linear_dense_forward",
    "sparse_forward": "spike_linear_sparse_forward",
    "dense_grad_weight": "spike_linear_dense_grad_weight",
    "sparse_grad_weight": "spike_linear_sparse_grad_weight",
}


def _kernels(backend):
    return backend_kernels(backend, "spike_linear", CUDA_KERNEL_OPS)


def _run_forward(backend, path, packed, in_features, weight, bias):
    if backend == "torch":
        return reference_forward(packed, in_features, weight, bias)
    kernels = _kernels(backend)
    chosen, _ = resolve_path(path, packed, in_features)
    run = kernels.sparse_forward if chosen == "sparse" else kernels.dense_forward
    return run(packed, in_features, weight, None if bias is None else bias.contiguous())


def _run_backward(backend, path, grad_out, packed, weight, needs_input_grad, needs_weight_grad, needs_bias_grad):
    if backend == "torch":
        return reference_backward(grad_out, packed, weight, needs_input_grad, needs_weight_grad, needs_bias_grad)
    grad_weight = None
    if needs_weight_grad:
        kernels = _kernels(backend)
        chosen, _ = resolve_path(path, packed, weight.shape[1])
        run = kernels.sparse_grad_weight if chosen == "sparse" else kernels.dense_grad_weight
        grad_weight = run(grad_out, packed, weight.shape[1])
    return _backward_results(grad_out, weight, needs_input_grad, needs_bias_grad, grad_weight)


def _use_reference(*tensors):
    """Empty problems skip the kernels (a zero-size launch grid is an error there)."""
    return any(t.numel() == 0 for t in tensors)


# ----------------------------------------------------------------------------------------------
# Custom ops, on [M, K] spikes
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("spikekern::spike_linear_forward", mutates_args=())
def spike_linear_forward(
    s: Tensor, weight: Tensor, bias: Optional[Tensor], validate: bool, path: str, backend: str
) -> tuple[Tensor, Tensor]:
    """``(F.linear(s, weight, bias), packed s)``; the packed words are what backward reads."""
    backend = select_spike_backend(backend, s)
    packed = pack_rows(s, validate, backend)
    if _use_reference(s, weight):
        backend = "torch"
    return _run_forward(backend, path, packed, s.shape[1], weight.contiguous(), bias), packed


@spike_linear_forward.register_fake
def _(s, weight, bias, validate, path, backend):
    rows, in_features = s.shape
    packed = s.new_empty((rows, words_per_row(in_features)), dtype=torch.int32)
    return s.new_empty((rows, weight.shape[0])), packed


@torch.library.custom_op("spikekern::spike_linear_backward", mutates_args=())
def spike_linear_backward(
    grad_out: Tensor, packed: Tensor, weight: Tensor, needs_input_grad: bool, needs_weight_grad: bool,
    needs_bias_grad: bool, path: str, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients for ``s`` ``[M, K]``, ``weight`` ``[N, K]`` and ``bias`` ``[N]``; empty when not needed."""
    backend = select_spike_backend(backend, grad_out)
    if _use_reference(grad_out, weight):
        backend = "torch"
    grad_out = grad_out.contiguous()
    return _run_backward(
        backend, path, grad_out, packed, weight.contiguous(), needs_input_grad, needs_weight_grad, needs_bias_grad
    )


@spike_linear_backward.register_fake
def _(grad_out, packed, weight, needs_input_grad, needs_weight_grad, needs_bias_grad, path, backend):
    rows, out_features = grad_out.shape
    in_features = weight.shape[1]
    return (
        grad_out.new_empty((rows, in_features) if needs_input_grad else (0,)),
        grad_out.new_empty((out_features, in_features) if needs_weight_grad else (0,)),
        grad_out.new_empty((out_features,) if needs_bias_grad else (0,)),
    )


def _setup_context(ctx, inputs, output):
    _, weight, bias, _, path, backend = inputs
    _, packed = output
    ctx.mark_non_differentiable(packed)
    ctx.save_for_backward(packed, weight)
    ctx.path = path
    ctx.backend = backend
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out, _grad_packed):
    packed, weight = ctx.saved_tensors
    needs_input_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
    grad_input, grad_weight, grad_bias = torch.ops.spikekern.spike_linear_backward(
        grad_out, packed, weight, needs_input_grad, needs_weight_grad, needs_bias_grad and ctx.has_bias, ctx.path,
        ctx.backend,
    )  # fmt: skip
    return (
        grad_input if needs_input_grad else None,
        grad_weight if needs_weight_grad else None,
        grad_bias if needs_bias_grad and ctx.has_bias else None,
        None, None, None,
    )  # fmt: skip


spike_linear_forward.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _check_arguments(s, weight, bias, path, backend):
    check_spikes("s", s)
    if s.dim() not in (2, 3):
        raise ValueError(f"s must be [N, in_features] or time-first [T, N, in_features], got shape {tuple(s.shape)}")
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype != s.dtype:
        raise TypeError(f"weight must have s's dtype {s.dtype}, got {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] != s.shape[-1]:
        raise ValueError(
            f"weight must have shape [out_features, in_features={s.shape[-1]}] for s of shape {tuple(s.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.device != s.device:
        raise ValueError(f"weight is on {weight.device} but s is on {s.device}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be None or a torch.Tensor, got {type(bias).__name__}")
        if bias.dtype != s.dtype:
            raise TypeError(f"bias must have s's dtype {s.dtype}, got {bias.dtype}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape [out_features] = ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.device != s.device:
            raise ValueError(f"bias is on {bias.device} but s is on {s.device}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
    check_backend_name(backend)


def spike_linear(
    s: Tensor, weight: Tensor, bias: Optional[Tensor] = None, path: str = "auto", backend: Optional[str] = None
) -> Tensor:
    """``F.linear(s, weight, bias)`` for spikes ``s`` (0/1) of shape ``[N, in]`` or ``[T, N, in]``.

    s, weight, bias: one dtype of float32/float16/bfloat16; weight ``[out, in]``, bias ``[out]``.
    path: "dense" (tiled GEMM), "sparse" (gathers the weight rows of active inputs) or "auto" (sparse
        up to SPARSE_MAX_DENSITY; costs one host synchronisation per forward and backward to count
        spikes; dense while a CUDA graph is captured). The CUDA and Triton backends have paths; ``spike_linear_plan`` reports the choice.
    backend: None for the best available, or "cuda", "triton", "torch"; an unusable choice raises.
    Non-binary ``s`` raises ValueError while validation is on (``spike_pack.set_validation``).
    """
    _check_arguments(s, weight, bias, path, backend)
    rows = as_rows(s)
    y, _ = torch.ops.spikekern.spike_linear_forward(
        rows, weight, bias, validation_enabled(s.device), path, backend or ""
    )
    return y.view(*s.shape[:-1], weight.shape[0])


class SpikeLinearPlan(NamedTuple):
    backend: str
    path: str  # "dense", "sparse", or "reference" for the torch backend
    reason: str


def spike_linear_plan(
    s: Tensor, weight: Tensor, bias: Optional[Tensor] = None, path: str = "auto", backend: Optional[str] = None
) -> SpikeLinearPlan:
    """Which backend and path ``spike_linear`` would run for these arguments, and why."""
    _check_arguments(s, weight, bias, path, backend)
    chosen_backend = select_spike_backend(backend or "", s)
    if chosen_backend == "torch":
        return SpikeLinearPlan("torch", "reference", "the torch backend runs the reference (unpack + F.linear)")
    rows = as_rows(s)
    packed = pack_rows(rows, validation_enabled(s.device), chosen_backend)
    return SpikeLinearPlan(chosen_backend, *resolve_path(path, packed, rows.shape[1]))
