"""Hyper-parameter checks shared by specs, attacks and defenses, so that every one of them
rejects a bad value with the same wording: "<owner> <name> must be ..., got <value>"."""
from __future__ import annotations

import math

import numpy as np


def is_integer(value) -> bool:
    """True for Python and NumPy integers; False for bools, floats (even 2.0) and strings."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for finite real numbers (not bools, strings, NaN or infinities)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_integer(name: str, value, minimum: int, owner: str = "", allow_none: bool = False) -> None:
    """Reject ``value`` unless it is an integer >= ``minimum`` (or None with ``allow_none``)."""
    if allow_none and value is None:
        return
    if not is_integer(value) or value < minimum:
        what = f"None or an integer >= {minimum}" if allow_none else f"an integer >= {minimum}"
        raise ValueError(f"{_prefix(owner)}{name} must be {what}, got {value!r}")


def check_positive(name: str, value, owner: str = "", allow_zero: bool = False) -> None:
    """Reject ``value`` unless it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    if not is_number(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{_prefix(owner)}{name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {value!r}")


def _prefix(owner: str) -> str:
    return f"{owner} " if owner else ""
