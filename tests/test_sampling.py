"""The sampling loop: every scheduler, NFE, one-batch guidance, seeds, frames, the fast path."""

from __future__ import annotations

import pytest
import torch
from image_checks import assert_same_images_across_batch_shapes

from bench.noise import ScheduleMismatchError, check_schedule_compatible, noise_config
from bench.plugins import get, get_plugins
from bench.sampling import (
    SamplingOptions,
    SamplingOptionsError,
    chunk_size,
    cpu_has_bf16_matmul,
    plain_reference_loop,
    resolve_steps,
    sample,
)
from bench_builtins.models.ddpm_unet import make_ddpm_unet

torch.set_num_threads(1)

SCHEDULERS = ["cosine", "linear", "ddpm", "ddim", "dpm++2m", "unipc", "euler", "heun"]
PLAIN = SamplingOptions.plain()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_ddpm_unet("tiny").eval()


@pytest.fixture(scope="module")
def cosine() -> dict:
    return noise_config("cosine", 1000)


def conditions(n: int) -> torch.Tensor:
    c = torch.zeros(n, 24)
    c[torch.arange(n), torch.arange(n) % 24] = 1
    return c


def test_scheduler_plugins_registered() -> None:
    """The register_schedulers hook: every built-in, the alias, fresh objects, noise schedules."""
    names = {e.name for e in get_plugins().registry("schedulers")}
    assert set(SCHEDULERS) <= names
    assert get("schedulers", "dpmpp2m").name == "dpm++2m"
    factory = get("schedulers", "dpm++2m").factory
    config = noise_config("cosine", 100)
    a, b = factory(config), factory(config)
    assert a is not b and a.config.algorithm_type == "dpmsolver++" and a.config.solver_order == 2
    assert get("schedulers", "cosine").factory.noise_schedule == {"beta_schedule": "squaredcos_cap_v2"}
    assert get("schedulers", "linear").factory.noise_schedule["beta_schedule"] == "linear"
    assert get("schedulers", "cosine").factory.default_steps == 100
    assert get("schedulers", "ddim").factory(config).config.beta_schedule == "squaredcos_cap_v2"


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_samples(model: torch.nn.Module, name: str) -> None:
    train_config = noise_config("linear" if name == "linear" else "cosine", 1000)
    result = sample(model, name, conditions(3), train_config=train_config, steps=2, options=PLAIN)
    assert result.images.shape == (3, 3, 64, 64) and result.images.dtype == torch.float32
    assert result.images.min() >= -1 and result.images.max() <= 1
    assert result.nfe == (3 if name == "heun" else 2)  # Heun: 2 calls a step, the last step first order
    assert result.seconds > 0 and result.peak_memory_mb is None


@pytest.mark.parametrize("kind", ["DEISMultistepScheduler", "UniPCSubclass"])
def test_a_plugin_scheduler_whose_step_takes_no_generator_samples(model: torch.nn.Module, kind: str) -> None:
    """Only a fixed list of class names went without generator=: DEIS, PNDM, KDPM2 or a subclass
    of UniPC failed every cell with a TypeError. Now the step's own signature decides."""
    import diffusers

    class UniPCSubclass(diffusers.UniPCMultistepScheduler):
        pass

    cls = UniPCSubclass if kind == "UniPCSubclass" else getattr(diffusers, kind)

    def factory(train_config: dict, **_options):
        return cls.from_config(train_config)

    train_config = noise_config("cosine", 1000)
    result = sample(model, factory, conditions(2), train_config=train_config, steps=3, options=PLAIN)
    assert result.images.shape == (2, 3, 64, 64) and torch.isfinite(result.images).all()


class CountingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.inner(x, t, c)


def test_guidance_is_one_doubled_batch(model: torch.nn.Module, cosine: dict) -> None:
    counting = CountingModel(model)
    result = sample(
        counting, "ddim", conditions(5), train_config=cosine, steps=3, guidance=3.0, options=PLAIN
    )
    assert counting.batches == [10, 10, 10] and result.nfe == 3
    counting.batches.clear()
    sample(counting, "ddim", conditions(5), train_config=cosine, steps=3, guidance=1.0, options=PLAIN)
    assert counting.batches == [5, 5, 5]  # guidance off: no doubling
    counting.batches.clear()
    # Chunks of a fixed shape: 5 images in chunks of 2 -> 3 chunks of 2 (the last one padded).
    sample(counting, "ddim", conditions(5), train_config=cosine, steps=1, options=SamplingOptions.plain(2))
    assert counting.batches == [2, 2, 2]


def test_guidance_interval_limits_the_doubled_batch(model: torch.nn.Module, cosine: dict) -> None:
    """DDPM at 4 steps visits t = 999, 749, 499, 249: an interval guides exactly the steps in it."""
    cond = conditions(5)
    run = dict(train_config=cosine, steps=4, seed=3, options=PLAIN)  # stochastic DDPM steps
    guided = sample(model, "ddpm", cond, guidance=3.0, **run)
    unguided = sample(model, "ddpm", cond, guidance=1.0, **run)
    assert guided.guidance_interval is None and guided.extra["guided_nfe"] == 4
    for everywhere in [(0, 999), (249, 999), (0, 1000)]:  # every step inside: plain guidance
        same = sample(model, "ddpm", cond, guidance=3.0, guidance_interval=everywhere, **run)
        assert torch.equal(same.images, guided.images), everywhere
    for nowhere in [(500, 700), (1000, 2000), (0, 248)]:  # no step inside: no guidance at all
        none = sample(model, "ddpm", cond, guidance=3.0, guidance_interval=nowhere, **run)
        assert torch.equal(none.images, unguided.images), nowhere
        assert none.extra["guided_nfe"] == 0 and none.nfe == 4

    counting = CountingModel(model)
    part = sample(counting, "ddpm", cond, guidance=3.0, guidance_interval=(600, 1000), **run)
    assert counting.batches == [10, 10, 5, 5]  # 999 and 749 doubled, 499 and 249 single
    assert part.nfe == 4 and part.extra["guided_nfe"] == 2
    assert part.guidance_interval == (600.0, 1000.0) and part.guidance == 3.0
    assert not torch.allclose(part.images, guided.images)
    assert not torch.allclose(part.images, unguided.images)
    counting.batches.clear()
    # Bounds are inclusive; Heun visits 749 and 499 twice each (7 model calls for 4 steps).
    heun = sample(counting, "heun", cond, guidance=3.0, guidance_interval=(499, 749), **run)
    assert counting.batches == [5, 10, 10, 10, 10, 5, 5] and heun.extra["guided_nfe"] == 4
    # Without guidance an interval changes nothing and is not recorded.
    off = sample(model, "ddpm", cond, guidance=1.0, guidance_interval=(600, 1000), **run)
    assert torch.equal(off.images, unguided.images) and off.guidance_interval is None


@pytest.mark.parametrize("bad", [(800, 300), (-5, 100), (1, 2, 3), (0, float("nan")), "300,1000"])
def test_guidance_interval_must_be_two_ordered_timesteps(model: torch.nn.Module, cosine: dict, bad) -> None:
    with pytest.raises(ValueError, match="guidance interval"):
        sample(model, "ddim", conditions(1), train_config=cosine, steps=1, guidance=3.0,
               guidance_interval=bad, options=PLAIN)  # fmt: skip


def test_compile_warm_up_covers_both_batch_shapes(
    model: torch.nn.Module, cosine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an interval the loop runs the doubled and the single batch: both are compiled (and
    captured, with CUDA graphs) before the clock starts. torch.compile itself is stubbed out here."""
    import bench.sampling

    monkeypatch.setattr(bench.sampling, "_compiled", lambda module, options, variant="": module)
    counting = CountingModel(model)
    options = SamplingOptions(dtype="fp32", channels_last=False, compile=True, batch_size=5)
    result = sample(counting, "ddim", conditions(5), train_config=cosine, steps=4, guidance=3.0,
                    guidance_interval=(600, 1000), options=options)  # fmt: skip
    assert counting.batches[:6] == [10, 10, 10, 5, 5, 5]  # warm-up: three calls per shape
    assert counting.batches[6:] == [10, 10, 5, 5] and result.nfe == 4 and result.extra["guided_nfe"] == 2
    assert result.extra["warmup_calls"] == 6  # what a profile of the whole call also sees
    counting.batches.clear()
    again = sample(
        counting, "ddim", conditions(5), train_config=cosine, steps=4, guidance=3.0, options=options
    )
    assert counting.batches == [10] * 7 and again.extra["warmup_calls"] == 3  # no interval: one shape


class _OneConv(torch.nn.Module):
    """A model torch.compile traces in a moment: what its guards check does not depend on the size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + 1e-3 * t.float()[:, None, None, None] + 0 * c.sum(1)[:, None, None, None]


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_compile_warm_up_leaves_nothing_to_compile_on_the_clock(
    cosine: dict, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up's dummies must pass torch.compile's guards as the loop's inputs do: a long dummy
    timestep against Euler's float ones, or conditions sliced from a tensor made outside inference
    mode (another dispatch key), compiled the model again, and captured its CUDA graph, on the clock."""
    from torch._dynamo.testing import CompileCounter

    import bench.sampling

    counter = CompileCounter()
    monkeypatch.setattr(
        bench.sampling,
        "_compiled",
        lambda module, options, variant="": torch.compile(module, backend=counter, dynamic=False),
    )
    at_loop: list[int] = []
    run_chunk = bench.sampling._run_chunk

    def counted(*args, **kwargs):
        at_loop.append(counter.frame_count)
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(bench.sampling, "_run_chunk", counted)
    torch._dynamo.reset()
    options = SamplingOptions(dtype="fp32", channels_last=False, compile=True, batch_size=2)
    # 3 images in chunks of 2: a full chunk and a padded one
    sample(_OneConv().eval(), scheduler, conditions(3), train_config=cosine, steps=2,
           options=options, image_shape=(3, 8, 8))  # fmt: skip
    torch._dynamo.reset()
    assert at_loop[0] >= 1 and counter.frame_count == at_loop[0]  # compiled in the warm-up only


def test_compiled_sampling_of_no_conditions_makes_no_images(
    model: torch.nn.Module, cosine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process of a launch with more processes than conditions samples an empty shard: the
    compiled path (the GPU default) made its warm-up batch from a first row that is not there."""
    import bench.sampling

    monkeypatch.setattr(bench.sampling, "_compiled", lambda module, options, variant="": module)
    options = SamplingOptions(dtype="fp32", channels_last=False, compile=True)
    result = sample(model, "ddim", conditions(0), train_config=cosine, steps=1, options=options)
    assert result.images.shape == (0, 3, 64, 64) and result.warmup_seconds == 0.0


def test_seeds_are_per_image(model: torch.nn.Module, cosine: dict) -> None:
    cond = conditions(5)
    a = sample(model, "ddpm", cond, train_config=cosine, steps=3, seed=1, options=PLAIN)
    b = sample(model, "ddpm", cond, train_config=cosine, steps=3, seed=1, options=PLAIN)
    c = sample(model, "ddpm", cond, train_config=cosine, steps=3, seed=2, options=PLAIN)
    d = sample(model, "ddpm", cond, train_config=cosine, steps=3, seed=1, options=SamplingOptions.plain(2))
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert_same_images_across_batch_shapes(a.images, d.images)  # independent of batch size


def test_frames_run_from_noise_to_image(model: torch.nn.Module, cosine: dict) -> None:
    result = sample(
        model, "ddim", conditions(2), train_config=cosine, steps=10, record_frames=8, options=PLAIN
    )
    assert result.frames.shape == (9, 2, 3, 64, 64)
    assert 0.8 < result.frames[0].std() < 1.2  # pure noise
    assert torch.equal(result.frames[-1], result.images)


def test_fast_path_matches_plain_fp32(model: torch.nn.Module, cosine: dict) -> None:
    fast = SamplingOptions(dtype="bf16", channels_last=True, compile=False, batch_size=4)
    x, t, c = torch.randn(4, 3, 64, 64), torch.tensor([10, 300, 600, 999]), conditions(4)
    with torch.no_grad():
        ref = model(x, t, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last), t, c).float()
    torch.testing.assert_close(low, ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)
    # Whole loop on a smooth sampler: same images within bf16 tolerance.
    linear = noise_config("linear", 1000)
    a = sample(model, "dpm++2m", conditions(4), train_config=linear, steps=4, options=PLAIN)
    b = sample(model, "dpm++2m", conditions(4), train_config=linear, steps=4, options=fast)
    model.to(memory_format=torch.contiguous_format)
    assert b.options.dtype == "bf16" and b.options.channels_last
    assert (a.images - b.images).abs().mean() < 0.05


def test_plain_reference_loop_matches_sample(model: torch.nn.Module, cosine: dict) -> None:
    linear = noise_config("linear", 1000)
    a = plain_reference_loop(model, "ddim", conditions(3), train_config=linear, steps=3, guidance=2.0)
    b = sample(model, "ddim", conditions(3), train_config=linear, steps=3, guidance=2.0, options=PLAIN)
    torch.testing.assert_close(a.images, b.images, atol=1e-3, rtol=0)
    assert a.options.batch_size == 1 and a.options.dtype == "fp32" and not a.options.compile


def test_schedule_mismatch_refused_unless_allowed(model: torch.nn.Module, cosine: dict) -> None:
    with pytest.raises(ScheduleMismatchError) as error:
        sample(model, "linear", conditions(1), train_config=cosine, steps=1, options=PLAIN)
    message = str(error.value)
    assert "squaredcos_cap_v2" in message and "linear" in message and "--allow-schedule-mismatch" in message
    assert "scheduler 'linear' samples" in message  # its registered name, not its factory's
    result = sample(
        model,
        "linear",
        conditions(1),
        train_config=cosine,
        steps=1,
        options=PLAIN,
        allow_schedule_mismatch=True,
    )
    assert result.images.shape == (1, 3, 64, 64)
    assert check_schedule_compatible(cosine, "cosine") == {}
    assert check_schedule_compatible(cosine, "ddim") == {}  # samplers reuse the trained schedule
    assert check_schedule_compatible(noise_config("linear", 100), "linear") == {}


def test_a_scheduler_that_builds_other_betas_without_declaring_them_is_refused() -> None:
    """A plugin factory that sets its own betas and declares no noise_schedule is read off the
    scheduler it builds, so it cannot sample a cosine-trained model on linear betas unnoticed."""
    from diffusers import DDPMScheduler

    def sneaky_linear(train_config, **options):
        return DDPMScheduler(**{**train_config, "beta_schedule": "linear"})

    def honest(train_config, **options):
        return DDPMScheduler(**train_config)

    cosine = noise_config("cosine")
    with pytest.raises(
        ScheduleMismatchError, match=r"beta_schedule: trained 'squaredcos_cap_v2', scheduler 'linear'"
    ):
        check_schedule_compatible(cosine, sneaky_linear)
    assert check_schedule_compatible(cosine, honest) == {}
    assert check_schedule_compatible(noise_config("linear"), sneaky_linear) == {}


def test_noise_config_needs_a_schedule() -> None:
    with pytest.raises(ValueError, match="defines no training noise schedule"):
        noise_config("ddim")
    assert noise_config("cosine", 100)["num_train_timesteps"] == 100


def test_options_resolve_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpu = SamplingOptions().resolved("cpu")
    assert cpu.dtype == "fp32" and not cpu.compile and not cpu.cuda_graphs and cpu.batch_size == 32
    assert SamplingOptions().resolved("cpu", guided=True).batch_size == 16  # guidance doubles the batch
    assert SamplingOptions(batch_size=7).resolved("cpu", guided=True).batch_size == 7
    # CUDA: a model batch of 512 either way (a guided chunk is doubled inside)
    assert SamplingOptions(compile=False).resolved("cuda").batch_size == 512
    assert SamplingOptions(compile=False).resolved("cuda", guided=True).batch_size == 256
    # few-token attention by sums: where sampling compiles on CUDA, unless switched off
    assert SamplingOptions().resolved("cuda").attention_by_sums and not cpu.attention_by_sums
    assert not SamplingOptions(compile=False).resolved("cuda").attention_by_sums
    assert not SamplingOptions(attention_by_sums=False).resolved("cuda").attention_by_sums
    assert SamplingOptions(attention_by_sums=True).resolved("cpu").attention_by_sums
    # GroupNorm from channel statistics: the same, and not where views are asked for
    assert (
        SamplingOptions().resolved("cuda").group_norm_by_channel_stats and not cpu.group_norm_by_channel_stats
    )
    assert not SamplingOptions(compile=False).resolved("cuda").group_norm_by_channel_stats
    assert not SamplingOptions(group_norm_by_channel_stats=False).resolved("cuda").group_norm_by_channel_stats
    views = SamplingOptions(group_norm_by_views=True).resolved("cuda")
    assert views.group_norm_by_views and not views.group_norm_by_channel_stats
    assert SamplingOptions(group_norm_by_channel_stats=True).resolved("cpu").group_norm_by_channel_stats
    with pytest.raises(ValueError, match="at least 1"):
        SamplingOptions(batch_size=0).resolved("cpu")
    with pytest.raises(ValueError, match="bf16"):
        SamplingOptions(dtype="fp16").resolved("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        SamplingOptions(cuda_graphs=True, compile=True).resolved("cpu")


def test_cpu_dtype_default_follows_bf16_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast by default only where the CPU has AMX; --dtype always wins; CUDA is bf16."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert SamplingOptions().resolved("cpu").dtype == "bf16"
    assert SamplingOptions(dtype="fp32").resolved("cpu").dtype == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert SamplingOptions().resolved("cpu").dtype == "fp32"
    assert SamplingOptions(dtype="bf16").resolved("cpu").dtype == "bf16"
    assert SamplingOptions(compile=False).resolved("cuda").dtype == "bf16"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the private check
    assert cpu_has_bf16_matmul() is False


def test_images_grid_and_strip(tmp_path, model: torch.nn.Module, cosine: dict) -> None:
    import numpy as np
    import torchvision
    from PIL import Image

    from bench.images import save_denoising_strip, save_grid, save_images

    images = torch.rand(10, 3, 64, 64) * 2 - 1
    paths = save_images(images, tmp_path / "set")
    assert [p.name for p in paths] == [f"{i}.png" for i in range(10)]
    assert Image.open(paths[0]).size == (64, 64)
    save_grid(images, tmp_path / "grid.png")
    torchvision.utils.save_image((images + 1) / 2, tmp_path / "tv.png", nrow=8)
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "grid.png")), np.asarray(Image.open(tmp_path / "tv.png"))
    )
    result = sample(
        model, "ddim", conditions(1), train_config=cosine, steps=8, record_frames=8, options=PLAIN
    )
    strip = save_denoising_strip(result.frames[:, 0], tmp_path / "strip.png")
    assert Image.open(strip).size == (9 * 66 + 2, 68)  # 9 frames in one row


class OracleModel(torch.nn.Module):
    """The exact noise predictor for data that is one image: predicts what the config asks for."""

    def __init__(self, target: torch.Tensor, train_config: dict, prediction_type: str) -> None:
        super().__init__()
        from diffusers import DDPMScheduler

        self.anchor = torch.nn.Parameter(torch.zeros(()))  # sample() reads the device from it
        self.config = {"sample_size": target.shape[-1], "in_channels": target.shape[0]}
        self.target = target
        self.alphas = DDPMScheduler.from_config(train_config).alphas_cumprod
        self.prediction_type = prediction_type

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a = self.alphas[t.long().cpu()].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        return (
            a.sqrt() * eps - (1 - a).sqrt() * self.target if self.prediction_type == "v_prediction" else eps
        )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["cosine", "ddim", "dpm++2m", "unipc"])
def test_samplers_read_the_prediction_type(name: str, prediction_type: str) -> None:
    """An exact model of one image must give that image back, whatever it predicts."""
    train_config = noise_config("cosine", 1000, prediction_type=prediction_type)
    target = torch.linspace(-0.8, 0.8, 3 * 8 * 8).reshape(3, 8, 8)
    oracle = OracleModel(target, train_config, prediction_type)
    result = sample(oracle, name, conditions(2), train_config=train_config, steps=20, options=PLAIN)
    assert (result.images - target).abs().max() < 1e-3
    # Read as the other target, the same outputs miss it (by 0.006 to 1.7, measured): the config decides.
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    wrong = sample(
        oracle,
        name,
        conditions(2),
        train_config={**train_config, "prediction_type": other},
        steps=20,
        options=PLAIN,
    )
    assert (wrong.images - target).abs().max() > 3e-3


def test_speed_switches_resolve_on_cpu() -> None:
    """cudnn.benchmark is CUDA only (an explicit True on the CPU resolves to False); autotune is
    off by default and is a compile mode, so it is refused without compile."""
    cpu = SamplingOptions().resolved("cpu")
    assert cpu.cudnn_benchmark is False and cpu.autotune is False
    assert SamplingOptions(cudnn_benchmark=True).resolved("cpu").cudnn_benchmark is False
    assert SamplingOptions(autotune=True, compile=True).resolved("cpu").autotune is True
    with pytest.raises(ValueError, match="compile"):
        SamplingOptions(autotune=True, compile=False).resolved("cpu")
    with pytest.raises(ValueError, match="compile"):
        SamplingOptions(autotune=True).resolved("cpu")  # compile defaults to off on the CPU
    assert cpu.tune_kernels is False
    with pytest.raises(ValueError, match="needs compile"):
        SamplingOptions(tune_kernels=True).resolved("cpu")
    assert cpu.freeze_weights is False and SamplingOptions().resolved("cuda").freeze_weights is False
    with pytest.raises(SamplingOptionsError, match="freeze_weights .* needs compile"):
        SamplingOptions(freeze_weights=True, compile=False).resolved("cuda")
    plain = SamplingOptions.plain()
    assert plain.cudnn_benchmark is False and plain.autotune is False and plain.tune_kernels is False


def test_cuda_graphs_need_compile() -> None:
    """CUDA graphs capture the compiled forward: asked for without compile on a GPU they were
    accepted, ran eager and were recorded as on (a results row and its report label said "graphs").
    The GPU default still turns them off with compile."""
    with pytest.raises(SamplingOptionsError, match="cuda_graphs needs compile"):
        SamplingOptions(compile=False, cuda_graphs=True).resolved("cuda")
    assert SamplingOptions(compile=False).resolved("cuda").cuda_graphs is False
    assert SamplingOptions().resolved("cuda").cuda_graphs is True


@pytest.mark.parametrize(
    "autotune, cuda_graphs, mode",
    [
        (False, False, "default"),
        (False, True, "reduce-overhead"),
        (True, False, "max-autotune-no-cudagraphs"),
        (True, True, "max-autotune"),
    ],
)
@pytest.mark.parametrize("tune_kernels", [False, True])
@pytest.mark.parametrize("freeze_weights", [False, True])
def test_compile_options_are_the_modes_plus_kernel_tuning(
    autotune: bool, cuda_graphs: bool, mode: str, tune_kernels: bool, freeze_weights: bool
) -> None:
    from torch._inductor import list_mode_options

    options = SamplingOptions(
        compile=True,
        cuda_graphs=cuda_graphs,
        autotune=autotune,
        tune_kernels=tune_kernels,
        freeze_weights=freeze_weights,
    )
    expected = dict(list_mode_options(mode))
    if tune_kernels:
        expected["coordinate_descent_tuning"] = True
    if freeze_weights:
        expected["freezing"] = True
    assert options.compile_options == expected
    # torch.compile checks option names when it is called: these must all be Inductor settings.
    torch.compile(torch.nn.Linear(2, 2), options=options.compile_options)


def test_compiled_model_gets_the_options_inductor_settings(
    model: torch.nn.Module, cosine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sample() hands the options' Inductor settings to torch.compile (stubbed out here)."""
    import bench.sampling

    seen = []
    monkeypatch.setattr(
        bench.sampling, "_compiled", lambda module, options, variant="": seen.append(options) or module
    )
    options = SamplingOptions(
        dtype="fp32", channels_last=False, compile=True, autotune=True, tune_kernels=True, batch_size=2
    )
    result = sample(model, "ddim", conditions(2), train_config=cosine, steps=1, options=options)
    assert seen == [{"max_autotune": True, "coordinate_descent_tuning": True}]
    assert result.options.autotune is True and result.options.tune_kernels is True


def test_compiling_silences_only_dynamos_lru_cache_note() -> None:
    import warnings

    from bench.compile_mode import quiet_known_compile_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_compile_warnings()
        warnings.warn(
            "Dynamo detected a call to a `functools.lru_cache`-wrapped function at 'upsampling.py:156'.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("Dynamo detected something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Dynamo detected something else"]


@pytest.mark.parametrize("before", [True, False])
def test_cudnn_benchmark_block_restores_the_callers_value(before: bool) -> None:
    from bench.sampling import cudnn_benchmark

    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = before
        with cudnn_benchmark(not before):
            assert torch.backends.cudnn.benchmark is (not before)
        assert torch.backends.cudnn.benchmark is before
        with pytest.raises(RuntimeError, match="boom"), cudnn_benchmark(not before):
            assert torch.backends.cudnn.benchmark is (not before)
            raise RuntimeError("boom")
        assert torch.backends.cudnn.benchmark is before
    finally:
        torch.backends.cudnn.benchmark = saved


def test_sample_runs_under_the_resolved_cudnn_benchmark(model: torch.nn.Module, cosine: dict) -> None:
    """On the CPU sample() turns cudnn.benchmark off for its loop and gives the caller's value back."""
    seen = []

    class Recording(CountingModel):
        def forward(self, x, t, c):
            seen.append(torch.backends.cudnn.benchmark)
            return super().forward(x, t, c)

    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        options = SamplingOptions(cudnn_benchmark=True, dtype="fp32", channels_last=False)
        result = sample(
            Recording(model), "ddim", conditions(2), train_config=cosine, steps=2, options=options
        )
        assert seen == [False, False] and result.options.cudnn_benchmark is False
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("switch", ["group_norm_by_views", "group_norm_by_channel_stats"])
def test_group_norm_variants_sample_the_same_images_and_switch_back(
    model: torch.nn.Module, cosine: dict, switch: str
) -> None:
    from torch import nn

    from bench.groupnorm import GroupNormByChannelStats, GroupNormByViews

    variant = {
        "group_norm_by_views": GroupNormByViews,
        "group_norm_by_channel_stats": GroupNormByChannelStats,
    }[switch]
    kwargs = dict(train_config=cosine, steps=3, guidance=2.0, seed=4)
    plain = sample(
        model, "cosine", conditions(3), options=SamplingOptions(dtype="fp32", **{switch: False}), **kwargs
    )
    switched = sample(
        model, "cosine", conditions(3), options=SamplingOptions(dtype="fp32", **{switch: True}), **kwargs
    )
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is variant for m in norms)
    assert getattr(switched.options, switch)
    # fp32 rounding of the statistics differs (two-pass vs Welford); a random net amplifies a few
    # pixels, the bulk is identical.
    diff = (switched.images - plain.images).abs()
    assert diff.mean() < 1e-4 and diff.max() < 2e-2
    sample(model, "cosine", conditions(1), options=SamplingOptions(), **kwargs)  # default: off
    assert all(type(m) is nn.GroupNorm for m in norms)


def test_two_group_norm_variants_at_once_are_refused() -> None:
    with pytest.raises(
        SamplingOptionsError, match="--group-norm-by-channel-stats.* GroupNorm variants: choose one"
    ):
        SamplingOptions(group_norm_by_views=True, group_norm_by_channel_stats=True).resolved("cpu")


def _upsamplers_folded(model: torch.nn.Module) -> list[bool]:
    from diffusers.models.upsampling import Upsample2D

    return [type(m) is not Upsample2D for m in model.modules() if isinstance(m, Upsample2D)]


def _attentions_by_sums(model: torch.nn.Module) -> list[bool]:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    return [type(m.processor) is not AttnProcessor2_0 for m in model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize(
    "switch, switched", [("fold_upsample", _upsamplers_folded), ("attention_by_sums", _attentions_by_sums)]
)
def test_a_model_level_switch_samples_the_same_images_and_switches_back(
    model: torch.nn.Module, cosine: dict, switch: str, switched
) -> None:
    """--fold-upsample and --attention-by-sums change how modules compute, not what: the same
    images, and a later call without the switch puts every module back."""
    kwargs = dict(train_config=cosine, steps=3, guidance=2.0, seed=4)
    plain = sample(model, "cosine", conditions(3), options=SamplingOptions(dtype="fp32"), **kwargs)
    on = SamplingOptions(dtype="fp32", **{switch: True})
    changed = sample(model, "cosine", conditions(3), options=on, **kwargs)
    assert getattr(changed.options, switch) and not getattr(plain.options, switch)
    assert switched(model) and all(switched(model))
    assert_same_images_across_batch_shapes(changed.images, plain.images)
    sample(model, "cosine", conditions(1), options=SamplingOptions(), **kwargs)  # the CPU default: off
    assert not any(switched(model))


def test_steps_default_to_the_schedulers_and_zero_is_refused() -> None:
    def no_default(**_):  # a scheduler plugin that names no default_steps
        raise AssertionError("not called")

    assert resolve_steps("cosine") == 100 and resolve_steps("ddim") == 50 and resolve_steps(no_default) == 50
    assert resolve_steps("cosine", 7) == 7
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        resolve_steps("cosine", 0)


def test_progress_counts_each_chunks_steps_and_changes_no_image(model, cosine, capsys) -> None:
    run = dict(train_config=cosine, steps=3, options=SamplingOptions.plain(batch_size=2))
    quiet = sample(model, "ddim", conditions(3), **run)
    shown = sample(model, "ddim", conditions(3), show_progress=True, **run)
    assert torch.equal(quiet.images, shown.images)
    err = capsys.readouterr().err  # not a terminal here: a first line per chunk, then one a minute
    assert "denoising steps (chunk 1/2): 0/3" in err and "denoising steps (chunk 2/2): 0/3" in err


def test_chunks_are_as_even_as_the_fewest_chunks_allow() -> None:
    """The last chunk is padded to the chunk's shape: 600 images at 512 ran 1,024 model rows."""
    assert chunk_size(600, 512) == 300 and chunk_size(513, 512) == 257
    assert chunk_size(512, 512) == 512 and chunk_size(64, 512) == 64 and chunk_size(1024, 512) == 512
    assert chunk_size(5, 2) == 2 and chunk_size(0, 4) == 1 and chunk_size(7, 1) == 1


def test_sampling_runs_even_chunks_and_gives_the_images_of_one_chunk(model, cosine) -> None:
    """Five images at --batch-size 4 run as two chunks of 3 (one padded row), the same images as
    one chunk of 5: each image's noise comes from its own seed."""
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        chunked = sample(
            model, "ddim", conditions(5), train_config=cosine, steps=2, options=SamplingOptions.plain(4)
        )
    finally:
        hook.remove()
    whole = sample(
        model, "ddim", conditions(5), train_config=cosine, steps=2, options=SamplingOptions.plain(5)
    )
    assert seen == [3, 3, 3, 3] and chunked.images.shape[0] == 5 and chunked.extra["chunk"] == 3
    assert_same_images_across_batch_shapes(chunked.images, whole.images)


def test_every_speed_switch_is_in_the_one_table_rows_resume_and_report_read() -> None:
    """SPEED_SWITCHES feeds bench run's options, the rows' speed, the --resume check and the report's
    sampling words: a SamplingOptions switch missing from it would be dropped by all four."""
    from dataclasses import fields

    from bench.results import SPEED_SWITCHES
    from bench.runner import RunConfig

    layout = {"dtype", "channels_last", "compile", "cuda_graphs", "batch_size"}
    assert {f.name for f in fields(SamplingOptions)} - layout == set(SPEED_SWITCHES)
    assert set(SPEED_SWITCHES) <= {f.name for f in fields(RunConfig)}


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_a_module_switch_between_compiled_calls_traces_the_model_again(
    cosine: dict, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sample() calls on one model, the second with --pad-thin-convs, then the first again:
    each change of module classes must trace the model anew, not replay the graph of the call
    before (whatever Dynamo's guards notice). On the CPU through a counting backend (cheap); on
    CUDA with the real fast path (Inductor, CUDA graphs)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    if device == "cpu":
        real_compile = torch.compile
        monkeypatch.setattr(
            torch,
            "compile",
            lambda model, options=None, dynamic=None: real_compile(model, backend=counter, dynamic=dynamic),
        )
    else:
        from torch._dynamo.utils import counters

    def traced() -> int:
        return counter.frame_count if device == "cpu" else counters["stats"]["unique_graphs"]

    torch._dynamo.reset()
    torch.manual_seed(0)
    unet = make_ddpm_unet("tiny").eval()
    seen = []
    for pad in (False, True, False, False):
        options = SamplingOptions(compile=True, batch_size=2, pad_thin_convs=pad).resolved(device)
        before = traced()
        sample(unet, "cosine", conditions(2), train_config=cosine, steps=2, device=device, options=options)
        seen.append(traced() - before)
    torch._dynamo.reset()
    assert seen[:3] == [1, 1, 1]  # each variant traced anew
    assert seen[3] == 0  # the same variant again: the compiled model reused


@pytest.mark.parametrize("keyed", [True, False])
def test_frozen_weights_follow_a_weight_change(
    cosine: dict, keyed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--freeze-weights compiles the weights into the graph as constants (Inductor, on the CPU
    here). Sampled again after the weights changed in place (a loaded state_dict), the images must
    be the new weights'. With sample()'s weights key taken away they are not (a mean difference of
    0.41 here): the graph really holds weights (so the switch freezes), and the key keeps it right."""
    import bench.sampling

    if not keyed:
        monkeypatch.setattr(bench.sampling, "_weights_stamp", lambda model: ())
    torch._dynamo.reset()
    torch.manual_seed(0)
    unet = make_ddpm_unet("tiny").eval()
    other = make_ddpm_unet("tiny").state_dict()  # another random draw
    conds = conditions(2)

    def images(compiled: bool) -> torch.Tensor:
        options = SamplingOptions(
            dtype="fp32", channels_last=False, compile=compiled, freeze_weights=compiled, batch_size=2
        )
        return sample(unet, "ddim", conds, train_config=cosine, steps=2, options=options).images

    frozen_before, eager_before = images(True), images(False)
    unet.load_state_dict(other)
    frozen_after, eager_after = images(True), images(False)
    torch._dynamo.reset()
    assert torch._inductor.config.freezing is False  # held around the calls only: later compiles unaffected
    # Mean differences: compiled fp32 rounds differently, and DDIM's first step from t=999 scales
    # the model's error up (a few pixels differ by ~1e-2 even unfrozen).
    assert (eager_after - eager_before).abs().mean() > 0.1  # the change shows in the images
    assert (frozen_before - eager_before).abs().mean() < 1e-4
    off_new = (frozen_after - eager_after).abs().mean()
    if keyed:
        assert off_new < 1e-4
    else:  # the graph kept some of the first weights (folded copies; the rest read in place)
        assert off_new > 0.05


@pytest.mark.parametrize("freezing", [False, True])
def test_frozen_weights_are_compiled_again_after_a_weight_change(
    freezing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With freezing, a weight change in place (load_state_dict) or a swapped tensor (.data) makes
    sample() compile the model afresh, whatever Inductor's freezing does on this torch (the graph
    may hold the old values as constants); without it the compiled model is kept."""
    import bench.sampling

    monkeypatch.setattr(torch, "compile", lambda model, options=None, dynamic=None: object())
    unet = make_ddpm_unet("tiny").eval()
    options = {"freezing": True} if freezing else {}
    first = bench.sampling._compiled(unet, options, "v")
    assert bench.sampling._compiled(unet, options, "v") is first  # nothing changed
    unet.load_state_dict(make_ddpm_unet("tiny").state_dict())
    second = bench.sampling._compiled(unet, options, "v")
    assert (second is not first) == freezing
    weight = next(unet.parameters())
    weight.data = weight.data.clone()
    assert (bench.sampling._compiled(unet, options, "v") is not second) == freezing


def test_frozen_weights_refuse_inference_tensors(cosine: dict) -> None:
    """Weights made inside torch.inference_mode() count no in-place changes: freezing them could
    sample stale values later, so it is refused with the reason."""
    with torch.inference_mode():
        unet = make_ddpm_unet("tiny").eval()
    options = SamplingOptions(dtype="fp32", compile=True, freeze_weights=True, batch_size=2)
    with pytest.raises(SamplingOptionsError, match="outside torch.inference_mode"):
        sample(unet, "ddim", conditions(2), train_config=cosine, steps=1, options=options)


def test_frozen_weights_compile_once_across_sample_calls(
    cosine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With frozen weights and channels_last, a second sample() on the same weights reuses the
    compiled model: the layout conversion each call makes must not count as a weight change (a
    `bench run` of several cells would compile once per cell)."""
    compiles = []

    def counting_compile(model, options=None, dynamic=None):
        compiles.append(options)
        return model  # eager stands in for the compiled model

    monkeypatch.setattr(torch, "compile", counting_compile)
    unet = make_ddpm_unet("tiny").eval()
    options = SamplingOptions(
        dtype="fp32", channels_last=True, compile=True, freeze_weights=True, batch_size=2
    )
    for _ in range(2):
        sample(unet, "ddim", conditions(2), train_config=cosine, steps=1, options=options)
    assert len(compiles) == 1 and compiles[0]["freezing"] is True
    unet.load_state_dict(make_ddpm_unet("tiny").state_dict())  # a real change still recompiles
    sample(unet, "ddim", conditions(2), train_config=cosine, steps=1, options=options)
    assert len(compiles) == 2


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_images_come_to_the_host_through_one_reused_buffer(device: str) -> None:
    """CPU images pass as they are (no buffer); CUDA ones come back equal, on the CPU, through one
    page-locked chunk that the next (here shorter) chunk overwrites: each returned one is a copy."""
    from bench.sampling import _host_buffer, _to_host

    buffer = _host_buffer(4, (3, 8, 8), torch.device(device))
    images = torch.randn(4, 3, 8, 8, device=device)
    host = _to_host(images, buffer)
    assert host.device.type == "cpu" and torch.equal(host, images.cpu())
    if device == "cpu":
        assert buffer is None
        return
    assert buffer.is_pinned() and host.data_ptr() != buffer.data_ptr()
    last = _to_host(images[:3] * 2, buffer)
    assert torch.equal(last, 2 * host[:3]) and torch.equal(host, images.cpu())
