"""Train the judge architecture on (image, multi-hot) pairs: multi-label BCE, GPU-side augmentation.

Built for speed on one GPU: the whole uint8 dataset lives on the device, every augmentation runs
batched on the device, channels_last and bf16 autocast. Augmentations keep every label true: a
colour-preserving brightness scale (never hue), horizontal flips, small translations, random
gaussian blur, random down-then-up scaling (the course judge saw 32x32 renders upsampled to 64)
and slight pixel noise (generated images are never perfectly clean).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SIZE = 64


def dataset_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, 64, 64), float multi-hot conditions (N, L)) of a dataset.

    Uses ``dataset.images_uint8()`` and ``dataset.conditions_multi_hot()`` (or a ``conditions``
    tensor attribute) when the dataset offers them; otherwise reads every item.
    """
    import torch

    images = dataset.images_uint8() if callable(getattr(dataset, "images_uint8", None)) else None
    conditions = None
    if callable(getattr(dataset, "conditions_multi_hot", None)):
        conditions = dataset.conditions_multi_hot()
    elif isinstance(getattr(dataset, "conditions", None), torch.Tensor):
        conditions = dataset.conditions
    if images is None or conditions is None:
        items = [dataset[i] for i in range(len(dataset))]
        if images is None:
            images = torch.stack(
                [((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for x, _ in items]
            )
        if conditions is None:
            conditions = torch.stack([c.float() for _, c in items])
    images, conditions = torch.as_tensor(images), torch.as_tensor(conditions).float()
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"judge training needs uint8 images (N, 3, H, W); got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] != conditions.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {conditions.shape[0]} conditions")
    if tuple(images.shape[2:]) != (SIZE, SIZE):
        import torch.nn.functional as F

        images = (
            F.interpolate(images.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return images, conditions


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """(B, 2r+1) normalised 1-D gaussian kernels; sigma 0 gives the identity kernel."""
    import torch

    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-3).unsqueeze(1)
    k = torch.exp(-0.5 * (x / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Blur each image of x (B, C, H, W) with its own sigma (B,), separably, in one grouped conv."""
    import torch.nn.functional as F

    b, c, h, w = x.shape
    k = _gaussian_kernels(sigma, radius).to(x.dtype).repeat_interleave(c, dim=0)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def down_up(x: torch.Tensor, size: int) -> torch.Tensor:
    """Downscale to size x size (antialiased) then back up, as a low-resolution render would look."""
    import torch.nn.functional as F

    small = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def augment(x: torch.Tensor, gen: torch.Generator, rng: random.Random | None = None) -> torch.Tensor:
    """Label-preserving augmentation of a batch in [-1, 1] (B, 3, 64, 64), all on x's device.

    ``gen`` draws per-image choices on the device; ``rng`` the per-batch ones on the host (no sync).
    """
    import torch
    import torch.nn.functional as F

    b, dev = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=dev)

    # Brightness: one factor per image on all channels, so hues (the labels) stay put.
    x01 = (x + 1) / 2 * (0.85 + 0.3 * rand(b, 1, 1, 1))
    x = x01.clamp(0, 1) * 2 - 1
    flip = rand(b, 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(-1), x)
    # Translation up to 3 px and a slight zoom; the border is replicated, objects stay in view.
    shift = (rand(b, 2) * 2 - 1) * (3 / SIZE * 2)
    zoom = 1 + (rand(b) * 2 - 1) * 0.05
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = zoom, zoom, shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Down-up scaling for half the images; one size per batch (interpolate needs one size).
    rng = rng or random.Random()
    size = 32 if rng.random() < 0.5 else rng.randint(24, 48)
    x = torch.where(rand(b, 1, 1, 1) < 0.5, down_up(x, size), x)
    sigma = torch.where(rand(b) < 0.35, 0.3 + 1.2 * rand(b), torch.zeros(b, device=dev))
    x = gaussian_blur(x, sigma)
    noise = torch.where(rand(b, 1, 1, 1) < 0.3, 0.04 * rand(b, 1, 1, 1), torch.zeros(b, 1, 1, 1, device=dev))
    x = x + noise * torch.randn(x.shape, generator=gen, device=dev)
    return x.clamp(-1, 1)


def score_uint8_images(
    net: torch.nn.Module, images_u8: torch.Tensor, device: torch.device, transform=None, batch_size: int = 512
) -> torch.Tensor:
    """The judge's (N, 24) scores for uint8 images (N, 3, 64, 64), optionally transformed in [-1, 1]."""
    import torch

    from .judge import judge_features, judge_logits

    out = []
    net.eval()
    with torch.inference_mode():
        for s in range(0, images_u8.shape[0], batch_size):
            x = images_u8[s : s + batch_size].to(device, non_blocking=True).float() / 127.5 - 1
            if transform is not None:
                x = transform(x)
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(judge_logits(net, judge_features(net, x)).float().cpu())
    return torch.cat(out)


def heldout_metrics(
    net: torch.nn.Module, images_u8: torch.Tensor, conditions: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """Pooled accuracy on held-out images: clean, blurred (sigma 1), and down-up scaled (32 and 24)."""
    import torch

    from .accuracy import accuracy_by_objects, pooled_accuracy

    def blur(x):
        return gaussian_blur(x, torch.full((x.shape[0],), 1.0, device=x.device))

    variants = {
        "clean": None,
        "blur1": blur,
        "downup32": lambda x: down_up(x, 32),
        "downup24": lambda x: down_up(x, 24),
    }
    out: dict[str, Any] = {"heldout_n": int(images_u8.shape[0])}
    for name, transform in variants.items():
        scores = score_uint8_images(net, images_u8, device, transform)
        out[f"heldout_acc_{name}"] = pooled_accuracy(scores, conditions)
        if name == "clean":
            out["heldout_acc_by_objects"] = {
                str(k): v for k, v in accuracy_by_objects(scores, conditions).items()
            }
    return out


def save_judge(net: torch.nn.Module, out_path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save the judge's state_dict as fp16 safetensors, atomically."""
    import torch
    from safetensors.torch import save_file

    from bench.atomic import atomic_write

    state = {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in net.state_dict().items()
    }
    meta = {"format": "bench-judge", "arch": "torchvision resnet18, fc=Sequential(Linear(512,24),Sigmoid())"}
    meta.update(metadata or {})
    return atomic_write(out_path, lambda tmp: save_file(state, str(tmp), metadata=meta))


_SCENE = re.compile(r"^(.*)_\d+\.png$")  # CLEVR_train_002066_1.png: frame 1 of scene 002066


def heldout_split(files: Sequence[str] | None, n: int, fraction: float, seed: int) -> tuple[Any, Any]:
    """(held-out, training) indices: about ``fraction`` of the images, as whole scenes when the file
    names number frames of one scene (i-CLEVR's _0, _1, _2 share objects and pixels, so a random
    split of images held out frames whose scene it trained on and overstated the judge)."""
    import torch

    keys = (
        [m.group(1) if (m := _SCENE.match(str(f))) else str(f) for f in files]
        if files and len(files) == n
        else None
    )
    groups = list(dict.fromkeys(keys)) if keys is not None else list(range(n))
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, int(round(len(groups) * fraction))) if len(groups) > 1 else 0
    held = {groups[i] for i in perm[:n_held]}
    of = keys if keys is not None else list(range(n))
    held_idx = torch.tensor([i for i in range(n) if of[i] in held], dtype=torch.long)
    train_idx = torch.tensor([i for i in range(n) if of[i] not in held], dtype=torch.long)
    return held_idx, train_idx


def resume_state_path(out_path: str | Path) -> Path:
    """Where a stopped judge training keeps what ``--resume`` needs: ``judge.safetensors`` ->
    ``judge.resume.pt`` (fp32 weights, optimiser, random streams; removed once training ends)."""
    return Path(out_path).with_suffix(".resume.pt")


class JudgeResumeError(ValueError):
    """No state to resume from, a damaged one, or one of another training configuration."""


def require_resume_state(out_path: str | Path) -> Path:
    """The resume state of ``out_path``; JudgeResumeError when there is none."""
    path = resume_state_path(out_path)
    if not path.exists():
        raise JudgeResumeError(
            f"nothing to resume: {path} does not exist (it is written when a judge training is "
            "stopped by Ctrl-C, SIGTERM or --max-minutes, and removed when one finishes)"
        )
    return path


def _load_resume_state(out_path: str | Path, run_config: dict[str, Any]) -> dict[str, Any]:
    import torch

    path = require_resume_state(out_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise JudgeResumeError(f"{path} is damaged or not a judge training state ({exc})") from exc
    if not isinstance(state, dict) or not {"config", "net", "opt", "gen", "rng", "epochs_done"} <= set(state):
        raise JudgeResumeError(f"{path} is not a judge training state")
    differ = {k: (state["config"].get(k), v) for k, v in run_config.items() if state["config"].get(k) != v}
    if differ:
        details = ", ".join(f"{k}: stopped run {a!r}, this one {b!r}" for k, (a, b) in differ.items())
        raise JudgeResumeError(
            f"{path} was written by another judge training ({details}); resume with the same data and options"
        )
    return state


def train_judge(
    dataset: Any,
    out_path: str | Path,
    *,
    heldout: Any = None,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    device: str | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.05,
    time_limit_s: float | None = None,
    log: Callable[[str], Any] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the judge on ``dataset``, save fp16 safetensors at ``out_path`` plus a JSON sidecar.

    ``heldout``: a dataset of unseen renders to score on; without it, ``heldout_fraction`` of
    ``dataset`` is held out. ``time_limit_s`` stops training early (the LR schedule is per epoch
    count, so prefer fewer epochs to a tight limit). Returns the metrics written to the sidecar
    (``out_path`` with suffix ``.json``): held-out pooled accuracy clean / blurred / down-up scaled.

    Stopped early (Ctrl-C, SIGTERM, ``time_limit_s``), it also keeps :func:`resume_state_path`;
    ``resume=True`` goes on from there to ``epochs``, with the same weights, optimiser and random
    streams, so the judge is the one an unstopped run gives (tested). A finished run removes it.
    """
    import torch
    import torch.nn.functional as F

    from bench.atomic import atomic_write, atomic_write_json
    from bench.interrupt import StopRequest
    from bench.progress import Rate, progress

    from .judge import build_judge, judge_features, judge_logits

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    images, conditions = dataset_tensors(dataset)
    if heldout is not None:
        held_images, held_conditions = dataset_tensors(heldout)
    else:
        held_idx, train_idx = heldout_split(
            getattr(dataset, "files", None), images.shape[0], heldout_fraction, seed
        )
        held_images, held_conditions = images[held_idx], conditions[held_idx]
        images, conditions = images[train_idx], conditions[train_idx]
    if conditions.shape[1] != 24:
        raise ValueError(f"judge training needs 24-label conditions; got {conditions.shape[1]}")
    n = images.shape[0]
    log(
        f"judge training: {n} train / {held_images.shape[0]} held-out images, {epochs} epochs, batch {batch_size}, on {dev}"
    )

    # Everything on the device once: no data loader, no host round trips per batch.
    train_x = images.to(dev, non_blocking=True)
    train_y = conditions.to(dev, non_blocking=True)
    net = build_judge().to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    steps_per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    total = max(1, epochs * steps_per_epoch)
    warmup = max(1, min(total // 20, 500))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    gen = torch.Generator(device=dev).manual_seed(seed)
    rng = random.Random(seed)
    use_bf16 = dev.type == "cuda"
    rate, step, start, epochs_done = Rate(), 0, time.perf_counter(), 0
    state_path = resume_state_path(out_path)
    # What must match for a resumed run to be the run that was stopped.
    run_config = {
        "train_n": int(n), "heldout_n": int(held_images.shape[0]), "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "weight_decay": weight_decay, "seed": seed, "device_type": dev.type,
    }  # fmt: skip
    seconds_before, shown_loss = 0.0, float("nan")
    if resume:
        state = _load_resume_state(out_path, run_config)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        rng.setstate(state["rng"])
        epochs_done, step = int(state["epochs_done"]), int(state["step"])
        shown_loss, seconds_before = float(state["loss"]), float(state["train_seconds"])
        log(f"resuming from {state_path}: epoch {epochs_done} of {epochs} done")
    shown = {"loss": shown_loss}  # read by the progress bar's status line
    stopped_by = "epochs"  # or "interrupted" (Ctrl-C, SIGTERM), "max_minutes"
    # Ctrl-C or SIGTERM: the judge of the epochs so far is still judged and saved.
    stop = StopRequest("stopping after this epoch, then judging the held-out images and saving the judge")
    first_epoch = epochs_done
    with stop:
        for epoch in progress(
            range(epochs_done, epochs),
            "judge training",
            length=epochs - epochs_done,
            status=lambda: f"loss {shown['loss']:.4f} {rate.per_second:.0f} img/s",
        ):
            # The budget counts the training time of every run of this out_path, as bench train's does;
            # checked before an epoch, so a run whose last epoch ends past it still counts as finished.
            # A fresh run trains at least one epoch; a resumed one with its budget spent trains none.
            spent = seconds_before + time.perf_counter() - start
            if time_limit_s is not None and (resume or epoch > first_epoch) and spent >= time_limit_s:
                log(f"time limit {time_limit_s:.0f}s reached after epoch {epoch} ({spent:.0f}s trained)")
                stopped_by = "max_minutes"
                break
            net.train()
            order = torch.randperm(n, generator=gen, device=dev)
            for s in range(steps_per_epoch):
                idx = order[s * batch_size : (s + 1) * batch_size]
                x = augment(train_x[idx].float() / 127.5 - 1, gen, rng).contiguous(
                    memory_format=torch.channels_last
                )
                y = train_y[idx]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = judge_logits(net, judge_features(net, x))
                # BCE on logits (fp32): the same optimum as BCE after the Sigmoid head, numerically safer.
                loss = F.binary_cross_entropy_with_logits(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                rate.add(idx.shape[0])
            shown["loss"] = float(loss.detach())
            epochs_done = epoch + 1
            if stop.requested and epoch + 1 < epochs:  # a stop during the last epoch finishes the run
                log(f"{stop.requested}: stopped after epoch {epoch + 1}")
                stopped_by = "interrupted"
                break
    train_s = seconds_before + time.perf_counter() - start
    if stopped_by != "epochs":
        # torch.save (pickle) of plain tensors, numbers and tuples; read back with weights_only.
        state = {
            "config": run_config, "epochs_done": epochs_done, "step": step, "loss": shown["loss"],
            "train_seconds": train_s, "net": net.state_dict(), "opt": opt.state_dict(),
            "gen": gen.get_state(), "rng": rng.getstate(),
        }  # fmt: skip
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))
        log(
            f"training state kept in {state_path}: the same command with --resume goes on from epoch {epochs_done}"
        )

    metrics: dict[str, Any] = {
        "train_n": int(n),
        "epochs": epochs_done,
        "steps": step,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "final_loss": shown["loss"],
        "train_seconds": round(train_s, 1),
        "stopped_early": stopped_by != "epochs",
        "stopped_by": stopped_by,
        "device": str(dev),
    }
    if held_images.shape[0]:
        metrics.update(heldout_metrics(net, held_images, held_conditions, dev))
        log(
            "held-out pooled accuracy: "
            + ", ".join(
                f"{k[len('heldout_acc_') :]} {v:.4f}"
                for k, v in metrics.items()
                if k.startswith("heldout_acc_") and isinstance(v, float)
            )
        )
    net.eval()
    out_path = Path(out_path)
    save_judge(net, out_path, {"metrics": json.dumps(metrics)})
    atomic_write_json(out_path.with_suffix(".json"), metrics)
    log(f"judge saved to {out_path} (+ {out_path.with_suffix('.json').name})")
    if stopped_by == "epochs":
        state_path.unlink(missing_ok=True)  # finished: nothing left to resume
    return metrics
