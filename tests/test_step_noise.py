"""DDPM's per-image noise drawn a step ahead (bench/step_noise.py): the same images, every draw used."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.noise import noise_config
from bench.sampling import SamplingOptions, sample
from bench.step_noise import StepNoise, StepNoiseError, draws_at, takes_part
from bench_builtins.models.ddpm_unet import make_ddpm_unet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_ddpm_unet("tiny").eval()


def conditions(n: int) -> torch.Tensor:
    c = torch.zeros(n, 24)
    c[torch.arange(n), torch.arange(n) % 24] = 1
    return c


def _sampled(model, scheduler, config, steps, ahead, device="cpu", batch=2, n=3):
    options = SamplingOptions(dtype="fp32", batch_size=batch, noise_ahead=ahead, compile=False)
    return sample(
        model, scheduler, conditions(n), train_config=config, steps=steps, device=device, options=options
    ).images


def _counting_draws(monkeypatch) -> list[int]:
    """Each StepNoise.draw call, counted."""
    calls: list[int] = []
    draw = StepNoise.draw

    def counted(self):
        calls.append(1)
        return draw(self)

    monkeypatch.setattr(StepNoise, "draw", counted)
    return calls


@pytest.mark.parametrize(
    ("train_steps", "steps", "draws_per_chunk"),
    [(1000, 6, 6), (10, 10, 9)],  # trailing spacing: 999..9 all draw; 9..0 draws at all but t=0
)
def test_same_images_with_noise_drawn_ahead(model, monkeypatch, train_steps, steps, draws_per_chunk) -> None:
    """Three images in chunks of 2 (the last padded): the images equal the in-line draws' exactly,
    and every step that draws took its noise from StepNoise (had one draw gone to the generators
    as well, every later step's noise would have shifted)."""
    config = noise_config("cosine", train_steps)
    plain = _sampled(model, "cosine", config, steps, ahead=False)
    calls = _counting_draws(monkeypatch)
    ahead = _sampled(model, "cosine", config, steps, ahead=True)
    assert len(calls) == 2 * draws_per_chunk
    assert torch.equal(plain, ahead)


def test_noise_ahead_changes_nothing_for_other_schedulers(model, monkeypatch) -> None:
    """DDIM draws nothing (no generators); a DDPMScheduler subclass may draw otherwise: neither
    takes part, and both sample as without the switch."""
    from diffusers import DDPMScheduler

    class OwnDDPM(DDPMScheduler):
        pass

    def own(train_config, **options):
        return OwnDDPM.from_config(train_config, **options)

    own.noise_schedule = {"beta_schedule": "squaredcos_cap_v2"}
    config = noise_config("cosine", 1000)
    calls = _counting_draws(monkeypatch)
    for scheduler in ("ddim", own):
        assert torch.equal(
            _sampled(model, scheduler, config, 4, ahead=False),
            _sampled(model, scheduler, config, 4, ahead=True),
        )
    assert calls == []
    assert not takes_part(OwnDDPM.from_config(config)) and takes_part(DDPMScheduler.from_config(config))


def _scheduler_and_noise(n: int = 2) -> tuple[object, StepNoise]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(noise_config("cosine", 1000))
    scheduler.set_timesteps(4)
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    return scheduler, StepNoise(generators, (3, 4, 4), torch.device("cpu"))


def test_a_draw_out_of_step_raises_and_restores_diffusers() -> None:
    """A step that draws where nothing was drawn ahead, or draws nothing where noise waits, or asks
    for another shape: a StepNoiseError each time, and diffusers' own randn_tensor back after."""
    scheduler, noise = _scheduler_and_noise()
    module = sys.modules[type(scheduler).__module__]
    original = module.randn_tensor
    x, eps = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    t = scheduler.timesteps[0]
    with pytest.raises(StepNoiseError, match="none was drawn ahead"):
        with noise.served(scheduler, expected=True):
            scheduler.step(eps, t, x, generator=noise.generators)
    assert module.randn_tensor is original
    noise.draw()
    with pytest.raises(StepNoiseError, match="drew no noise"):
        with noise.served(scheduler, expected=True):
            pass
    with pytest.raises(StepNoiseError, match="shape"):
        with noise.served(scheduler, expected=True):
            scheduler.step(torch.zeros(2, 3, 2, 2), t, torch.zeros(2, 3, 2, 2), generator=noise.generators)
    assert module.randn_tensor is original


def test_two_steps_ahead_at_most() -> None:
    """Two buffers: a third draw before a hand-over would overwrite noise not yet used."""
    _, noise = _scheduler_and_noise()
    noise.draw()
    noise.draw()
    with pytest.raises(StepNoiseError, match="three steps"):
        noise.draw()


def test_draws_at_matches_ddpm() -> None:
    assert draws_at(1.0) and draws_at(999) and not draws_at(0) and not draws_at(torch.tensor(0))


def test_on_by_default_only_when_compiling_on_cuda() -> None:
    assert SamplingOptions().resolved("cuda").noise_ahead is True
    assert SamplingOptions(compile=False).resolved("cuda").noise_ahead is False
    assert SamplingOptions(noise_ahead=False).resolved("cuda").noise_ahead is False
    assert SamplingOptions().resolved("cpu").noise_ahead is False
    assert SamplingOptions(noise_ahead=True).resolved("cuda").noise_ahead is True
    assert SamplingOptions.plain().noise_ahead is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs CUDA")
def test_same_images_on_cuda_with_the_side_stream(monkeypatch) -> None:
    """On a GPU the draws run on a side stream: the same images as the draws in line."""
    torch.manual_seed(0)
    model = make_ddpm_unet("tiny").eval().cuda()
    config = noise_config("cosine", 1000)
    plain = _sampled(model, "cosine", config, 20, ahead=False, device="cuda", batch=8, n=16)
    calls = _counting_draws(monkeypatch)
    ahead = _sampled(model, "cosine", config, 20, ahead=True, device="cuda", batch=8, n=16)
    assert len(calls) == 2 * 20
    assert torch.equal(plain, ahead)
