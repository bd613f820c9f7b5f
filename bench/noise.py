"""Training noise schedules: the config a model is trained with, and the sampling-time check.

The noise-schedule config is a plain dict that every diffusers scheduler's ``from_config``
accepts (a ``DDPMScheduler`` config). It is stored in every checkpoint, and every sampler is
built from it, so a checkpoint is always sampled on the betas it was trained with unless a
scheduler fixes betas of its own (``factory.noise_schedule``) and the user allows the mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.registry import Entry

ALLOW_MISMATCH_FLAG = "--allow-schedule-mismatch"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class ScheduleMismatchError(Exception):
    """A scheduler's own noise schedule differs from the one the checkpoint was trained with."""


def scheduler_factory(scheduler: str | Callable | Entry) -> tuple[str, Callable]:
    """The registered name and factory of a name (looked up in the loaded plugins), a registry
    entry (of whichever plugin set the caller holds) or a bare factory."""
    if isinstance(scheduler, Entry):
        return scheduler.name, scheduler.factory
    if callable(scheduler):
        return getattr(scheduler, "__name__", repr(scheduler)), scheduler
    from bench.plugins import get

    entry = get("schedulers", scheduler)
    return entry.name, entry.factory


def noise_config(
    scheduler: str | Callable,
    num_train_timesteps: int = 1000,
    *,
    timestep_spacing: str = "trailing",
    prediction_type: str = "epsilon",
) -> dict[str, Any]:
    """The training noise-schedule config for a scheduler that defines one (``cosine``, ``linear``).

    ``timestep_spacing="trailing"`` makes few-step samplers start from the last (pure-noise)
    timestep; every sampler built with ``from_config`` inherits it. ``prediction_type`` is what
    the network outputs: ``epsilon`` (the noise) or ``v_prediction`` (v = sqrt(a) eps - sqrt(1-a) x0);
    every diffusers sampler reads it from this config.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, not {prediction_type!r}"
        )
    name, factory = scheduler_factory(scheduler)
    schedule = getattr(factory, "noise_schedule", None)
    if not schedule:
        raise ValueError(
            f"scheduler {name!r} defines no training noise schedule; train with one that does "
            "(for example 'cosine' or 'linear') and sample with any scheduler afterwards"
        )
    from diffusers import DDPMScheduler

    config = DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        prediction_type=prediction_type,
        timestep_spacing=timestep_spacing,
        **schedule,
    ).config
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if not k.startswith("_")}


def describe(config: dict[str, Any]) -> str:
    """A short human name for a noise schedule, e.g. ``squaredcos_cap_v2 (1000 steps)``."""
    kind = config.get("beta_schedule", "?")
    if kind in ("linear", "scaled_linear"):
        kind = f"{kind} {config.get('beta_start')}..{config.get('beta_end')}"
    return f"{kind} ({config.get('num_train_timesteps', '?')} train timesteps)"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def _built_schedule(factory: Callable, train_config: dict[str, Any]) -> dict[str, Any] | None:
    """The betas a scheduler samples on, read off the scheduler its factory builds: a plugin may set
    them without declaring ``noise_schedule``. None when the factory fails or builds no scheduler
    (its cells report that)."""
    try:
        scheduler = factory(train_config)
    except Exception:  # noqa: BLE001 - the scheduler's own error belongs to its cells
        return None
    if not hasattr(scheduler, "step"):
        return None
    config = dict(getattr(scheduler, "config", None) or {})
    keys = ["beta_schedule", "num_train_timesteps", "trained_betas"]
    if config.get("beta_schedule") in ("linear", "scaled_linear"):
        keys += ["beta_start", "beta_end"]
    return {key: config[key] for key in keys if config.get(key) is not None}


def _differing(
    train_config: dict[str, Any], factory: Callable, built: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The keys where the schedule a factory declares, over the one its scheduler holds, differs."""
    schedule = {**built, **(getattr(factory, "noise_schedule", None) or {})}
    return {
        key: (train_config.get(key), value)
        for key, value in schedule.items()
        if not _same(train_config.get(key), value)
    }


def schedule_mismatch(train_config: dict[str, Any], scheduler: str | Callable) -> dict[str, tuple[Any, Any]]:
    """Keys where the scheduler's noise schedule differs from ``train_config`` (trained, asked): the
    schedule it declares (``factory.noise_schedule``) and the one the scheduler it builds holds."""
    _, factory = scheduler_factory(scheduler)
    return _differing(train_config, factory, _built_schedule(factory, train_config) or {})


def _schedule_takers(train_config: dict[str, Any]) -> list[str]:
    """The registered schedulers (plugins' included) that sample on ``train_config``'s betas; not
    one whose factory fails (its empty schedule matched every checkpoint, and it was offered)."""
    from bench.plugins import get_plugins

    takers = []
    for entry in get_plugins().registry("schedulers"):
        built = _built_schedule(entry.factory, train_config)
        if built is not None and not _differing(train_config, entry.factory, built):
            takers.append(entry.name)
    return takers


def check_schedule_compatible(
    train_config: dict[str, Any], scheduler: str | Callable | Entry, allow_mismatch: bool = False
) -> dict[str, tuple[Any, Any]]:
    """Raise ``ScheduleMismatchError`` if ``scheduler`` would sample on other betas than trained.

    Returns the mismatched keys (empty when compatible, or when ``allow_mismatch`` lets them by).
    """
    name, factory = scheduler_factory(scheduler)
    diff = schedule_mismatch(train_config, factory)
    if diff and not allow_mismatch:
        asked = {**train_config, **{key: a for key, (_, a) in diff.items()}}
        details = ", ".join(f"{k}: trained {t!r}, scheduler {a!r}" for k, (t, a) in diff.items())
        raise ScheduleMismatchError(
            f"the checkpoint was trained with the noise schedule {describe(train_config)}, but "
            f"scheduler {name!r} samples with {describe(asked)} ({details}). Use a sampler that "
            f"reuses the trained schedule ({', '.join(_schedule_takers(train_config))}), or pass "
            f"{ALLOW_MISMATCH_FLAG} to sample on the other schedule anyway"
        )
    return diff
