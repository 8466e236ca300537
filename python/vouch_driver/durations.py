"""Durations as nixpkgs' driver takes them: a ``datetime.timedelta``, or
(the older form, still accepted) a number of seconds, or ``None`` where the
call allows no limit.  Everything crosses the bridge as seconds."""

from __future__ import annotations

import datetime as dt

from .messages import message


def seconds(value: float | dt.timedelta | None, allow_none: bool = True) -> float | None:
    """``value`` in seconds (a float), or None for None.

    Raises TypeError, worded as nixpkgs', for a bool or anything that is not
    a duration."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(message("durationType", type=type(value).__name__))
    if isinstance(value, bool):
        raise TypeError(message("durationIsBool", value=value))
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(message("durationType", type=type(value).__name__))


def as_timedelta(value: float | dt.timedelta) -> dt.timedelta:
    """``value`` as a timedelta (nixpkgs' ``duration.as_timedelta``)."""
    return dt.timedelta(seconds=seconds(value, allow_none=False))


def as_seconds(value: float | dt.timedelta) -> float:
    """``value`` in seconds (nixpkgs' ``duration.as_seconds``)."""
    return seconds(value, allow_none=False)


def python_float(value: float | None) -> str:
    """A number of seconds as nixpkgs prints a timeout (``900.0``, ``None``)."""
    return "None" if value is None else repr(float(value))


FIFTEEN_MINUTES = dt.timedelta(minutes=15)
