"""Argument checks whose messages name the offending argument."""

import math
import numbers


def check_choice(argument, value, choices):
    """Raise unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a string, one of {choices}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {argument} {value!r}; expected one of {choices}")


def check_int(argument, value, lowest, highest=None):
    """``value`` as an int; raise unless it is an integer (not a bool) in ``[lowest, highest]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an integer, got {type(value).__name__}")
    if value < lowest or (highest is not None and value > highest):
        bounds = f">= {lowest}" if highest is None else f"in {lowest}..{highest}"
        raise ValueError(f"{argument} must be {bounds}, got {value}")
    return int(value)


def check_real(argument, value):
    """``value`` as a float; raise unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be finite, got {value}")
    return float(value)
