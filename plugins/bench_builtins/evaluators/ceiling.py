"""The judge's ceiling on a condition set: its accuracy on renders that hold exactly each
condition's objects, that is, what a perfect generator of the synthetic scenes would score.

A model's accuracy reads against this number, not against 1: a miss the judge makes on true
renders is not the generator's. The renders come from the synthetic renderer, so for a model
trained on a user's own i-CLEVR folder the figure is the judge's on this renderer's scenes."""

from __future__ import annotations

from typing import Any

from bench.conditions import ConditionSet, load_labels_spec, multi_hot


def judge_ceiling(
    condition_set: ConditionSet,
    per_condition: int = 20,
    seed: int = 0,
    judge: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The accuracy evaluator's figures (``acc``, ``acc_by_objects``, ``acc_per_label``, ...) on
    ``per_condition`` renders of every condition of ``condition_set``."""
    from bench_builtins.datasets.synthetic.dataset import render_conditions
    from bench_builtins.evaluators.accuracy import make_accuracy_evaluator

    if per_condition < 1:
        raise ValueError(f"per_condition must be at least 1, got {per_condition}")
    labels = load_labels_spec()
    images = render_conditions(condition_set.conditions, per_condition, seed, device=device)
    repeated = [c for c in condition_set.conditions for _ in range(per_condition)]
    evaluator = make_accuracy_evaluator(judge=judge, device=device, labels=labels)
    return evaluator(images.float() / 127.5 - 1, multi_hot(repeated, labels))
