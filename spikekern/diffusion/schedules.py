"""Noise schedules β_0..β_{T-1} of Gaussian diffusion, computed in float64.

- ``"linear"``: Ho et al. 2020 (DDPM), β evenly spaced from ``beta_start`` = 1e-4 to ``beta_end`` = 0.02
  (``np.linspace(..., dtype=np.float64)`` in their code). Those endpoints were chosen for T = 1000;
  Nichol & Dhariwal scale both by 1000 / T for other step counts, which a caller does by passing them.
- ``"cosine"``: Nichol & Dhariwal 2021 (improved DDPM), ᾱ(t) = f(t) / f(0) with
  f(t) = cos²(((t / T) + s) / (1 + s) · π / 2), s = 0.008, and β_t = min(1 − ᾱ(t + 1) / ᾱ(t), 0.999)
  (``betas_for_alpha_bar`` in their ``improved-diffusion`` code).
"""

import math

import torch

from ._checks import check_choice, check_int, check_real

SCHEDULES = ("linear", "cosine")

# Defaults of the papers above; an option a schedule does not use must stay None.
_LINEAR_DEFAULTS = {"beta_start": 1e-4, "beta_end": 0.02}
_COSINE_DEFAULTS = {"cosine_s": 0.008, "max_beta": 0.999}


def _check_open_unit(argument, value):
    value = check_real(argument, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{argument} must lie in (0, 1), got {value}")
    return value


def _resolve_options(name, given, defaults):
    """The schedule's options with defaults filled in; options of the other schedule must be None."""
    misplaced = [key for key, value in given.items() if key not in defaults and value is not None]
    if misplaced:
        raise ValueError(f"{misplaced[0]} does not apply to the {name!r} schedule")
    return {key: defaults[key] if given[key] is None else given[key] for key in defaults}


def beta_schedule(name, num_steps, *, beta_start=None, beta_end=None, cosine_s=None, max_beta=None):
    """β_t for t = 0..num_steps-1 of schedule ``name`` (``SCHEDULES``), a float64 CPU tensor.

    ``beta_start``/``beta_end`` (default 1e-4/0.02) apply to ``"linear"``; ``cosine_s`` (default 0.008)
    and ``max_beta`` (default 0.999) to ``"cosine"``. See the module docstring for the formulas.
    """
    check_choice("schedule", name, SCHEDULES)
    num_steps = check_int("num_steps", num_steps, 1)
    given = {"beta_start": beta_start, "beta_end": beta_end, "cosine_s": cosine_s, "max_beta": max_beta}
    if name == "linear":
        options = _resolve_options(name, given, _LINEAR_DEFAULTS)
        start = _check_open_unit("beta_start", options["beta_start"])
        end = _check_open_unit("beta_end", options["beta_end"])
        return torch.linspace(start, end, num_steps, dtype=torch.float64)

    options = _resolve_options(name, given, _COSINE_DEFAULTS)
    max_beta = _check_open_unit("max_beta", options["max_beta"])
    s = check_real("cosine_s", options["cosine_s"])
    if s < 0.0:
        raise ValueError(f"cosine_s must be >= 0, got {s}")
    fraction = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((fraction + s) / (1.0 + s) * (math.pi / 2.0)) ** 2
    # β from the ratio of consecutive ᾱ, so f(0) cancels; the clip keeps β_{T-1} (where f(T) ≈ 0) below 1.
    return (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
