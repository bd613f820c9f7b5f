"""The evaluators' ceiling on a condition set: their figures on renders that hold exactly each
condition's objects, that is, what a perfect generator of the synthetic scenes would score.

A model's accuracy reads against this number, not against 1: a miss the judge makes on true
renders is not the generator's. Its FID at the same N is the floor of FID at that N: the
distance that the sample size and the condition set's mix of objects alone leave. The renders
come from the synthetic renderer, so for a model trained on a user's own i-CLEVR folder the
figures are the evaluators' on this renderer's scenes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.conditions import ConditionSet, load_condition_set, load_labels_spec, multi_hot
from bench.results import RENDERS_MODEL

RENDERS_SCHEDULER = "synthetic renderer"


def score_renders(
    condition_set: ConditionSet,
    evaluators: Mapping[str, Callable[..., dict[str, Any]]],
    per_condition: int = 20,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every evaluator's figures (``acc``, ``acc_by_objects``, ``acc_per_label``, ``fid-judge``...)
    on ``per_condition`` renders of every condition of ``condition_set``, merged."""
    from bench_builtins.datasets.synthetic.dataset import render_conditions

    if per_condition < 1:
        raise ValueError(f"per_condition must be at least 1, got {per_condition}")
    images = (
        render_conditions(condition_set.conditions, per_condition, seed, device=device).float() / 127.5 - 1
    )
    repeated = [c for c in condition_set.conditions for _ in range(per_condition)]
    conditions = multi_hot(repeated, load_labels_spec())
    metrics: dict[str, Any] = {}
    for evaluator in evaluators.values():
        metrics.update(evaluator(images, conditions))
    return metrics


def ceiling_result(
    condition_files: list[str],
    evaluators: list[str],
    per_condition: int = 20,
    seed: int = 0,
    judge: str | None = None,
    ref_n: int = 500,
    device: str = "cpu",
) -> Any:
    """A ``RunResult`` with one row per condition set (default: the shipped test and new_test),
    model ``renders``: what ``bench data ceiling`` prints and keeps. The evaluators are built as
    ``bench run`` builds them."""
    from bench.plugins import get_plugins
    from bench.results import Row, RunResult, environment
    from bench.runner import DEFAULT_CONDITION_FILES, RunConfig, make_evaluators

    labels = load_labels_spec()
    files = [str(f) for f in condition_files or DEFAULT_CONDITION_FILES]
    sets = [load_condition_set(f, labels) for f in files]
    config = RunConfig(evaluators=evaluators, judge=judge, ref_n=ref_n)
    built = make_evaluators(config, get_plugins(), device, labels)
    rows = [
        Row(
            model=RENDERS_MODEL,
            scheduler=RENDERS_SCHEDULER,
            steps=0,
            seed=seed,
            condition_set=s.name,
            checkpoint="",
            n_images=len(s) * per_condition,
            metrics=score_renders(s, built, per_condition, seed, device),
        )
        for s in sets
    ]
    settings = {"per_condition": per_condition, "evaluators": evaluators, "judge": judge, "ref_n": ref_n}
    settings["conditions"] = files
    return RunResult(config=settings, seeds=[seed], rows=rows, environment=environment(device))
