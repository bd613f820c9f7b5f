"""Which setting of a sampling sweep beat its baseline, for a job that goes on with the winner.

Reads each setting's ``SWEEP_DIR/NAME/timing.json`` (``scripts/sampling_sweep.sh``) and prints
the name of the fastest candidate whose images/s beat the faster of the baseline's timings by at
least ``--min-gain``. It prints nothing when none did, so a shell job can test it with ``[ -n ]``.
Every candidate's ratio goes to stderr.

A timing the sweep flagged NOT COMPARABLE (``NAME.not-comparable``: it ran while another setting
still compiled) or that is missing (the setting failed) is left out. If no baseline timing is
usable, nothing is picked.

Usage: python scripts/sweep_pick.py SWEEP_DIR --baseline NAME [--baseline NAME ...]
       [--min-gain 1.01] CANDIDATE [CANDIDATE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def images_per_second(sweep: Path, name: str) -> float | None:
    """The setting's unprofiled images/s, or None where it has no usable timing."""
    timing = sweep / name / "timing.json"
    if not timing.is_file() or (sweep / f"{name}.not-comparable").exists():
        return None
    return float(json.loads(timing.read_text())["images_per_s_unprofiled"])


def pick(
    sweep: Path, baselines: list[str], candidates: list[str], min_gain: float
) -> tuple[str | None, list[str]]:
    """(the winner or None, one line per candidate saying how it compared)."""
    base = [v for v in (images_per_second(sweep, n) for n in baselines) if v is not None]
    if not base:
        return None, [f"no usable baseline timing among {', '.join(baselines)}: nothing picked"]
    reference = max(base)
    lines, best, best_ratio = [], None, min_gain
    for name in candidates:
        value = images_per_second(sweep, name)
        if value is None:
            lines.append(f"{name}: no usable timing")
            continue
        ratio = value / reference
        lines.append(f"{name}: {value:.2f} images/s, {ratio:.3f}x the baseline's {reference:.2f}")
        if ratio >= best_ratio:
            best, best_ratio = name, ratio
    lines.append(f"picked: {best or 'none'} (at least {min_gain}x needed)")
    return best, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep's output folder")
    parser.add_argument("candidates", nargs="+", help="the settings that may be picked")
    parser.add_argument("--baseline", action="append", required=True, help="a baseline setting (repeatable)")
    parser.add_argument("--min-gain", type=float, default=1.01, help="the least ratio to the baseline")
    args = parser.parse_args()
    if args.min_gain <= 0:
        parser.error("--min-gain must be positive")
    best, lines = pick(args.sweep, args.baseline, args.candidates, args.min_gain)
    print("\n".join(lines), file=sys.stderr)
    if best:
        print(best)


if __name__ == "__main__":
    main()
