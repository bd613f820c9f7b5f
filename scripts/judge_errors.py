"""Contact sheet of the judge's mistakes on unseen synthetic renders, to see what it gets wrong.

Scores ``--scenes`` held-out scenes of 1-``--max-objects`` objects (the judge's held-out set by
default: ``bench train-judge`` scores on seed 0; ``--seed 1`` renders a set nobody has looked at),
prints the pooled accuracy, and draws the first ``--most`` images with a miss, each labelled with
the objects the judge missed (red) and what it said instead (blue). ``--metrics OUT.json`` also
writes the held-out figures ``bench train-judge`` reports (clean, by object count, blurred,
down-and-up scaled).

Usage: python scripts/judge_errors.py OUT.png [--judge PATH] [--seed 0] [--scenes 400]
       [--max-objects 5] [--metrics OUT.json]
"""

from __future__ import annotations

import argparse

import torch

from bench.atomic import atomic_write_json
from bench.images import save_misses_sheet
from bench_builtins.datasets.synthetic.dataset import load_synthetic
from bench_builtins.evaluators.accuracy import make_accuracy_evaluator
from bench_builtins.evaluators.judge import load_judge
from bench_builtins.evaluators.judge_training import dataset_tensors, heldout_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--judge", default=None, help="judge weights (default: the shipped judge)")
    parser.add_argument("--seed", type=int, default=0, help="render seed of the held-out set")
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--max-objects", type=int, default=5)
    parser.add_argument("--most", type=int, default=40)
    parser.add_argument("--metrics", default=None, help="also write the held-out figures to this JSON")
    args = parser.parse_args()

    dataset = load_synthetic(
        scenes=args.scenes, seed=args.seed, split="heldout", max_objects=args.max_objects
    )
    images, conditions = dataset_tensors(dataset)
    judge, cpu = load_judge(args.judge), torch.device("cpu")
    if args.metrics:
        metrics = heldout_metrics(judge, images, conditions, cpu)
        atomic_write_json(args.metrics, {**metrics, "judge": args.judge or "shipped", "seed": args.seed})
        print(f"wrote {args.metrics}: clean {metrics['heldout_acc_clean']:.4f}")
    evaluator = make_accuracy_evaluator(judge=judge, device="cpu", labels=dataset.labels)
    misses = evaluator.misses(images.float() / 127.5 - 1, conditions)
    k = int(conditions.sum())
    found = k - sum(len(missed) for _, missed, _ in misses)
    print(f"{len(images)} unseen renders, {len(misses)} with a miss, pooled accuracy {found / k:.4f}")
    save_misses_sheet(images.float() / 127.5 - 1, misses[: args.most], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
