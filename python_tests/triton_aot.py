"""Ahead-of-time compilation of spikekern's Triton kernels for a GPU target, without a GPU.

Run as a script (``python triton_aot.py < cases.json``) in a process where TRITON_INTERPRET is unset:
the interpreter replaces kernels with Python functions that cannot be compiled. Prints, as JSON, each
case's PTX facts or its compile error.
"""

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from spikekern.ops.triton import neuron as kernels

POINTER_TYPES = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
STATE_POINTER_TYPES = {1: "*fp32", 2: "*i16"}  # mode 3 hands the kernel x_seq itself


def compile_case(case):
    kernel = getattr(kernels, case["kernel"])
    constexprs = case["constexprs"]
    element = POINTER_TYPES[case["dtype"]]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "state_ptr":
            signature[name] = STATE_POINTER_TYPES.get(constexprs["STATE_MODE"], element)
        elif name in ("decay_ptr", "plif_partials_ptr"):
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = element
        elif name in ("T", "M"):
            signature[name] = "i64"
        else:
            signature[name] = "fp32"
    indexed = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=indexed)
    options = {"num_warps": kernels.NUM_WARPS, "enable_fp_fusion": False}
    ptx = triton.compile(source, target=GPUTarget("cuda", case["arch"], 32), options=options).asm["ptx"]
    return {"fma": "fma" in ptx, "div_rn": "div.rn.f32" in ptx}


def main():
    results = []
    for case in json.load(sys.stdin):
        try:
            results.append({"ok": True, **compile_case(case)})
        except Exception as error:  # reported back to the test, which fails with it
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
