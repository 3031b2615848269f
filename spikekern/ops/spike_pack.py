"""Bit-packed spikes: ``pack_spikes``/``unpack_spikes``, their reference, dispatch and validation.

Format (docs/spike_ops.md): the last dimension ``K`` becomes ``ceil(K / 32)`` int32 words; spike ``k``
is bit ``k % 32`` of word ``k // 32``; the padding bits of the last word are zero. int32 words let a
kernel test 32 inputs with one load and one compare, which the sparse kernels use to skip silent inputs.

The spike ops use the shared backend rules (``_dispatch``), preferring Triton on CUDA tensors; ops
without CUDA C++ kernels (spike_conv2d so far) pass the backends they have. The CUDA kernels are ``spikekern_cuda::`` ops that take the same positional arguments
as the Triton host functions (python_tests check the schemas against them), so a backend is a
namespace of kernels.
"""

import importlib
import math
from types import SimpleNamespace
from typing import Optional

import torch
from torch import Tensor

from ._dispatch import KERNEL_BACKENDS, check_backend_name, select_backend

BITS_PER_WORD = 32
SPIKE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Bit weights of one word, as int64 so that bit 31 (2**31) does not overflow before the wrap to int32.
_BIT_VALUES = [1 << bit for bit in range(BITS_PER_WORD)]

_validation: Optional[bool] = None


def set_validation(enabled: Optional[bool]) -> None:
    """Refuse spikes other than 0/1 (True), trust them (False), or the default (None): on for CPU
    tensors, off for CUDA tensors, where the check costs a host synchronisation per call."""
    global _validation
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_validation takes True, False or None, got {type(enabled).__name__}")
    _validation = enabled


def validation_enabled(device: torch.device) -> bool:
    return device.type == "cpu" if _validation is None else _validation


# ----------------------------------------------------------------------------------------------
# Backends of the spike ops
# ----------------------------------------------------------------------------------------------


# Triton first: its dense spike kernels use tensor cores in every dtype, the CUDA ones only in
# float16/bfloat16, and neither has been measured against the other.
SPIKE_BACKEND_PREFERENCE = ("triton", "cuda")


def select_spike_backend(requested: str, x: Tensor, kernels=KERNEL_BACKENDS) -> str:
    """The backend of a spike op (kernels: the backends it implements) for input ``x``."""
    return select_backend(requested, x, kernels, SPIKE_BACKEND_PREFERENCE)


def backend_kernels(backend: str, triton_module: str, cuda_ops: dict):
    """An op's kernels on "cuda" or "triton" under the Triton host functions' names: the module
    ``spikekern.ops.triton.<triton_module>`` (imported late: TRITON_INTERPRET is read at import), or the
    ``spikekern_cuda`` ops that ``cuda_ops`` names for them, which take the same positional arguments."""
    if backend == "cuda":
        ops = torch.ops.spikekern_cuda
        return SimpleNamespace(**{name: getattr(ops, op_name) for name, op_name in cuda_ops.items()})
    return importlib.import_module(f"{__package__}.triton.{triton_module}")


# pack_spikes(spikes, validate) and unpack_spikes(packed, k_total, dtype) on contiguous [R, *] tensors.
CUDA_KERNEL_OPS = {"pack_spikes": "pack_spikes", "unpack_spikes": "unpack_spikes"}


def _kernels(backend: str):
    return backend_kernels(backend, "spike_pack", CUDA_KERNEL_OPS)


def words_per_row(k_total: int) -> int:
    return (k_total + BITS_PER_WORD - 1) // BITS_PER_WORD


def as_rows(t: Tensor) -> Tensor:
    """``[*, K]`` -> ``[R, K]``; spelled out because ``reshape(-1, 0)`` is ambiguous for empty tensors."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def raise_if_not_binary(invalid: bool, name: str) -> None:
    if invalid:
        raise ValueError(
            f"{name} must hold only spikes (0 or 1); found other values. Pass binary spikes, or turn the check "
            "off with spikekern.ops.spike_pack.set_validation(False) if you know the input is binary"
        )


# ----------------------------------------------------------------------------------------------
# Reference (the specification) on [R, K] rows
# ----------------------------------------------------------------------------------------------


def reference_pack(spikes: Tensor) -> Tensor:
    rows, k_total = spikes.shape
    padded = torch.zeros(rows, words_per_row(k_total) * BITS_PER_WORD, dtype=torch.int64, device=spikes.device)
    padded[:, :k_total] = spikes != 0
    bit_values = torch.tensor(_BIT_VALUES, dtype=torch.int64, device=spikes.device)
    words = (padded.view(rows, words_per_row(k_total), BITS_PER_WORD) * bit_values).sum(-1)
    # Words >= 2**31 have bit 31 set: the same 32 bits as the negative int32 word - 2**32.
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def reference_unpack(packed: Tensor, k_total: int, dtype: torch.dtype) -> Tensor:
    rows, words = packed.shape
    shifts = torch.arange(BITS_PER_WORD, dtype=torch.int32, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(rows, words * BITS_PER_WORD)[:, :k_total].to(dtype)


def pack_rows(spikes: Tensor, validate: bool, backend: str) -> Tensor:
    """``[R, K]`` spikes -> ``[R, ceil(K/32)]`` words on ``backend``, refusing non-binary values if asked."""
    if spikes.numel() == 0 or backend == "torch":
        if validate:
            raise_if_not_binary(bool(((spikes != 0) & (spikes != 1)).any()), "s")
        return reference_pack(spikes)
    packed, invalid = _kernels(backend).pack_spikes(spikes.contiguous(), validate)
    if validate:
        raise_if_not_binary(bool(invalid.item()), "s")
    return packed


def unpack_rows(packed: Tensor, k_total: int, dtype: torch.dtype, backend: str) -> Tensor:
    if packed.numel() == 0 or backend == "torch":
        return reference_unpack(packed, k_total, dtype)
    return _kernels(backend).unpack_spikes(packed.contiguous(), k_total, dtype)


# ----------------------------------------------------------------------------------------------
# Custom ops (not differentiable: the packed words are integers)
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("spikekern::pack_spikes", mutates_args=())
def _pack_spikes_op(s: Tensor, validate: bool, backend: str) -> Tensor:
    packed = pack_rows(as_rows(s), validate, select_spike_backend(backend, s))
    return packed.view(*s.shape[:-1], words_per_row(s.shape[-1]))


@_pack_spikes_op.register_fake
def _(s, validate, backend):
    return s.new_empty((*s.shape[:-1], words_per_row(s.shape[-1])), dtype=torch.int32)


@torch.library.custom_op("spikekern::unpack_spikes", mutates_args=())
def _unpack_spikes_op(packed: Tensor, last_dim: int, dtype: torch.dtype, backend: str) -> Tensor:
    # The backend rule looks at the output: its dtype decides (no bfloat16 in the Triton interpreter).
    backend = select_spike_backend(backend, packed.new_empty(0, dtype=dtype))
    spikes = unpack_rows(as_rows(packed), last_dim, dtype, backend)
    return spikes.view(*packed.shape[:-1], last_dim)


@_unpack_spikes_op.register_fake
def _(packed, last_dim, dtype, backend):
    return packed.new_empty((*packed.shape[:-1], last_dim), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def check_spikes(name: str, s) -> None:
    if not isinstance(s, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(s).__name__}")
    if s.dtype not in SPIKE_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 spikes, got {s.dtype}")


def pack_spikes(s: Tensor, backend: Optional[str] = None) -> Tensor:
    """1 bit per spike: ``s`` of shape ``[*, K]`` (0/1 in float32/float16/bfloat16, any strides) becomes
    int32 words of shape ``[*, ceil(K / 32)]`` (format in the module docstring).

    Non-binary values raise ValueError while validation is on (``set_validation``).
    backend: None for the best available, or "cuda", "triton", "torch"; an unusable choice raises.
    """
    check_spikes("s", s)
    if s.dim() == 0:
        raise ValueError("s must have at least one dimension (the one packed into bits), got a 0-d tensor")
    check_backend_name(backend)
    return torch.ops.spikekern.pack_spikes(s, validation_enabled(s.device), backend or "")


def unpack_spikes(packed: Tensor, shape, dtype: torch.dtype = torch.float32, backend: Optional[str] = None) -> Tensor:
    """The inverse of ``pack_spikes``: ``packed`` words -> 0/1 spikes of ``shape`` and ``dtype``."""
    if not isinstance(packed, Tensor) or packed.dtype != torch.int32:
        what = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise TypeError(f"packed must be the int32 tensor pack_spikes returns, got {what}")
    shape = tuple(shape)
    if not shape:
        raise ValueError("shape must have at least one dimension, got ()")
    if dtype not in SPIKE_DTYPES:
        raise TypeError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    expected = (*shape[:-1], words_per_row(shape[-1]))
    if tuple(packed.shape) != expected:
        raise ValueError(f"packed must have shape {expected} to unpack into {shape}, got {tuple(packed.shape)}")
    check_backend_name(backend)
    return torch.ops.spikekern.unpack_spikes(packed, shape[-1], dtype, backend or "")
