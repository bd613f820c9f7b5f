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
from PIL import Image, ImageDraw

from bench.atomic import atomic_write_json
from bench_builtins.datasets.synthetic.dataset import load_synthetic
from bench_builtins.evaluators.accuracy import per_image_hits
from bench_builtins.evaluators.judge import load_judge
from bench_builtins.evaluators.judge_training import dataset_tensors, heldout_metrics, score_uint8_images

TILE, CAPTION = 192, 30


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
    scores = score_uint8_images(judge, images, cpu)
    hits, k = per_image_hits(scores, conditions)
    missed = torch.nonzero(hits < k).flatten().tolist()
    print(
        f"{len(images)} unseen renders, {len(missed)} with a miss, "
        f"pooled accuracy {int(hits.sum()) / int(k.sum()):.4f}"
    )
    tiles = []
    for i in missed[: args.most]:
        truth = set(torch.nonzero(conditions[i] > 0.5).flatten().tolist())
        said = set(torch.topk(scores[i], int(k[i])).indices.tolist())
        tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
        tile.paste(Image.fromarray(images[i].permute(1, 2, 0).numpy()).resize((TILE, TILE), Image.NEAREST))
        draw = ImageDraw.Draw(tile)
        draw.text((2, TILE + 2), "miss: " + ", ".join(dataset.labels[j] for j in truth - said), fill="red")
        draw.text((2, TILE + 15), "said: " + ", ".join(dataset.labels[j] for j in said - truth), fill="blue")
        tiles.append(tile)
    cols = 8
    sheet = Image.new("RGB", (cols * TILE, max(1, -(-len(tiles) // cols)) * (TILE + CAPTION)), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % cols) * TILE, (n // cols) * (TILE + CAPTION)))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
