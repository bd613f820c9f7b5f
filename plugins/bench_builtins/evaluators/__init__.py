"""Built-in evaluators plugin: i-CLEVR judge accuracy, FID and KID.

Factories import their modules lazily, so ``bench list`` imports no torch. (Factory names differ
from the submodule names so that importing ``.fid`` never shadows them.)
"""

from __future__ import annotations

from typing import Any

from bench import hookimpl


def make_iclevr_accuracy(**options: Any):
    """i-CLEVR pooled top-k accuracy by the ResNet18 judge (options: judge, device, batch_size, labels)."""
    from .accuracy import make_accuracy_evaluator

    return make_accuracy_evaluator(**options)


def make_fid(**options: Any):
    """FID vs the reference dataset: Inception with local weights, else judge features (named fid-judge)."""
    from .fid import make_fid_evaluator

    return make_fid_evaluator(**options)


def make_kid(**options: Any):
    """KID vs the reference dataset: Inception with local weights, else judge features (named kid-judge)."""
    from .fid import make_kid_evaluator

    return make_kid_evaluator(**options)


# Both compare with the reference images: bench run passes them `dataset` and `ref_n`; their
# statistics need two generated images per condition set at least.
make_fid.needs_reference = make_kid.needs_reference = True
make_fid.min_images = make_kid.min_images = 2


@hookimpl
def register_evaluators(register) -> None:
    register("iclevr-acc", make_iclevr_accuracy, aliases=("acc",))
    register("fid", make_fid)
    register("kid", make_kid)
