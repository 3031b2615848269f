"""Surrogate-gradient spike functions as modules, and the bridge from SpikingJelly's.

``spikekern.surrogate.ATan(alpha=2.0)`` is a Heaviside step whose backward is the surrogate; the
neuron modules read its name and alpha to run the fused kernels with the same surrogate. SpikingJelly's
``surrogate.Sigmoid(alpha=4.0)`` and friends are accepted wherever one of these is.
"""

import torch

from .ops.surrogate import SURROGATES, resolve_surrogate, surrogate_gradient


class HeavisideWithSurrogate(torch.autograd.Function):
    """``spike = (x >= 0)`` forward, the surrogate ``g(x)`` backward (ids: ``spikekern.ops.SURROGATES``)."""

    @staticmethod
    def forward(ctx, x, surrogate_id, alpha):
        ctx.save_for_backward(x)
        ctx.surrogate = (surrogate_id, alpha)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_gradient(x, *ctx.surrogate), None, None


class SurrogateFunction(torch.nn.Module):
    """``spike = (x >= 0)`` forward, ``g(x)`` backward; subclasses name the surrogate."""

    name = ""

    def __init__(self, alpha=None):
        super().__init__()
        self.surrogate_id, self.alpha = resolve_surrogate(self.name, alpha)

    def forward(self, x):
        return HeavisideWithSurrogate.apply(x, self.surrogate_id, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


def _surrogate_class(class_name, name):
    doc = f"The ``{name}`` surrogate (default alpha {SURROGATES[name].default_alpha}); formula in docs/neuron_ops.md."
    return type(class_name, (SurrogateFunction,), {"name": name, "__doc__": doc, "__module__": __name__})


Sigmoid = _surrogate_class("Sigmoid", "sigmoid")
ATan = _surrogate_class("ATan", "atan")
PiecewiseQuadratic = _surrogate_class("PiecewiseQuadratic", "piecewise_quadratic")
PiecewiseExp = _surrogate_class("PiecewiseExp", "piecewise_exp")
SoftSign = _surrogate_class("SoftSign", "soft_sign")
SuperSpike = _surrogate_class("SuperSpike", "super_spike")
Erf = _surrogate_class("Erf", "erf")
FastSigmoid = _surrogate_class("FastSigmoid", "fast_sigmoid")
Triangle = _surrogate_class("Triangle", "triangle")

# SpikingJelly's surrogate classes whose formulas the kernels implement (spikingjelly/_ops/surrogate.py).
_SPIKINGJELLY_NAMES = {
    "Sigmoid": "sigmoid",
    "ATan": "atan",
    "PiecewiseQuadratic": "piecewise_quadratic",
    "PiecewiseExp": "piecewise_exp",
    "SoftSign": "soft_sign",
    "SuperSpike": "super_spike",
    "Erf": "erf",
}


def surrogate_spec(surrogate_function):
    """``(name, alpha)`` the fused ops take, for a spikekern or SpikingJelly surrogate object or a name.

    Raises TypeError for anything the kernels cannot reproduce exactly.
    """
    if isinstance(surrogate_function, SurrogateFunction):
        return surrogate_function.name, surrogate_function.alpha
    if isinstance(surrogate_function, str):
        _, alpha = resolve_surrogate(surrogate_function, None)
        return surrogate_function, alpha
    cls = type(surrogate_function)
    if cls.__module__.startswith("spikingjelly.") and cls.__name__ in _SPIKINGJELLY_NAMES:
        alpha = getattr(surrogate_function, "alpha", None)
        if getattr(surrogate_function, "spiking", True) and isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            return _SPIKINGJELLY_NAMES[cls.__name__], float(alpha)
        raise TypeError(
            f"surrogate_function {surrogate_function!r}: only spiking=True with a float alpha is supported"
        )
    raise TypeError(
        f"surrogate_function must be a spikekern.surrogate object, one of SpikingJelly's "
        f"{sorted(_SPIKINGJELLY_NAMES)} or a name in {sorted(SURROGATES)}; got {cls.__module__}.{cls.__name__}"
    )
