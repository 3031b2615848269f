"""The leaky Triton kernels compile for real GPUs (sm_80, sm_90) without one: ahead-of-time to PTX.

Like test_triton_compile.py for the neuron kernels, this checks what only the GPU compiler sees
(types, layouts, bfloat16, scalar loads of beta and threshold) and that the PTX of the forward and of
the recomputing backward has no fused multiply-add, which the bit-exact match with the reference
depends on. The compilation runs in a subprocess without TRITON_INTERPRET: this file is also that
subprocess's script.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

FORWARD = dict(RESET=0, PER_NEURON_BETA=True, HAS_MEM_INIT=True, OUTPUT_MEM_SEQ=False, STATE_MODE=0, BLOCK=1024)
BACKWARD = dict(RESET=0, SURROGATE=1, PER_NEURON_BETA=True, HAS_MEM_INIT=True, HAS_GRAD_MEM=True, OUTPUT_MEM_SEQ=False,
                STATE_MODE=3, BETA_GRAD=True, THRESHOLD_GRAD=True, T_PAD=4, BLOCK=1024)  # fmt: skip
FLOAT32_POINTERS = ("beta_ptr", "threshold_ptr", "decay_partials_ptr", "threshold_partials_ptr")


def case(kernel, variant, dtype="float32", arch=90):
    defaults = FORWARD if kernel == "_forward_kernel" else BACKWARD
    return {"kernel": kernel, "constexprs": {**defaults, **variant}, "dtype": dtype, "arch": arch}


CASES = (
    [case("_forward_kernel", v) for v in [{}, {"RESET": 1}, {"RESET": 2}, {"PER_NEURON_BETA": False},
                                          {"HAS_MEM_INIT": False}, {"OUTPUT_MEM_SEQ": True},
                                          {"STATE_MODE": 1}, {"STATE_MODE": 2}]]
    + [case("_forward_kernel", {}, dtype, arch) for dtype in ("float16", "bfloat16") for arch in (80, 90)]
    + [case("_backward_kernel", v) for v in [{}, {"RESET": 1}, {"RESET": 2}, {"PER_NEURON_BETA": False},
                                           {"HAS_MEM_INIT": False}, {"HAS_GRAD_MEM": False},
                                           {"OUTPUT_MEM_SEQ": True}, {"BETA_GRAD": False, "THRESHOLD_GRAD": False},
                                           {"T_PAD": 16, "BLOCK": 256}, {"STATE_MODE": 1, "T_PAD": 1}]]
    + [case("_backward_kernel", {"SURROGATE": s}) for s in (0, 2, 3, 4, 5, 6, 7)]
    + [case("_backward_kernel", {}, "bfloat16", 80), case("_backward_kernel", {}, "float16"),
       case("_backward_kernel", {"STATE_MODE": 2, "T_PAD": 1, "PER_NEURON_BETA": False}, "bfloat16")]
)  # fmt: skip


def compile_case(spec):
    """PTX facts of one case (run without TRITON_INTERPRET)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton_aot import POINTER_TYPES, STATE_POINTER_TYPES

    from spikekern.ops.triton import leaky

    kernel = getattr(leaky, spec["kernel"])
    constexprs = spec["constexprs"]
    element = POINTER_TYPES[spec["dtype"]]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "state_ptr":
            signature[name] = STATE_POINTER_TYPES.get(constexprs["STATE_MODE"], element)
        elif name in FLOAT32_POINTERS:
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = element
        else:
            signature[name] = "i64" if name in ("T", "M") else "fp32"
    indexed = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=indexed)
    options = {"num_warps": leaky.NUM_WARPS, "enable_fp_fusion": False}
    ptx = triton.compile(source, target=GPUTarget("cuda", spec["arch"], 32), options=options).asm["ptx"]
    return {"fma": "fma" in ptx}


@pytest.fixture(scope="module")
def compiled():
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [package_root, os.path.dirname(os.path.abspath(__file__)), environment.get("PYTHONPATH")]
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], input=json.dumps(CASES), capture_output=True, text=True,
        env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def case_id(index):
    spec = CASES[index]
    return f"{spec['kernel']}-{spec['dtype']}-sm{spec['arch']}-{index}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=case_id)
def test_kernel_compiles_for_gpu(compiled, index):
    result, spec = compiled[index], CASES[index]
    assert result["ok"], f"{spec}: {result.get('error')}"
    if spec["kernel"] == "_forward_kernel" or spec["constexprs"]["STATE_MODE"] == 3:
        # The forward, and the backward that re-runs it, must round like the reference, step by step.
        assert not result["fma"], "no multiply-add may be contracted (bit-exactness with the reference)"


def main():
    results = []
    for spec in json.load(sys.stdin):
        try:
            results.append({"ok": True, **compile_case(spec)})
        except Exception as error:  # reported back to the test, which fails with it
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
