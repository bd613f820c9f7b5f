"""Draw a ``profile.json`` of scripts/profile_sampling.py or scripts/profile_training.py as bars:
the ms per step of each op family and of the whole step's kernels, optionally against the step
time a target needs. The profile scripts write this picture themselves (``profile.png``); this
redraws one from its JSON, with a target.

Usage: python scripts/plot_profile.py PROFILE_JSON OUT_PNG [--target-ms 42.7]
       (120 images/s at 512 images a chunk and 100 steps is 512 / 120 / 100 s = 42.7 ms a step)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.jsonfile import read_json
from bench.profiling import profile_figure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--target-ms", type=float, default=None, help="a dashed line at this step time")
    args = parser.parse_args()
    if not args.profile.is_file():
        parser.error(f"{args.profile}: no such file (a profile.json of scripts/profile_sampling.py)")
    profile = read_json(args.profile, SystemExit)
    if not isinstance(profile, dict) or "families" not in profile:
        parser.error(f"{args.profile}: not a profile.json (no 'families'); a timing.json has no profile")
    path = profile_figure(profile, args.out, target_ms=args.target_ms)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
