"""--draw-noise-ahead (bench/step_noise.py): DDPM's per-image step noise drawn before the model call
(on a side stream on CUDA) gives the same images bit for bit, and is really what the step used."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.noise import noise_config
from bench.plugins import get
from bench.sampling import SamplingOptions, sample
from bench.step_noise import StepNoise, StepNoiseError, draws_known
from bench_builtins.models.ddpm_unet import make_ddpm_unet

STEPS = 4


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_ddpm_unet("tiny").eval()


def conditions(n: int) -> torch.Tensor:
    c = torch.zeros(n, 24)
    c[torch.arange(n), torch.arange(n) % 24] = 1
    return c


def _images(
    model: torch.nn.Module, scheduler: str, ahead: bool, device: str = "cpu", spacing: str | None = None
) -> torch.Tensor:
    options = SamplingOptions(
        dtype="fp32", channels_last=False, compile=False, batch_size=2, draw_noise_ahead=ahead
    )
    return sample(
        model.to(device),
        scheduler,
        conditions(5),  # three chunks of 2, the last padded
        train_config=noise_config("cosine", 1000),
        steps=STEPS,
        seed=3,
        device=device,
        options=options,
        scheduler_options={"timestep_spacing": spacing} if spacing else None,
    ).images


@pytest.mark.parametrize("spacing, last_timestep", [("trailing", 249), ("leading", 0)])
def test_noise_drawn_ahead_gives_the_same_images_and_is_what_the_step_used(
    model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, spacing: str, last_timestep: int
) -> None:
    """The project's DDPM ends at t = 249 of 4 steps (trailing spacing) and draws in every step;
    leading spacing ends at t = 0, where DDPM draws nothing, so nothing may be drawn ahead there."""
    handed = []
    take = StepNoise.take

    def counting_take(self, shape, generator, dtype):
        drawn = take(self, shape, generator, dtype)
        handed.append(drawn is not None)
        return drawn

    monkeypatch.setattr(StepNoise, "take", counting_take)
    scheduler = get("schedulers", "cosine").factory(noise_config("cosine", 1000), timestep_spacing=spacing)
    scheduler.set_timesteps(STEPS)
    assert int(scheduler.timesteps[-1]) == last_timestep
    plain = _images(model, "cosine", ahead=False, spacing=spacing)
    assert handed == []  # off: nothing drawn ahead
    ahead = _images(model, "cosine", ahead=True, spacing=spacing)
    assert torch.equal(ahead, plain)
    # Each step with t > 0 of each of the three chunks took the noise drawn for it.
    draws = sum(int(t) > 0 for t in scheduler.timesteps)
    assert draws == (STEPS if last_timestep else STEPS - 1)
    assert handed == [True] * (3 * draws)


def test_diffusers_own_draw_is_back_after_sampling(model: torch.nn.Module) -> None:
    scheduler = get("schedulers", "cosine").factory(noise_config("cosine", 1000))
    module = sys.modules[type(scheduler).step.__module__]
    before = module.randn_tensor
    _images(model, "cosine", ahead=True)
    assert module.randn_tensor is before


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++2m"])
def test_other_schedulers_are_left_to_their_own_draws(model: torch.nn.Module, name: str) -> None:
    """Only DDPM's draws are known; the switch changes nothing for the others."""
    assert not draws_known(get("schedulers", name).factory(noise_config("cosine", 1000)))
    assert torch.equal(_images(model, name, ahead=True), _images(model, name, ahead=False))


def test_a_request_other_than_the_drawn_noise_is_refused() -> None:
    """Its generators have already moved on: diffusers' own draw would give other values."""
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    noise = StepNoise(generators, (3, 8, 8), torch.device("cpu"))
    assert noise.take((2, 3, 8, 8), generators, torch.float32) is None  # nothing drawn yet
    assert noise.take((2, 3, 8, 8), [*generators], torch.float32) is None  # not our generators
    noise.draw()
    with pytest.raises(StepNoiseError, match="shape"):
        noise.take((2, 3, 4, 4), generators, torch.float32)
    with pytest.raises(StepNoiseError, match="never asked for"):
        noise.draw()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_drawn_on_a_side_stream_gives_the_same_images_on_cuda(model: torch.nn.Module) -> None:
    assert torch.equal(_images(model, "cosine", True, "cuda"), _images(model, "cosine", False, "cuda"))
