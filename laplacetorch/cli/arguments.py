"""Checks of command-line option values, shared by the commands: :class:`UsageError` (exit
status 2, raised before any work starts) and the progress-bar default."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence


class UsageError(ValueError):
    """A bad command-line argument, found before any work starts (exit status 2)."""


# --------------------------------------------------------------------------- argument checks


#: the largest seed torch's generators take (a signed 64-bit integer)
SEED_MAX = 2**63 - 1


def _integer(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}; got {value!r}")
    if high is not None and value > high:
        raise UsageError(f"{name} must be an integer in [{low}, {high}]; got {value!r}")
    return value


def _real(name: str, value, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UsageError(f"{name} must be a finite number {bound}; got {value!r}")
    return float(value)


def _names(name: str, text, valid: Sequence[str], aliases: dict[str, str] | None = None):
    """The comma-separated names of ``text``, each in ``valid`` (or an alias), none twice."""
    aliases = aliases or {}
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{name} needs at least one name; expected some of {list(valid)}")
    items = [s.strip() for s in text.split(",")]
    if "" in items:
        raise UsageError(f"{name} has an empty name in {text!r}; separate names by single commas")
    seen: dict[str, str] = {}
    for s in items:
        canon = aliases.get(s, s)
        if canon not in valid:
            raise UsageError(
                f"unknown {name[2:].rstrip('s')} {s!r} in {name}; expected one of {list(valid)}"
            )
        if canon in seen:
            twice = f"{seen[canon]!r} and {s!r}" if seen[canon] != s else repr(s)
            raise UsageError(f"{name} names {canon!r} twice ({twice})")
        seen[canon] = s
    return items


def _progress(flag) -> bool:
    """``--progress`` / ``--no-progress``; unset: on when stderr is a terminal."""
    if flag is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(flag)
