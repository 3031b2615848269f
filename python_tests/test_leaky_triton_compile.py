"""The leaky Triton kernels compile for real GPUs (sm_80, sm_90) without one: ahead-of-time to PTX.

Like test_triton_compile.py for the neuron kernels, this checks what only the GPU compiler sees
(types, layouts, bfloat16, scalar loads of beta and threshold) and that the PTX of the forward and of
the recomputing backward has no fused multiply-add, which the bit-exact match with the reference
depends on. The compilation runs in a subprocess without TRITON_INTERPRET (``triton_aot.py``).
"""

import pytest

pytest.importorskip("triton")

from triton_aot import case as aot_case  # noqa: E402
from triton_aot import compile_test  # noqa: E402

FORWARD = dict(RESET=0, PER_NEURON_BETA=True, HAS_MEM_INIT=True, OUTPUT_MEM_SEQ=False, STATE_MODE=0, BLOCK=1024)
BACKWARD = dict(RESET=0, SURROGATE=1, PER_NEURON_BETA=True, HAS_MEM_INIT=True, HAS_GRAD_MEM=True, OUTPUT_MEM_SEQ=False,
                STATE_MODE=3, BETA_GRAD=True, THRESHOLD_GRAD=True, T_PAD=4, BLOCK=1024)  # fmt: skip
FLOAT32_POINTERS = ("beta_ptr", "threshold_ptr", "decay_partials_ptr", "threshold_partials_ptr")


def case(kernel, variant, dtype="float32", arch=90):
    defaults = FORWARD if kernel == "_forward_kernel" else BACKWARD
    return aot_case("leaky", kernel, {**defaults, **variant}, dtype, arch, FLOAT32_POINTERS)


CASES = (
    [case("_forward_kernel", v) for v in [{}, {"RESET": 1}, {"RESET": 2}, {"PER_NEURON_BETA": False},
                                          {"HAS_MEM_INIT": False}, {"OUTPUT_MEM_SEQ": True},
                                          {"STATE_MODE": 1}, {"STATE_MODE": 2}]]
    + [case("_forward_kernel", {}, dtype, arch) for dtype in ("float16", "bfloat16") for arch in (80, 90)]
    + [case("_backward_kernel", v) for v in [{}, {"RESET": 1}, {"RESET": 2}, {"PER_NEURON_BETA": False},
                                           {"HAS_MEM_INIT": False}, {"HAS_GRAD_MEM": False},
                                           {"OUTPUT_MEM_SEQ": True}, {"BETA_GRAD": False, "THRESHOLD_GRAD": False},
                                           {"T_PAD": 16, "BLOCK": 256}, {"STATE_MODE": 1, "T_PAD": 1}]]
    + [case("_backward_kernel", {"SURROGATE": s}) for s in (0, 2, 3, 4, 5, 6, 7, 8)]
    + [case("_backward_kernel", {}, "bfloat16", 80), case("_backward_kernel", {}, "float16"),
       case("_backward_kernel", {"STATE_MODE": 2, "T_PAD": 1, "PER_NEURON_BETA": False}, "bfloat16")]
)  # fmt: skip


def check_rounding(spec, result):
    # The forward, and the backward that re-runs it, must round like the reference, step by step.
    if spec["kernel"] == "_forward_kernel" or spec["constexprs"]["STATE_MODE"] == 3:
        assert not result["fma"], "no multiply-add may be contracted (bit-exactness with the reference)"


test_kernel_compiles_for_gpu = compile_test(CASES, check_rounding)
