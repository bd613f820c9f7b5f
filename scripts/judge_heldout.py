"""Score a judge on synthetic renders it never saw: clean, blurred, and down-up scaled.

The training command (`bench train-judge`) already reports held-out accuracy on the `heldout`
split rendered with seed 0; this renders another held-out set (another seed) so a judge chosen
on the first one is confirmed on images nobody looked at.

Usage: python scripts/judge_heldout.py OUT.json [--judge PATH] [--seed 1] [--scenes 400] [--max-objects 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.atomic import atomic_write_json
from bench.plugins import get
from bench_builtins.evaluators.judge import load_judge
from bench_builtins.evaluators.judge_training import dataset_tensors, heldout_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="metrics JSON to write")
    parser.add_argument(
        "--judge", default=None, help="judge .safetensors or course checkpoint (default: shipped)"
    )
    parser.add_argument("--seed", type=int, default=1, help="render seed (train-judge scores on seed 0)")
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--max-objects", type=int, default=5)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = get("datasets", "synthetic").factory(
        scenes=args.scenes, max_objects=args.max_objects, split="heldout", seed=args.seed
    )
    images, conditions = dataset_tensors(data)
    metrics = heldout_metrics(load_judge(args.judge, device), images, conditions, device)
    metrics.update({"judge": args.judge or "shipped", "seed": args.seed, "scenes": args.scenes})
    atomic_write_json(args.out, metrics)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
