"""Ahead-of-time compilation of spikekern's Triton kernels for a GPU target, without a GPU.

``compile_in_subprocess(cases)`` runs this file as a script (``python triton_aot.py < cases.json``) in a
process where TRITON_INTERPRET is unset: the interpreter replaces kernels with Python functions that
cannot be compiled. The script prints, as JSON, each case's PTX facts or its compile error. A case
(made by ``case``) names a kernel of a module of ``spikekern.ops.triton``, its constexprs, the element
dtype, the target arch and the types of the arguments that are not of the element dtype.
"""

import importlib
import json
import os
import subprocess
import sys

POINTER_TYPES = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
STATE_POINTER_TYPES = {1: "*fp32", 2: "*i16"}  # mode 3 hands the kernel x_seq itself


def case(module, kernel, constexprs, dtype="float32", arch=90, float32_pointers=(), pointer_types=None,
         scalar_type="fp32"):  # fmt: skip
    """pointer_types: Triton types of pointers that are neither the element dtype nor float32 (e.g. the
    spike ops' packed words, "*i32"); scalar_type: that of the scalar arguments other than T and M."""
    return {
        "module": module, "kernel": kernel, "constexprs": constexprs, "dtype": dtype, "arch": arch,
        "float32_pointers": list(float32_pointers), "pointer_types": dict(pointer_types or {}),
        "scalar_type": scalar_type,
    }  # fmt: skip


def case_id(cases):
    """pytest ids for the indices of ``cases``."""
    return lambda i: f"{cases[i]['kernel']}-{cases[i]['dtype']}-sm{cases[i]['arch']}-{i}"


def compile_test(cases, check=None):
    """A pytest test, parametrized over ``cases``, asserting each compiles (all are compiled in one
    subprocess, on first use) and then ``check(spec, result)``, if given."""
    import pytest

    results = []

    @pytest.mark.parametrize("index", range(len(cases)), ids=case_id(cases))
    def test(index):
        if not results:
            results.extend(compile_in_subprocess(cases))
        result = results[index]
        assert result["ok"], f"{cases[index]}: {result.get('error')}"
        if check is not None:
            check(cases[index], result)

    return test


def compile_case(spec):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = importlib.import_module(f"spikekern.ops.triton.{spec['module']}")
    kernel = getattr(kernels, spec["kernel"])
    constexprs = spec["constexprs"]
    element = POINTER_TYPES[spec["dtype"]]
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in spec["pointer_types"]:
            signature[name] = spec["pointer_types"][name]
        elif name == "state_ptr":
            signature[name] = STATE_POINTER_TYPES.get(constexprs["STATE_MODE"], element)
        elif name in spec["float32_pointers"]:
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = element
        else:
            signature[name] = "i64" if name in ("T", "M") else spec["scalar_type"]
    indexed = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=indexed)
    options = {"num_warps": getattr(kernels, "NUM_WARPS", 4), "enable_fp_fusion": False}
    ptx = triton.compile(source, target=GPUTarget("cuda", spec["arch"], 32), options=options).asm["ptx"]
    return {"fma": "fma" in ptx, "div_rn": "div.rn.f32" in ptx, "tensor_cores": "wgmma" in ptx or "mma.sync" in ptx}


def compile_in_subprocess(cases):
    """Each case's result (``ok`` and the PTX facts, or ``error``), compiled in a fresh process."""
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], input=json.dumps(cases), capture_output=True, text=True,
        env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


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
