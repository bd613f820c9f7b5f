"""What `bench run` does with a plugin's components that misbehave once the run calls them: one
line naming the plugin, a failed cell rather than scored black images, evaluators that cannot
disturb each other, and the plugins' versions recorded for --resume. The plugins are in-process
modules (tests/test_plugins.py installs real packages for loading itself)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import hookimpl
from bench.plugins import PluginFactoryError, Plugins, load_plugins
from bench.registry import Registry, RegistryError
from bench.run_resume import ResumeError
from bench.runner import RunConfig, RunError, run
from bench.sampling import SamplingError, SamplingOptionsError, resolve_steps


def _ddim(train_config, **options):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_config, **options)


class _StepThat:
    """A DDIM whose step output goes through ``change``."""

    def __init__(self, scheduler, change) -> None:
        self._scheduler, self._change = scheduler, change

    def __getattr__(self, name):
        return getattr(self._scheduler, name)

    def step(self, *args, **kwargs):
        out = self._scheduler.step(*args, **kwargs)
        return (self._change(out[0]),)


def _nan_step(train_config, **options):
    return _StepThat(_ddim(train_config, **options), lambda x: x * float("nan"))


def _half_step(train_config, **options):
    return _StepThat(_ddim(train_config, **options), lambda x: x[..., ::2, ::2])


class _Brightness:
    def __call__(self, images, conditions):
        return {"brightness": float(images.mean())}


class _Overwrites:
    """Writes into its input, as a careless plugin might."""

    lower_is_better = "scribble"  # one name as a string (the missing comma of a one-tuple)

    def __call__(self, images, conditions):
        images.fill_(1.0)
        return {"scribble": 0.0}


def _distance_factory(**options):
    return lambda images, conditions: {"mydist": float(images.abs().mean())}


_distance_factory.lower_is_better = ("mydist",)  # on the factory, beside min_images


def _exploding_factory(**options):
    raise ValueError("factory exploded")


class _NeedsDevice:
    """A toy scheduler whose set_timesteps wants an argument the loop does not pass."""

    config: dict = {}
    init_noise_sigma = 1.0

    def set_timesteps(self, steps, device):
        pass

    def scale_model_input(self, x, t):
        return x

    def step(self, *args, **kwargs):
        raise AssertionError("never reached")


class _NoInitSigma(_NeedsDevice):
    init_noise_sigma = None

    def __getattribute__(self, name):
        if name == "init_noise_sigma":
            raise AttributeError(name)
        return super().__getattribute__(name)


class _HalfChannels(torch.nn.Module):
    """A model plugin whose prediction has 1 channel for 3: the scheduler broadcast it before."""

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = {"sample_size": 64, "in_channels": 3}
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond):
        return x[:, :1] * self.scale


class _NoUpsampling(_HalfChannels):
    """A model plugin with no diffusers Upsample2D and no convolution: nothing for --fold-upsample to fold,
    nor for --pad-thin-convs to pad."""

    def forward(self, x, t, cond):
        return x * self.scale


class _Buggy(torch.nn.Module):
    def __init__(self, preset=None, **config) -> None:
        super().__init__()
        self.width = None + 1  # a bug of the plugin's own, not a bad --preset


@hookimpl
def register_schedulers(register):
    register("s-nan", _nan_step)
    register("s-half", _half_step)
    register("s-needs-device", lambda train_config, **options: _NeedsDevice())
    register("s-no-sigma", lambda train_config, **options: _NoInitSigma())
    register("s-broken", lambda train_config, **options: 1 / 0)


@hookimpl
def register_models(register):
    register("m-half-channels", lambda preset=None, **config: _HalfChannels())
    register("m-buggy", _Buggy)
    register("m-no-upsampling", lambda preset=None, **config: _NoUpsampling())


@hookimpl
def register_evaluators(register):
    register("brightness", lambda **options: _Brightness())
    register("overwrites", lambda **options: _Overwrites())
    register("explodes", _exploding_factory)
    register("distance", _distance_factory)


@pytest.fixture()
def plugins() -> Iterator[Plugins]:
    module = types.ModuleType("bench_test_components")
    module.register_schedulers = register_schedulers
    module.register_models = register_models
    module.register_evaluators = register_evaluators
    sys.modules[module.__name__] = module
    try:
        yield load_plugins((module.__name__,), entry_points=False)
    finally:
        del sys.modules[module.__name__]


@pytest.fixture()
def condition_file(tmp_path: Path) -> str:
    path = tmp_path / "two.json"
    path.write_text('[["red sphere"], ["blue cube", "gray cylinder"]]')
    return str(path)


def _config(tmp_path: Path, condition_file: str, **overrides) -> RunConfig:
    base = dict(
        checkpoint="random", preset="tiny", schedulers=["ddim"], steps=[2], seeds=[0], evaluators=[],
        device="cpu", denoising_figure=False, condition_files=[condition_file], out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    return RunConfig(**{**base, **overrides})


def _quiet(message: str) -> None:
    pass


@pytest.mark.parametrize(
    ("scheduler", "says"),
    [("s-nan", "are NaN or inf"), ("s-half", "returned samples of shape (2, 3, 32, 32)")],
)
def test_a_scheduler_that_breaks_the_samples_fails_its_cell(
    tmp_path, condition_file, plugins, scheduler, says
) -> None:
    """Not scored: NaN images were saved black and judged; a smaller shape was blamed on the judge."""
    config = _config(tmp_path, condition_file, schedulers=[scheduler, "ddim"], evaluators=["brightness"])
    result = run(config, plugins, log=_quiet)
    broken, fine = result.rows
    assert broken.scheduler == scheduler and broken.metrics == {}
    assert (
        broken.error.startswith("SamplingError") and says in broken.error and repr(scheduler) in broken.error
    )
    assert fine.error is None and "brightness" in fine.metrics  # the other cell is kept


def test_an_evaluator_factory_that_raises_is_one_line_naming_its_plugin(
    tmp_path, condition_file, plugins
) -> None:
    with pytest.raises(PluginFactoryError) as caught:
        run(_config(tmp_path, condition_file, evaluators=["explodes"]), plugins, log=_quiet)
    assert str(caught.value) == (
        "evaluator 'explodes': its factory (plugin 'bench_test_components') failed: "
        f"ValueError: factory exploded at {__file__}:{_exploding_factory.__code__.co_firstlineno + 1}"
    )


def test_an_evaluator_cannot_change_what_the_next_one_judges(tmp_path, condition_file, plugins) -> None:
    alone = run(_config(tmp_path, condition_file, evaluators=["brightness"]), plugins, log=_quiet)
    after = run(
        _config(tmp_path, condition_file, evaluators=["overwrites", "brightness"]), plugins, log=_quiet
    )
    assert after.rows[0].metrics["brightness"] == alone.rows[0].metrics["brightness"] != 1.0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["lower_is_better"] == ["scribble"]  # not s, c, r, i, b, l, e


def test_the_plugins_versions_are_recorded_and_resume_requires_them(
    tmp_path, condition_file, plugins
) -> None:
    # Only the plugins whose components the run uses: an unrelated one installed later refused
    # the resume of a run that never touched it.
    run(_config(tmp_path, condition_file), plugins, log=_quiet)
    path = tmp_path / "run" / "results.json"
    assert json.loads(path.read_text())["environment"]["plugins"] == {}
    run(_config(tmp_path, condition_file, evaluators=["brightness"]), plugins, log=_quiet)
    assert json.loads(path.read_text())["environment"]["plugins"] == {"bench_test_components": ""}
    plugins.versions["bench_test_components"] = "0.3.0"  # the plugin was upgraded meanwhile
    with pytest.raises(ResumeError, match=r'environment\.plugins\.bench_test_components: "" -> "0\.3\.0"'):
        run(
            _config(tmp_path, condition_file, evaluators=["brightness"], seeds=[0, 1], resume=True),
            plugins,
            log=_quiet,
        )
    run(_config(tmp_path, condition_file), plugins, log=_quiet)  # a run without its components
    assert run(_config(tmp_path, condition_file, seeds=[0, 1], resume=True), plugins, log=_quiet).rows


@pytest.mark.parametrize("default", [0, "ten", 2.5, True])
def test_a_bad_default_steps_is_one_line(default) -> None:
    def factory(train_config, **options):
        return _ddim(train_config, **options)

    factory.default_steps = default
    with pytest.raises(SamplingOptionsError, match="declares default_steps"):
        resolve_steps(factory)
    assert resolve_steps(factory, 3) == 3  # --steps given: the default is not read


@pytest.mark.parametrize("name", ["../escape", "a,b", "two words", ".hidden", "x/y", ""])
def test_names_that_would_break_a_list_or_a_path_are_refused(name) -> None:
    registry = Registry("schedulers")
    with pytest.raises(RegistryError, match="invalid name"):
        registry.add(name, _ddim, plugin="p")
    with pytest.raises(RegistryError, match="invalid name"):
        registry.add("fine", _ddim, aliases=(name,), plugin="p")
    registry.add("dpm++2m.v2_x-y", _ddim, plugin="p")  # the characters built-in names use


def test_a_scheduler_whose_set_timesteps_has_a_bug_is_one_line_before_any_cell(
    tmp_path, condition_file, plugins
) -> None:
    """Only a ValueError (a refusal of the steps) was caught: a TypeError was a traceback."""
    with pytest.raises(PluginFactoryError, match=r"--scheduler s-needs-device: its set_timesteps \(plugin "
                       r"'bench_test_components'\) failed: TypeError: .*'device'.* at "):  # fmt: skip
        run(_config(tmp_path, condition_file, schedulers=["s-needs-device"]), plugins, log=_quiet)


def test_a_scheduler_without_what_the_loop_reads_is_refused_before_any_cell(
    tmp_path, condition_file, plugins
) -> None:
    with pytest.raises(RunError, match=r"--scheduler s-no-sigma: .* \(no init_noise_sigma\)"):
        run(_config(tmp_path, condition_file, schedulers=["s-no-sigma"]), plugins, log=_quiet)


def test_a_model_whose_prediction_is_not_the_samples_shape_is_refused(
    tmp_path, condition_file, plugins
) -> None:
    with pytest.raises(
        SamplingError, match=r"returned shape \(2, 1, 64, 64\) for an input of shape \(2, 3, 64, 64\)"
    ):
        run(_config(tmp_path, condition_file, model="m-half-channels", preset=None), plugins, log=_quiet)


@pytest.mark.parametrize(
    "switch, note",
    [
        ("fold_upsample", "--fold-upsample: this model has no nearest-2x + 3x3 upsampling to fold; it samples as it is"),
        ("attention_by_sums", "--attention-by-sums: this model has no diffusers attention to rewrite; it samples as it is"),
        ("pad_thin_convs", "--pad-thin-convs: this model has no convolution off a multiple of 8 channels; it samples as it is"),
        ("triton_end_convs", "--triton-end-convs: this model has no thin 3x3 end convolution the kernels take; it samples as it is"),
    ],
)  # fmt: skip
def test_a_model_level_switch_says_when_the_model_has_nothing_to_switch(
    tmp_path, condition_file, plugins, switch: str, note: str
) -> None:
    for model, preset, says in [("m-no-upsampling", None, True), ("ddpm-unet", "tiny", False)]:
        lines: list[str] = []
        config = _config(tmp_path / model, condition_file, model=model, preset=preset, **{switch: True})
        run(config, plugins, log=lines.append)
        assert (note in lines) is says


def test_a_bug_in_a_model_factory_names_the_plugin_not_the_preset(tmp_path, condition_file, plugins) -> None:
    with pytest.raises(PluginFactoryError, match=r"--model m-buggy: its factory \(plugin 'bench_test_components'\) "
                       r"failed: TypeError: unsupported operand"):  # fmt: skip
        run(_config(tmp_path, condition_file, model="m-buggy"), plugins, log=_quiet)
    with pytest.raises(RunError, match=r"--preset nope: unknown ddpm-unet preset 'nope'"):
        run(_config(tmp_path, condition_file, preset="nope"), plugins, log=_quiet)


def test_a_checkpoint_of_another_model_than_model_is_refused(tmp_path, condition_file, plugins) -> None:
    """The checkpoint builds its own model: rows labelled with --model's name named another one."""
    from bench.checkpoints import save_checkpoint
    from bench.noise import noise_config
    from bench_builtins.models.ddpm_unet import make_ddpm_unet

    model = make_ddpm_unet("tiny")
    path = save_checkpoint(
        tmp_path / "ck", model_name="ddpm-unet", model=model, model_config=model.config,
        noise_config=noise_config("cosine", 100),
    )  # fmt: skip
    config = _config(tmp_path, condition_file, checkpoint=str(path), preset=None, model="m-half-channels")
    with pytest.raises(
        RunError, match=r"--model m-half-channels, but .* holds a 'ddpm-unet' model: pass --model ddpm-unet"
    ):
        run(config, plugins, log=_quiet)


def test_lower_is_better_set_on_the_factory_counts_too(tmp_path, condition_file, plugins) -> None:
    """Set on the factory (where min_images and needs_reference go), it was silently ignored."""
    run(_config(tmp_path, condition_file, evaluators=["distance", "overwrites"]), plugins, log=_quiet)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["lower_is_better"] == ["mydist", "scribble"]


def test_a_broken_scheduler_is_not_offered_for_a_mismatched_schedule(plugins, monkeypatch) -> None:
    """Its factory failing, its schedule read as empty and matched every checkpoint: the hint
    suggested it as a sampler to use instead."""
    from bench.noise import ScheduleMismatchError, check_schedule_compatible, noise_config

    monkeypatch.setattr("bench.plugins.get_plugins", lambda: plugins)
    with pytest.raises(ScheduleMismatchError) as caught:
        check_schedule_compatible(noise_config("linear", 1000), plugins.registry("schedulers").get("cosine"))
    offered = str(caught.value).split("reuses the trained schedule (", 1)[1].split(")", 1)[0].split(", ")
    assert "linear" in offered and "ddim" in offered and "s-broken" not in offered
