"""Surrogate gradients of the Heaviside spike: names, ids, default alphas and the reference formulas.

Ids 0-6 and their formulas are SpikingJelly's (``spikingjelly/_ops/surrogate.py``), id 7 is snnTorch's
``fast_sigmoid``, so that kernels and models trained with either package agree; id 8 is the triangle of
FSDDIM's code (Watanabe et al., github.com/mil-tokyo/FSDDIM, ``snn_layers.py``). The kernels evaluate
the same formulas in float32.
"""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Surrogate:
    name: str
    id: int
    default_alpha: float


SURROGATES = {
    s.name: s
    for s in (
        Surrogate("sigmoid", 0, 4.0),
        Surrogate("atan", 1, 2.0),
        Surrogate("piecewise_quadratic", 2, 1.0),
        Surrogate("piecewise_exp", 3, 1.0),
        Surrogate("soft_sign", 4, 2.0),
        Surrogate("super_spike", 5, 1.0),
        Surrogate("erf", 6, 2.0),
        Surrogate("fast_sigmoid", 7, 25.0),  # snnTorch's fast_sigmoid(slope): alpha is the slope
        Surrogate("triangle", 8, 2.0),  # FSDDIM's: support |x| < 1/alpha, peak 1 at the threshold
    )
}


def resolve_surrogate(surrogate, alpha):
    """Validate a surrogate name and alpha; return ``(id, alpha)`` with alpha's default filled in."""
    if not isinstance(surrogate, str):
        raise TypeError(f"surrogate must be a name (str), one of {sorted(SURROGATES)}, got {type(surrogate).__name__}")
    spec = SURROGATES.get(surrogate)
    if spec is None:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if alpha is None:
        return spec.id, spec.default_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    return spec.id, float(alpha)


def surrogate_gradient(x: torch.Tensor, surrogate_id: int, alpha: float) -> torch.Tensor:
    """d spike / d x for ``spike = (x >= 0)``, evaluated in ``x``'s dtype."""
    if surrogate_id == 0:
        s = torch.sigmoid(alpha * x)
        return (1 - s) * s * alpha
    if surrogate_id == 1:
        z = x * (math.pi / 2 * alpha)
        return (alpha / 2) / (1 + z * z)
    if surrogate_id == 2:
        return (alpha - alpha * alpha * x.abs()).clamp_min(0)
    if surrogate_id == 3:
        return (alpha / 2) * torch.exp(-alpha * x.abs())
    if surrogate_id == 4:
        z = 1 / alpha + x.abs()
        return 1 / (2 * alpha * z * z)
    if surrogate_id == 5:
        z = 1 + x.abs()
        return alpha / (z * z)
    if surrogate_id == 6:
        z = alpha * x
        return (alpha / math.sqrt(math.pi)) * torch.exp(-z * z)
    if surrogate_id == 7:
        z = alpha * x.abs() + 1
        return 1 / (z * z)
    if surrogate_id == 8:
        return (1 - alpha * x.abs()).clamp_min(0)
    raise ValueError(f"unknown surrogate id {surrogate_id}")
