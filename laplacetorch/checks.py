"""Validators shared across the library: one per kind of argument."""

from __future__ import annotations

from numbers import Integral
from typing import Any

__all__ = ["check_count"]


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (a count of samples, probes, steps, ...).

    Raises:
        ValueError: a bool, a non-integer, or an integer below ``minimum``, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return int(value)
