"""Build script for spikekern.

The CUDA extension ``spikekern._C`` (``csrc/``) is built when torch is importable, is a CUDA build and
nvcc is found; ``SPIKEKERN_BUILD_CUDA=1`` forces the build (and fails loudly if it cannot happen),
``SPIKEKERN_BUILD_CUDA=0`` skips it. Without the extension the package still works: Triton on GPUs,
the PyTorch reference everywhere. Because pip builds in an isolated environment without torch, build
the extension with ``pip install --no-build-isolation .``.
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_cuda_requested():
    flag = os.environ.get("SPIKEKERN_BUILD_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise ValueError(f"SPIKEKERN_BUILD_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False, None
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        reason = "torch is not importable in the build environment (use --no-build-isolation)"
    else:
        if torch.version.cuda is None:
            reason = f"torch {torch.__version__} is not a CUDA build"
        elif CUDA_HOME is None:
            reason = "no CUDA toolkit (nvcc) found; set CUDA_HOME"
        else:
            return True, None
    if flag == "1":
        raise RuntimeError(f"SPIKEKERN_BUILD_CUDA=1 but the CUDA extension cannot be built: {reason}")
    return False, reason


def _parallel_jobs():
    """ninja's job count, bounded by memory: one nvcc process can take ~2 GiB."""
    if "MAX_JOBS" in os.environ:
        return os.environ["MAX_JOBS"]
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 8
    return str(max(1, min(os.cpu_count() or 1, int(mem_gib // 2))))


def _extensions():
    build, reason = _build_cuda_requested()
    if not build:
        if reason:
            print(f"spikekern: not building the CUDA extension: {reason}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    os.environ["MAX_JOBS"] = _parallel_jobs()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources = sorted(
        os.path.relpath(p, ROOT)
        for pattern in ("csrc/**/*.cu", "csrc/**/*.cpp")
        for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )
    extension = CUDAExtension(
        name="spikekern._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            # No --use_fast_math: the kernels rely on IEEE division to match the reference bit for bit.
            "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
        },
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="spikekern",
    version="0.1.0",
    description="Fused Triton and CUDA kernels for spiking neural networks and spiking diffusion models",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["spikekern", "spikekern.*"]),
    # The embedded default checkpoints and the digit classifier the evaluation uses.
    package_data={"spikekern": ["assets/*.safetensors", "assets/*.json"]},
    install_requires=["torch>=2.11", "numpy", "tqdm", "safetensors", "pillow", "scikit-learn"],
    extras_require={
        "triton": ["triton>=3.6"],
        "demo": ["matplotlib"],
        "fid": ["torch-fidelity"],
        "test": ["pytest>=8", "pytest-xdist>=3", "pytest-benchmark>=4", "triton>=3.6", "matplotlib", "scipy"],
        "bench": ["pytest-benchmark>=4", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
