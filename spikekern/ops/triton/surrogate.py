"""The surrogate gradients in Triton, shared by the neuron kernels."""

import triton
import triton.language as tl


@triton.jit
def surrogate_gradient(x, alpha, SURROGATE: tl.constexpr):
    """g(x), x = membrane - threshold; ids and formulas: spikekern/ops/surrogate.py."""
    if SURROGATE == 0:
        s = 1.0 / (1.0 + tl.exp(-alpha * x))
        g = (1.0 - s) * s * alpha
    elif SURROGATE == 1:
        z = x * (1.5707963267948966 * alpha)
        g = (alpha * 0.5) / (1.0 + z * z)
    elif SURROGATE == 2:
        g = tl.maximum(alpha - alpha * alpha * tl.abs(x), 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif SURROGATE == 3:
        g = (alpha * 0.5) * tl.exp(-alpha * tl.abs(x))
    elif SURROGATE == 4:
        z = 1.0 / alpha + tl.abs(x)
        g = 1.0 / (2.0 * alpha * z * z)
    elif SURROGATE == 5:
        z = 1.0 + tl.abs(x)
        g = alpha / (z * z)
    elif SURROGATE == 6:
        z = alpha * x
        g = (alpha * 0.5641895835477563) * tl.exp(-z * z)
    elif SURROGATE == 7:
        z = alpha * tl.abs(x) + 1.0
        g = 1.0 / (z * z)
    else:
        g = tl.maximum(1.0 - alpha * tl.abs(x), 0.0, propagate_nan=tl.PropagateNan.ALL)
    return g
