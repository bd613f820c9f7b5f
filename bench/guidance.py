"""The guidance interval (no torch): checking, parsing and showing ``(lo, hi)``.

Classifier-free guidance may be limited to the timesteps ``lo <= t <= hi`` (Kynkäänniemi et al.
2024, "Applying guidance in a limited interval improves sample and distribution quality"); the
bounds are training timesteps (``0 .. num_train_timesteps - 1``; ``hi`` may reach past the last
one, e.g. ``(300, 1000)``). Outside the interval the model runs once on the conditions alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class GuidanceIntervalError(ValueError):
    """A guidance interval that is not two finite timesteps ``0 <= lo <= hi``."""


class GuidanceScaleError(ValueError):
    """A guidance scale that is not a finite number of 0 or more."""


def check_scale(value: object, what: str = "guidance") -> float:
    """``value`` as a float guidance scale; raises GuidanceScaleError saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GuidanceScaleError(f"{what} {value!r} is not a finite number")
    if not math.isfinite(value) or value < 0:
        why = " (it is negative)" if value < 0 else ""
        raise GuidanceScaleError(
            f"{what} {value:g} is not a scale{why}: use 0 or more (1 means off, 3-5 is typical)"
        )
    return float(value)


def check_interval(
    value: Sequence[float] | None, what: str = "guidance interval"
) -> tuple[float, float] | None:
    """``value`` as ``(lo, hi)`` floats, or None; raises GuidanceIntervalError saying what is wrong."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise GuidanceIntervalError(
            f"{what} must be two timesteps [lo, hi] (e.g. [300, 1000]), not {value!r}"
        )
    bounds = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise GuidanceIntervalError(f"{what} {list(value)!r}: {item!r} is not a finite number")
        bounds.append(float(item))
    lo, hi = bounds
    if lo < 0 or hi < 0:
        raise GuidanceIntervalError(
            f"{what} {format_interval((lo, hi))}: timesteps are 0 or more "
            "(training timesteps 0 .. num_train_timesteps - 1)"
        )
    if lo > hi:
        raise GuidanceIntervalError(
            f"{what} {format_interval((lo, hi))}: the lower end {lo:g} is above the upper end {hi:g}; "
            f"give LO,HI with LO <= HI (e.g. {hi:g},{lo:g})"
        )
    return lo, hi


def check_interval_reaches(
    interval: Sequence[float] | None, num_train_timesteps: int, what: str = "guidance interval"
) -> None:
    """Raise GuidanceIntervalError when ``interval`` starts past the last training timestep: it
    would guide no step, and the rows would still read the guidance scale."""
    last = int(num_train_timesteps) - 1
    if interval is not None and interval[0] > last:
        raise GuidanceIntervalError(
            f"{what} {format_interval(interval)} starts past the last training timestep {last}: it would "
            f"guide no step (timesteps run 0 .. {last}; e.g. {round(0.3 * last)},{last} guides the noisiest 70 %)"
        )


def parse_interval(text: str, what: str = "guidance interval") -> tuple[float, float]:
    """``"300,1000"`` -> ``(300.0, 1000.0)``; raises GuidanceIntervalError for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(parts):
        raise GuidanceIntervalError(
            f"{what} {text!r} is not LO,HI: give two training timesteps separated by a comma, e.g. 300,1000"
        )
    bounds = []
    for part in parts:
        try:
            bounds.append(float(part))
        except ValueError:
            raise GuidanceIntervalError(f"{what} {text!r}: {part!r} is not a number") from None
    interval = check_interval(bounds, what)
    assert interval is not None
    return interval


def format_interval(interval: Sequence[float] | None) -> str:
    """``(300.0, 1000.0)`` -> ``"300-1000"``; None -> ``""``."""
    if interval is None:
        return ""
    lo, hi = interval
    return f"{lo:g}-{hi:g}"


def in_interval(t: float, interval: tuple[float, float] | None) -> bool:
    """Whether guidance applies at timestep ``t`` (always, without an interval)."""
    return interval is None or interval[0] <= t <= interval[1]
