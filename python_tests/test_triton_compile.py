"""The Triton kernels compile for real GPUs (sm_80, sm_90) without one: ahead-of-time to PTX and cubin.

The interpreter tier checks the arithmetic but not what only the GPU compiler sees (types, layouts,
bfloat16). This also checks the forward's PTX: IEEE division (``div.rn``) for ``/ tau`` and no fused
multiply-add, which the bit-exact match with the reference depends on.
"""

import pytest

pytest.importorskip("triton")

from triton_aot import case as aot_case  # noqa: E402
from triton_aot import compile_test  # noqa: E402

FORWARD = dict(NEURON_KIND=1, DECAY_INPUT=True, SOFT_RESET=False, HAS_V_INIT=True, STORE_V_SEQ=False, STATE_MODE=0,
               BLOCK=1024)  # fmt: skip
BACKWARD = dict(NEURON_KIND=1, DECAY_INPUT=True, SOFT_RESET=False, DETACH_RESET=False, SURROGATE=0,
                HAS_GRAD_V_LAST=True, HAS_GRAD_V_SEQ=False, HAS_V_INIT=True, STATE_MODE=3, T_PAD=4,
                BLOCK=1024)  # fmt: skip


def case(kernel, variant, dtype="float32", arch=90):
    defaults = FORWARD if kernel == "_forward_kernel" else BACKWARD
    return aot_case("neuron", kernel, {**defaults, **variant}, dtype, arch, ("decay_ptr", "plif_partials_ptr"))


CASES = (
    [case("_forward_kernel", v) for v in [{}, {"NEURON_KIND": 0}, {"NEURON_KIND": 2}, {"DECAY_INPUT": False},
                                          {"SOFT_RESET": True}, {"HAS_V_INIT": False}, {"STATE_MODE": 1},
                                          {"STATE_MODE": 2}, {"STORE_V_SEQ": True},
                                          {"STORE_V_SEQ": True, "STATE_MODE": 1}]]
    + [case("_forward_kernel", {}, dtype, arch) for dtype in ("float16", "bfloat16") for arch in (80, 90)]
    + [case("_forward_kernel", {"STORE_V_SEQ": True}, "bfloat16", 80)]
    + [case("_backward_kernel", v) for v in [{}, {"NEURON_KIND": 0}, {"NEURON_KIND": 2},
                                           {"NEURON_KIND": 2, "DECAY_INPUT": False}, {"SOFT_RESET": True},
                                           {"DETACH_RESET": True}, {"HAS_GRAD_V_LAST": False},
                                           {"HAS_V_INIT": False}, {"HAS_GRAD_V_SEQ": True},
                                           {"HAS_GRAD_V_SEQ": True, "HAS_GRAD_V_LAST": False},
                                           {"T_PAD": 16, "BLOCK": 256},
                                           {"STATE_MODE": 1, "T_PAD": 1}]]
    + [case("_backward_kernel", {"SURROGATE": s}) for s in range(1, 9)]
    + [case("_backward_kernel", {}, "bfloat16", 80), case("_backward_kernel", {}, "float16"),
       case("_backward_kernel", {"HAS_GRAD_V_SEQ": True}, "bfloat16", 80),
       case("_backward_kernel", {"STATE_MODE": 2, "T_PAD": 1, "NEURON_KIND": 2}, "bfloat16")]
)  # fmt: skip


def check_rounding(spec, result):
    # The forward, and the backward that re-runs it, must round like the reference, step by step.
    if spec["kernel"] == "_forward_kernel" or spec["constexprs"]["STATE_MODE"] == 3:
        assert not result["fma"], "no multiply-add may be contracted (bit-exactness with the reference)"
    if spec["kernel"] == "_forward_kernel" and spec["constexprs"]["NEURON_KIND"] == 1:
        assert result["div_rn"], "LIF's division by tau must be an IEEE division"


test_kernel_compiles_for_gpu = compile_test(CASES, check_rounding)
