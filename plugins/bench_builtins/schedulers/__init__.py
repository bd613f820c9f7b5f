"""Built-in schedulers plugin.

``cosine`` and ``linear`` define a training noise schedule (``factory.noise_schedule``) and
sample with ancestral DDPM on it. The samplers (``ddpm``, ``ddim``, ``dpm++2m``, ``unipc``,
``euler``, ``heun``) reuse the schedule the checkpoint was trained with: diffusers'
``from_config`` swaps the algorithm on the same betas. Every factory returns a NEW scheduler.
"""

from __future__ import annotations

from typing import Any

from bench import hookimpl

COSINE_SCHEDULE = {"beta_schedule": "squaredcos_cap_v2"}
LINEAR_SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}


def make_cosine(train_config: dict, **options: Any):
    """Ancestral DDPM on the cosine (squaredcos_cap_v2) noise schedule; trains with it too."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(train_config, **{**COSINE_SCHEDULE, **options})


def make_linear(train_config: dict, **options: Any):
    """Ancestral DDPM on linear betas 1e-4..0.02; trains with them too."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(train_config, **{**LINEAR_SCHEDULE, **options})


def make_ddpm(train_config: dict, **options: Any):
    """Ancestral DDPM on the checkpoint's trained schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(train_config, **options)


def make_ddim(train_config: dict, **options: Any):
    """DDIM (deterministic, eta=0) on the trained schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_config, **options)


def make_dpmpp_2m(train_config: dict, **options: Any):
    """DPM-Solver++ (2M, second order multistep) on the trained schedule."""
    from diffusers import DPMSolverMultistepScheduler

    defaults = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    return DPMSolverMultistepScheduler.from_config(train_config, **{**defaults, **options})


def make_unipc(train_config: dict, **options: Any):
    """UniPC multistep (bh2 predictor-corrector) on the trained schedule."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(train_config, **options)


def make_euler(train_config: dict, **options: Any):
    """Euler (Karras et al. sigma-space ODE, first order) on the trained schedule."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(train_config, **options)


def make_heun(train_config: dict, **options: Any):
    """Heun (second order, two model calls per step) on the trained schedule."""
    from diffusers import HeunDiscreteScheduler

    return HeunDiscreteScheduler.from_config(train_config, **options)


make_cosine.noise_schedule = dict(COSINE_SCHEDULE)
make_linear.noise_schedule = dict(LINEAR_SCHEDULE)
for _factory, _steps in (
    (make_cosine, 100),
    (make_linear, 100),
    (make_ddpm, 100),
    (make_ddim, 50),
    (make_dpmpp_2m, 25),
    (make_unipc, 25),
    (make_euler, 50),
    (make_heun, 25),
):
    _factory.default_steps = _steps


@hookimpl
def register_schedulers(register):
    register("cosine", make_cosine)
    register("linear", make_linear)
    register("ddpm", make_ddpm)
    register("ddim", make_ddim)
    register("dpm++2m", make_dpmpp_2m, aliases=("dpmpp2m", "dpm-solver++"))
    register("unipc", make_unipc)
    register("euler", make_euler)
    register("heun", make_heun)
