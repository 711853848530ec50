"""The UI's values, checked: numbers arrive as floats or strings (possibly empty) and leave as
range-checked ints or floats, or as a :class:`UserError` with a message for the user."""

from __future__ import annotations

import math
from typing import Any


class UserError(ValueError):
    """A request the app cannot serve; the message is meant for the user."""


def parse_int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number from a UI value (int, float like ``3.0``, or text), range-checked."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{what} is missing: enter a whole number")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, not {str(value)[:40]!r}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{what} must be a whole number, not {str(value)[:40]!r}")
        number = int(number)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise UserError(f"{what} must be {span}, not {number}")
    return number


def parse_float(value: Any, what: str, lo: float, hi: float) -> float:
    """A finite number from a UI value, within ``[lo, hi]``."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{what} is missing: enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, not {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise UserError(f"{what} must be a number from {lo:g} to {hi:g}, not {value}")
    return number
