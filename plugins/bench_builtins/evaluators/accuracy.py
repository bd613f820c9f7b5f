"""i-CLEVR accuracy: the pooled top-k definition of iclevr.md, its breakdowns, and the evaluator.

Definition (pooled, the number everyone reports): for image i let k_i be the number of objects in
its condition; hits_i = how many of the k_i highest judge scores are objects of the condition;
accuracy = sum(hits_i) / sum(k_i). Extra objects in an image are never penalised. Exact ties between
scores are broken towards the lower label index (a stable sort), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Images outside [-1 - RANGE_SLACK, 1 + RANGE_SLACK] are taken for another range (e.g. [0, 255]);
# a sampler's slight overshoot of [-1, 1] is clamped, as saving a PNG would.
RANGE_SLACK = 0.5


def _objects(conditions: torch.Tensor) -> torch.Tensor:
    return conditions > 0.5


def per_image_hits(scores: torch.Tensor, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits, k) per image: hits_i = condition objects among the k_i top scores of image i."""
    import torch

    if scores.shape != conditions.shape or scores.dim() != 2:
        raise ValueError(
            f"scores {tuple(scores.shape)} and conditions {tuple(conditions.shape)} must both be (B, L)"
        )
    objects = _objects(conditions)
    k = objects.sum(dim=1)
    if bool((k == 0).any()):
        empty = torch.nonzero(k == 0).flatten().tolist()[:8]
        raise ValueError(
            f"conditions of images {empty} name no object; accuracy needs at least one per image"
        )
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    )
    in_top_k = rank < k.unsqueeze(1)
    hits = (in_top_k & objects).sum(dim=1)
    return hits, k


def pooled_accuracy(scores: torch.Tensor, conditions: torch.Tensor) -> float:
    """Total hits / total objects over all images (the iclevr.md accuracy)."""
    hits, k = per_image_hits(scores, conditions)
    return int(hits.sum()) / int(k.sum())


def per_image_mean_accuracy(scores: torch.Tensor, conditions: torch.Tensor) -> float:
    """Mean over images of hits_i / k_i (NOT the reported number; differs when k_i varies)."""
    hits, k = per_image_hits(scores, conditions)
    return float((hits.double() / k.double()).mean())


def accuracy_by_objects(scores: torch.Tensor, conditions: torch.Tensor) -> dict[int, float]:
    """Pooled accuracy among images whose condition holds exactly n objects, for each n present."""
    hits, k = per_image_hits(scores, conditions)
    out = {}
    for n in sorted(set(k.tolist())):
        mask = k == n
        out[int(n)] = int(hits[mask].sum()) / int(k[mask].sum())
    return out


def per_label_hit_rate(
    scores: torch.Tensor, conditions: torch.Tensor, labels: Sequence[str] | None = None
) -> dict[Any, float]:
    """For each label present in some condition: the fraction of those images where it was in the top k_i."""
    import torch

    hits, k = per_image_hits(scores, conditions)  # validates
    objects = _objects(conditions)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    )
    found = (rank < k.unsqueeze(1)) & objects
    out = {}
    for j in range(scores.shape[1]):
        asked = int(objects[:, j].sum())
        if asked:
            name = labels[j] if labels is not None else j
            out[name] = int(found[:, j].sum()) / asked
    return out


def check_images(images: torch.Tensor, *, check_range: bool = True, size: int = 64) -> None:
    """Raise ValueError unless images are float (B, 3, size, size) in [-1, 1]."""
    import torch

    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, 3, {size}, {size}), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise ValueError(
            f"images must have shape (B, 3, {size}, {size}) (RGB, {size}x{size}); got {tuple(images.shape)}. "
            f"Resize to {size}x{size} the way the data was preprocessed before judging."
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be float in [-1, 1]; got dtype {images.dtype}. Convert uint8 with x / 127.5 - 1."
        )
    if not check_range or images.numel() == 0:
        return
    lo, hi = float(images.min()), float(images.max())
    if hi > 1 + RANGE_SLACK or lo < -1 - RANGE_SLACK:
        hint = " They look like [0, 255]: use x / 127.5 - 1." if hi > 2 and lo >= 0 else ""
        raise ValueError(f"images must be in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}].{hint}")
    if lo >= 0:
        raise ValueError(
            f"images must be in [-1, 1] but all values are in [{lo:.3g}, {hi:.3g}]: they look like [0, 1] "
            "(the judge's classic bug). Use x * 2 - 1, or pass check_range=False if they are truly [-1, 1]."
        )


def check_conditions(conditions: torch.Tensor, batch: int, num_labels: int = 24) -> None:
    """Raise ValueError unless conditions are a (batch, num_labels) multi-hot tensor."""
    import torch

    if not isinstance(conditions, torch.Tensor) or conditions.dim() != 2 or conditions.shape[1] != num_labels:
        shape = tuple(conditions.shape) if isinstance(conditions, torch.Tensor) else type(conditions).__name__
        raise ValueError(
            f"conditions must be multi-hot (B, {num_labels}) for i-CLEVR's {num_labels} labels; got {shape}"
        )
    if conditions.shape[0] != batch:
        raise ValueError(f"{conditions.shape[0]} conditions for {batch} images; they must match one to one")


def summarise(
    scores: torch.Tensor, conditions: torch.Tensor, labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every accuracy figure the evaluator reports, from scores and conditions."""
    hits, k = per_image_hits(scores, conditions)
    return {
        "acc": int(hits.sum()) / int(k.sum()),
        "acc_per_image_mean": per_image_mean_accuracy(scores, conditions),
        "acc_n": int(scores.shape[0]),
        "acc_objects": int(k.sum()),
        "acc_hits": int(hits.sum()),
        "acc_by_objects": accuracy_by_objects(scores, conditions),
        "acc_per_label": per_label_hit_rate(scores, conditions, labels),
    }


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class AccuracyEvaluator:
    """``evaluator(images, conditions) -> dict``: the judge's pooled accuracy and breakdowns.

    ``images``: float (B, 3, 64, 64) in [-1, 1] (checked; a sampler's slight overshoot is clamped).
    ``conditions``: multi-hot (B, 24).
    """

    def __init__(
        self,
        judge: Any = None,
        device: str | None = None,
        batch_size: int = 256,
        labels: Sequence[str] | None = None,
        check_range: bool = True,
    ) -> None:
        import torch

        from .judge import load_judge

        self.device = torch.device(device or _default_device())
        # A module is accepted too, so callers holding a judge don't reload it.
        self.judge = (
            judge.to(self.device).eval()
            if isinstance(judge, torch.nn.Module)
            else load_judge(judge, self.device)
        )
        self.batch_size = int(batch_size)
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != 24:
            raise ValueError(f"labels must name the 24 i-CLEVR labels in index order; got {len(self.labels)}")
        self.check_range = check_range
        # The last images scored and their scores: `misses` right after the accuracy of the same
        # images (as bench run asks them) does not run the judge again.
        self._last: tuple[Any, Any] | None = None

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid judge scores (B, 24) on CPU, float32."""
        import torch

        from .judge import judge_features, judge_logits

        if self._last is not None and self._last[0] is images:
            return self._last[1]
        out = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start : start + self.batch_size].to(self.device, torch.float32).clamp(-1, 1)
                out.append(judge_logits(self.judge, judge_features(self.judge, batch)).float().cpu())
        scores = torch.cat(out) if out else torch.empty(0, 24)
        self._last = (images, scores)
        return scores

    def misses(
        self, images: torch.Tensor, conditions: torch.Tensor
    ) -> list[tuple[int, list[str], list[str]]]:
        """The images with a miss: (index, the condition's objects not among the judge's top k,
        what it ranked there instead), for a picture of what the model gets wrong."""
        import torch

        check_images(images, check_range=self.check_range)
        check_conditions(conditions, images.shape[0])
        scores, conditions = self.scores(images), conditions.detach().cpu()
        hits, k = per_image_hits(scores, conditions)
        names = list(self.labels) if self.labels is not None else [str(i) for i in range(conditions.shape[1])]
        out = []
        for i in torch.nonzero(hits < k).flatten().tolist():
            truth = set(torch.nonzero(conditions[i] > 0.5).flatten().tolist())
            said = torch.topk(scores[i], int(k[i])).indices.tolist()
            out.append(
                (i, [names[j] for j in sorted(truth - set(said))], [names[j] for j in said if j not in truth])
            )
        return out

    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> dict[str, Any]:
        check_images(images, check_range=self.check_range)
        check_conditions(conditions, images.shape[0])
        return summarise(self.scores(images), conditions.detach().cpu(), self.labels)


def make_accuracy_evaluator(
    judge: Any = None,
    device: str | None = None,
    batch_size: int = 256,
    labels: Sequence[str] | None = None,
    check_range: bool = True,
    **_options: Any,
) -> AccuracyEvaluator:
    """i-CLEVR pooled accuracy by the ResNet18 judge (options: judge, device, batch_size, labels)."""
    if labels is None and getattr(_options.get("dataset"), "labels", None) is not None:
        labels = _options["dataset"].labels  # per-label keys read as names, not indices
    return AccuracyEvaluator(
        judge=judge, device=device, batch_size=batch_size, labels=labels, check_range=check_range
    )
