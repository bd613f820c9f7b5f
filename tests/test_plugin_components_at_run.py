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

from bench import hookimpl
from bench.plugins import PluginFactoryError, Plugins, load_plugins
from bench.registry import Registry, RegistryError
from bench.run_resume import ResumeError
from bench.runner import RunConfig, run
from bench.sampling import SamplingOptionsError, resolve_steps


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


def _exploding_factory(**options):
    raise ValueError("factory exploded")


@hookimpl
def register_schedulers(register):
    register("s-nan", _nan_step)
    register("s-half", _half_step)


@hookimpl
def register_evaluators(register):
    register("brightness", lambda **options: _Brightness())
    register("overwrites", lambda **options: _Overwrites())
    register("explodes", _exploding_factory)


@pytest.fixture()
def plugins() -> Iterator[Plugins]:
    module = types.ModuleType("bench_test_components")
    module.register_schedulers = register_schedulers
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
        "ValueError: factory exploded"
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
    run(_config(tmp_path, condition_file), plugins, log=_quiet)
    path = tmp_path / "run" / "results.json"
    assert json.loads(path.read_text())["environment"]["plugins"] == {"bench_test_components": ""}
    plugins.versions["bench_test_components"] = "0.3.0"  # the plugin was upgraded meanwhile
    with pytest.raises(ResumeError, match=r'environment\.plugins\.bench_test_components: "" -> "0\.3\.0"'):
        run(_config(tmp_path, condition_file, seeds=[0, 1], resume=True), plugins, log=_quiet)


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
