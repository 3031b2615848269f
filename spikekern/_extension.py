"""The compiled CUDA extension ``spikekern._C``: loaded once, on first use, remembering why it is absent."""

import functools
import importlib


@functools.lru_cache(maxsize=None)
def cuda_extension_error():
    """None when ``spikekern._C`` is loaded (its ``spikekern_cuda::`` ops are registered), else the reason."""
    try:
        importlib.import_module("spikekern._C")
    except ImportError as error:
        return (
            f"the CUDA extension spikekern._C is not built ({error}); build it on a machine with a CUDA "
            "build of torch and nvcc: SPIKEKERN_BUILD_CUDA=1 pip install --no-build-isolation -e ."
        )
    return None
