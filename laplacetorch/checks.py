"""Validators shared across the library: one per kind of argument."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

__all__ = ["check_bytes", "check_count", "check_generator", "check_tolerance"]


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (a count of samples, probes, steps, ...).

    Raises:
        ValueError: a bool, a non-integer, or an integer below ``minimum``, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return int(value)


def check_bytes(name: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` as a positive number of bytes (``None`` allowed when ``optional``).

    Raises:
        ValueError: a bool, a non-integer, zero or negative, naming ``name``.
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        extra = " or None" if optional else ""
        raise ValueError(f"{name} must be a positive number of bytes{extra}; got {value!r}")
    return int(value)


def check_tolerance(name: str, value: Any) -> float | None:
    """``value`` as a positive finite tolerance, or ``None`` (the method's default).

    Raises:
        ValueError: a bool, a non-number, zero, negative, NaN or Inf, naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number or None; got {value!r}")
    return float(value)


def check_generator(generator: Any) -> None:
    """Refuse a ``generator`` that is not a ``torch.Generator`` (or ``None``).

    Raises:
        TypeError: naming what was given (a numpy Generator, a seed).
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = (
            " (a seed: pass torch.Generator().manual_seed(seed))"
            if isinstance(generator, Integral)
            else ""
        )
        raise TypeError(
            f"generator must be a torch.Generator or None; got {type(generator).__module__}."
            f"{type(generator).__name__}{hint}"
        )
