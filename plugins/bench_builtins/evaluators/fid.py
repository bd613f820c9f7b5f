"""FID and KID through torchmetrics, on Inception features when local weights exist, else the judge's.

Feature choice (never downloads anything):
- standard Inception (metric names ``fid`` / ``kid``): option ``fid_weights`` (a local
  ``pt_inception-2015-12-05`` file), or torch-fidelity's cache file when present, and the
  ``torch-fidelity`` package installed;
- otherwise the judge's 512-d penultimate features (names ``fid-judge`` / ``kid-judge``): numbers
  comparable only with other ``*-judge`` numbers from the same judge weights.

Both sets of images are quantised to uint8 first (what a saved PNG holds), so real and generated
images are treated the same. Real-image features are computed once per (dataset, ref_n, feature
extractor) and cached on disk in ``cache_dir``. torchmetrics receives precomputed float64
features through a pass-through module, so FID's covariances are float64.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TORCH_FIDELITY_WEIGHTS = Path(
    "~/.cache/torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth"
).expanduser()
DEFAULT_REF_N = 1000
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
CACHE_FORMAT = "bench-real-features-v1"

_memory_cache: dict[str, torch.Tensor] = {}


class FidError(ValueError):
    """FID/KID cannot be computed as asked (missing reference data, weights, too few images)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path("~/.cache/bench").expanduser())


@dataclass
class FeatureExtractor:
    """Images uint8 (B, 3, H, W) -> features (B, dim); ``identity`` keys the real-feature cache."""

    kind: str  # "inception" or "judge"
    identity: str
    dim: int
    extract: Callable[[torch.Tensor], torch.Tensor]

    @property
    def suffix(self) -> str:
        return "" if self.kind == "inception" else "-judge"


def _torch_fidelity_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_fidelity") is not None


def _inception_extractor(weights: Path, device: torch.device) -> FeatureExtractor:
    import torch
    from torchmetrics.image.fid import NoTrainInceptionV3

    from .judge import file_identity

    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
    ).to(device)

    def extract(images_u8: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(images_u8.to(device)).float().cpu()

    return FeatureExtractor("inception", "inception:" + file_identity(weights), 2048, extract)


def _judge_extractor(judge: Any, device: torch.device) -> FeatureExtractor:
    import torch

    from .judge import FEATURE_DIM, default_judge_path, file_identity, judge_features, load_judge

    path = default_judge_path() if judge is None else Path(judge).expanduser()
    net = load_judge(path, device)

    def extract(images_u8: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = images_u8.to(device, torch.float32) / 127.5 - 1
            return judge_features(net, x).float().cpu()

    return FeatureExtractor("judge", "judge:" + file_identity(path), FEATURE_DIM, extract)


def resolve_extractor(
    features: str = "auto", judge: Any = None, fid_weights: str | Path | None = None, device: Any = None
) -> FeatureExtractor:
    """Pick Inception (local weights + torch-fidelity) or the judge, as the module docstring says."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if features not in ("auto", "inception", "judge"):
        raise FidError(f"features must be 'auto', 'inception' or 'judge'; got {features!r}")
    if features == "judge":
        return _judge_extractor(judge, device)
    weights = Path(fid_weights).expanduser() if fid_weights else None
    if weights is not None and not weights.is_file():
        what = "is a folder" if weights.is_dir() else "does not exist"  # a folder was said to be missing
        raise FidError(
            f"--fid-weights {weights} {what}; pass the local Inception weights file "
            "(pt_inception-2015-12-05-6726825d.pth)"
        )
    if weights is None and TORCH_FIDELITY_WEIGHTS.is_file():
        weights = TORCH_FIDELITY_WEIGHTS
    if weights is not None and _torch_fidelity_available():
        return _inception_extractor(weights, device)
    if features == "inception" or fid_weights:
        why = (
            "the torch-fidelity package, which torchmetrics' Inception needs, is not installed "
            "(pip install torch-fidelity)"
            if weights
            else "no local Inception weights were found"
        )
        raise FidError(
            f"standard (Inception) FID is unavailable: {why}. Pass --fid-weights PATH with torch-fidelity "
            "installed, or leave --fid-weights out for the judge features (metric fid-judge)."
        )
    return _judge_extractor(judge, device)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 [0, 255], as a saved PNG would hold it."""
    import torch

    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _extract_batched(
    extractor: FeatureExtractor, images_u8: torch.Tensor, batch_size: int, label: str
) -> torch.Tensor:
    import torch

    from bench.progress import progress

    starts = range(0, images_u8.shape[0], batch_size)
    if len(starts) > 4:
        starts = progress(starts, label, length=len(starts))
    out = [extractor.extract(images_u8[s : s + batch_size]) for s in starts]
    return torch.cat(out) if out else torch.empty(0, extractor.dim)


def reference_indices(size: int, ref_n: int) -> list[int]:
    """A fixed, seeded subset of the dataset (the same on every machine)."""
    import torch

    n = min(int(ref_n), size)
    gen = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(size, generator=gen)[:n].tolist())


def reference_images_uint8(dataset: Any, indices: list[int]) -> torch.Tensor:
    """The chosen reference images as uint8 (N, 3, H, W), through ``images_uint8()`` when offered."""
    import torch

    if callable(getattr(dataset, "images_uint8", None)):
        return dataset.images_uint8()[torch.tensor(indices, dtype=torch.long)]
    return torch.stack([to_uint8(dataset[i][0]) for i in indices])


def _cache_path(cache_dir: Path, extractor: FeatureExtractor, dataset_key: str, n: int) -> Path:
    key = hashlib.sha256(f"{CACHE_FORMAT}|{dataset_key}|{n}|{extractor.identity}".encode()).hexdigest()[:24]
    return cache_dir / "real-features" / f"{extractor.kind}-{key}.safetensors"


def real_features(
    dataset: Any,
    extractor: FeatureExtractor,
    *,
    ref_n: int = DEFAULT_REF_N,
    cache_dir: str | Path | None = None,
    batch_size: int = 200,
) -> torch.Tensor:
    """Features of ``ref_n`` reference images, from the disk cache when it holds them."""
    from safetensors.torch import load_file, save_file

    from bench.atomic import atomic_write

    if dataset is None:
        raise FidError("FID/KID need the reference dataset (option dataset=...) to compare against")
    size = len(dataset)
    if size < 2:
        raise FidError(f"the reference dataset holds {size} image(s); FID/KID need at least 2")
    indices = reference_indices(size, ref_n)
    images = None
    dataset_key = getattr(dataset, "cache_key", None)
    if not dataset_key:  # no declared identity: the content itself is the key
        images = reference_images_uint8(dataset, indices)
        dataset_key = (
            f"{type(dataset).__name__}:{size}:" + hashlib.sha256(images.numpy().tobytes()).hexdigest()
        )
    path = _cache_path(
        Path(cache_dir) if cache_dir else default_cache_dir(), extractor, str(dataset_key), len(indices)
    )
    if str(path) in _memory_cache:
        return _memory_cache[str(path)]
    if path.is_file():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape == (len(indices), extractor.dim):
                _memory_cache[str(path)] = feats
                return feats
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
            pass
    if images is None:
        images = reference_images_uint8(dataset, indices)
    feats = _extract_batched(
        extractor, images, batch_size, f"reference features ({extractor.kind})"
    ).contiguous()
    meta = {
        "format": CACHE_FORMAT,
        "dataset": str(dataset_key),
        "n": str(len(indices)),
        "extractor": extractor.identity,
    }
    atomic_write(path, lambda tmp: save_file({"features": feats}, str(tmp), metadata=meta))
    _memory_cache[str(path)] = feats
    return feats


def _passthrough(dim: int) -> torch.nn.Module:
    """A 'feature extractor' for torchmetrics that returns its input: features are precomputed."""
    from torch import nn

    class Passthrough(nn.Module):
        num_features = dim

        def forward(self, x):  # noqa: D401
            return x

    return Passthrough()


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets, through torchmetrics, in float64."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_passthrough(real.shape[1]), reset_real_features=False)
    metric.set_dtype(torch.float64)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    # torchmetrics takes eigvals of a d x d non-symmetric matrix; for d <= 1024 multi-threaded LAPACK
    # is far slower than one thread (13 s vs 0.2 s measured at d=512 on a busy 2-core machine).
    threads = torch.get_num_threads()
    if real.shape[1] <= 1024:
        torch.set_num_threads(1)
    try:
        return float(metric.compute())
    finally:
        torch.set_num_threads(threads)


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float, int]:
    """(KID mean, std, subset size used) through torchmetrics; subset size shrinks to fit small N."""
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(int(subset_size), real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # its "saves all features" warning: we hand it features already
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_passthrough(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # subsets are drawn with the global RNG: make them repeatable
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


class DistributionEvaluator:
    """``evaluator(images, conditions) -> dict``: FID or KID of images against the reference dataset."""

    def __init__(
        self,
        metric: str,
        *,
        dataset: Any = None,
        judge: Any = None,
        fid_weights: Any = None,
        features: str = "auto",
        device: Any = None,
        cache_dir: Any = None,
        ref_n: int = DEFAULT_REF_N,
        batch_size: int = 200,
        kid_subset_size: int = KID_SUBSET_SIZE,
        kid_subsets: int = KID_SUBSETS,
    ) -> None:
        if dataset is None:
            raise FidError(f"{metric} needs the reference dataset (option dataset=...) to compare against")
        self.metric = metric
        self.dataset = dataset
        self.extractor = resolve_extractor(features, judge=judge, fid_weights=fid_weights, device=device)
        self.name = metric + self.extractor.suffix
        self.cache_dir = cache_dir
        self.ref_n = int(ref_n)
        self.batch_size = int(batch_size)
        self.kid_subset_size = int(kid_subset_size)
        self.kid_subsets = int(kid_subsets)

    def __call__(self, images: torch.Tensor, conditions: torch.Tensor | None = None) -> dict[str, Any]:
        from .accuracy import check_images

        check_images(images, size=images.shape[-1] if images.dim() == 4 else 64)
        if images.shape[0] < 2:
            raise FidError(f"{self.name} needs at least 2 generated images; got {images.shape[0]}")
        fake = _extract_batched(self.extractor, to_uint8(images), self.batch_size, f"{self.name} features")
        real = real_features(
            self.dataset,
            self.extractor,
            ref_n=self.ref_n,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
        )
        n = self.name
        out: dict[str, Any] = {}
        if self.metric == "fid":
            out[n] = frechet_distance(real, fake)
        else:
            out[n], out[f"{n}_std"], out[f"{n}_subset_size"] = kernel_distance(
                real, fake, self.kid_subset_size, self.kid_subsets
            )
        out[f"{n}_n"] = int(fake.shape[0])
        out[f"{n}_ref_n"] = int(real.shape[0])
        return out


def make_fid_evaluator(**options: Any) -> DistributionEvaluator:
    """FID against the reference dataset: Inception with local weights, else judge features (fid-judge)."""
    return DistributionEvaluator("fid", **_known(options))


def make_kid_evaluator(**options: Any) -> DistributionEvaluator:
    """KID against the reference dataset: Inception with local weights, else judge features (kid-judge)."""
    return DistributionEvaluator("kid", **_known(options))


_OPTIONS = (
    "dataset",
    "judge",
    "fid_weights",
    "features",
    "device",
    "cache_dir",
    "ref_n",
    "batch_size",
    "kid_subset_size",
    "kid_subsets",
)


def _known(options: dict[str, Any]) -> dict[str, Any]:
    # The harness passes every evaluator the same options; ignore the ones this one does not use.
    return {k: v for k, v in options.items() if k in _OPTIONS and v is not None}
