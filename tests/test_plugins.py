"""Third-party plugins, installed for real: the example scheduler and the broken ones.

Each package under examples/ and tests/plugins/ is pip-installed (offline, no deps) into its own
temporary folder; ``bench`` then runs in a subprocess with those folders on PYTHONPATH, so the
entry points are discovered exactly as for a user's ``pip install``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench import hookimpl
from bench.plugins import BUILTIN_PLUGINS, load_plugins

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "my_ddim": ROOT / "examples" / "bench-my-ddim",
    "broken_import": ROOT / "tests" / "plugins" / "bench-broken-import",
    "misspelled_hook": ROOT / "tests" / "plugins" / "bench-misspelled-hook",
    "extra_arg": ROOT / "tests" / "plugins" / "bench-extra-arg",
    "name_clash": ROOT / "tests" / "plugins" / "bench-name-clash",
}
BROKEN = ("broken_import", "misspelled_hook", "extra_arg")
# the entry point name, and what its error must mention
BROKEN_REASONS = {
    "broken_import": "bench_this_module_does_not_exist",
    "misspelled_hook": "register_scheduler",
    "extra_arg": "extra",
}


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """entry point name -> a folder holding only that installed package."""
    root = tmp_path_factory.mktemp("plugins")
    jobs = {}
    for name, source in PACKAGES.items():
        # build from a copy: setuptools leaves build/ and *.egg-info beside the sources
        src = root / "src" / source.name
        shutil.copytree(source, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        target = root / name
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(src),
        ]
        jobs[name] = (
            target,
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        )
    for name, (_, proc) in jobs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"pip install of {name} failed:\n{output}"
    return {name: target for name, (target, _) in jobs.items()}


def bench(
    args: list[str],
    installed: dict[str, Path],
    plugins: tuple[str, ...],
    strict: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("BENCH_STRICT_PLUGINS", None)
    if strict:
        env["BENCH_STRICT_PLUGINS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(str(installed[p]) for p in plugins)
    cmd = [sys.executable, "-c", "from bench.cli import main; main()", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_pip_install_offline(installed: dict[str, Path]) -> None:
    dist = next(installed["my_ddim"].glob("bench_my_ddim-*.dist-info"))
    assert "[bench]\nmy_ddim = bench_my_ddim" in (dist / "entry_points.txt").read_text()


def test_example_scheduler_is_listed(installed: dict[str, Path]) -> None:
    result = bench(["list", "schedulers"], installed, ("my_ddim",))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("my-ddim"))
    assert "myddim" in line and "my_ddim" in line
    assert result.stderr == ""


def test_example_plugin_in_bench_plugins(installed: dict[str, Path]) -> None:
    result = bench(["plugins"], installed, ("my_ddim",))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("my_ddim"))
    assert "0.1.0" in line and "register_schedulers" in line and line.endswith("entry point")
    assert result.stdout.splitlines()[0].split() == ["plugin", "version", "hooks", "source"]
    assert "failed to load" not in result.stdout


def test_example_factory_contract(installed: dict[str, Path]) -> None:
    """make_my_ddim(train_config, **options) returns a NEW DDIMScheduler each call."""
    pytest.importorskip("diffusers")
    code = (
        "from bench.plugins import get\n"
        "entry = get('schedulers', 'myddim')\n"
        "config = {'num_train_timesteps': 1000, 'beta_schedule': 'squaredcos_cap_v2'}\n"
        "a = entry.factory(config)\n"
        "b = entry.factory(config, timestep_spacing='trailing')\n"
        "assert a is not b and type(a).__name__ == 'DDIMScheduler', a\n"
        "assert a.config.beta_schedule == 'squaredcos_cap_v2' and b.config.timestep_spacing == 'trailing'\n"
        "print(entry.plugin)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(installed["my_ddim"]))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "my_ddim"


def test_broken_plugins_are_skipped_with_one_line_each(installed: dict[str, Path]) -> None:
    result = bench(["list", "schedulers"], installed, ("my_ddim", *BROKEN))
    assert result.returncode == 0, result.stderr
    assert "my-ddim" in result.stdout  # the good plugin still works
    lines = result.stderr.splitlines()
    assert len(lines) == len(BROKEN), result.stderr
    for name, reason in BROKEN_REASONS.items():
        mine = [line for line in lines if f"'{name}'" in line]
        assert len(mine) == 1, result.stderr
        assert mine[0].startswith("bench: skipping plugin") and reason in mine[0]
        # a location, where given, is the plugin's, not bench's own check that refused it
        assert f"{os.sep}bench{os.sep}plugins.py" not in mine[0], mine[0]


def test_bench_plugins_lists_load_errors(installed: dict[str, Path]) -> None:
    result = bench(["plugins"], installed, ("my_ddim", *BROKEN))
    assert result.returncode == 0, result.stderr
    assert "failed to load" in result.stdout
    failed = result.stdout.split("failed to load", 1)[1]
    for name, reason in BROKEN_REASONS.items():
        line = next(line for line in failed.splitlines() if line.startswith(name))
        assert reason in line


@pytest.mark.parametrize("broken", BROKEN)
def test_strict_mode_is_fatal(installed: dict[str, Path], broken: str) -> None:
    result = bench(["list", "schedulers"], installed, ("my_ddim", broken), strict=True)
    assert result.returncode != 0
    assert f"plugin '{broken}' failed to load" in result.stderr
    assert BROKEN_REASONS[broken] in result.stderr
    assert "Traceback" not in result.stderr


def test_strict_mode_passes_good_plugins(installed: dict[str, Path]) -> None:
    result = bench(["list", "schedulers"], installed, ("my_ddim",), strict=True)
    assert result.returncode == 0, result.stderr


def test_name_clash_with_builtin_skips_the_newcomer_naming_both(installed: dict[str, Path]) -> None:
    """A third-party name that a built-in owns: the plugin is skipped with one line naming both (bench
    plugins and every other command still run), the built-in keeps its name; strict mode is fatal."""
    result = bench(["list", "schedulers"], installed, ("name_clash",))
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("cosine ") for line in result.stdout.splitlines())
    assert "name_clash" not in result.stdout  # none of its components is listed
    (line,) = result.stderr.splitlines()
    assert line.startswith("bench: skipping plugin 'name_clash'") and "'cosine'" in line
    assert "'bench_builtins.schedulers'" in line
    strict = bench(["list", "schedulers"], installed, ("name_clash",), strict=True)
    assert strict.returncode != 0 and "plugin 'name_clash' failed to load" in strict.stderr
    assert "Traceback" not in strict.stderr


def _modules(**hooks: dict[str, object]) -> list[str]:
    """Put in-process plugin modules named ``bench_test_<key>`` into sys.modules, their attributes
    given; returns their names (the caller removes them)."""
    names = []
    for key, attrs in hooks.items():
        module = types.ModuleType(f"bench_test_{key}")
        for attr, value in attrs.items():
            setattr(module, attr, value)
        sys.modules[module.__name__] = module
        names.append(module.__name__)
    return names


def test_name_clash_between_plugins_keeps_the_first(capsys: pytest.CaptureFixture[str]) -> None:
    """Two plugins registering the same scheduler: the second is skipped whole, naming both."""

    @hookimpl
    def register_schedulers(register):
        register("same-name", lambda train_config, **options: None)

    @hookimpl
    def register_evaluators(register):
        register("second-only", lambda **options: None)

    names = _modules(
        first={"register_schedulers": register_schedulers},
        second={"register_schedulers": register_schedulers, "register_evaluators": register_evaluators},
    )
    try:
        plugins = load_plugins(tuple(names), entry_points=False)
        assert plugins.registry("schedulers").get("same-name").plugin == "bench_test_first"
        assert "second-only" not in plugins.registry("evaluators")  # the skipped plugin counts not at all
        (error,) = plugins.load_errors
        assert error.plugin == "bench_test_second" and "'same-name' is registered twice" in error.error
        assert "'bench_test_first'" in error.error
        assert "bench_test_second" not in [p.name for p in plugins.info()]
        assert "skipping plugin 'bench_test_second'" in capsys.readouterr().err
    finally:
        for name in names:
            del sys.modules[name]


def test_a_hook_that_raises_half_way_leaves_nothing_registered() -> None:
    @hookimpl
    def register_schedulers(register):
        register("ok-one", lambda train_config, **options: None)
        raise RuntimeError("boom after one")

    names = _modules(half={"register_schedulers": register_schedulers})
    try:
        plugins = load_plugins(tuple(names), entry_points=False)
        assert "ok-one" not in plugins.registry("schedulers")
        ((plugin, error),) = [(e.plugin, e.error) for e in plugins.load_errors]
        # the hook and the line that raised, not only the exception
        assert plugin == "bench_test_half" and error.startswith(
            "register_schedulers raised RuntimeError: boom after one at "
        )
        assert error.endswith(f"{__file__}:{register_schedulers.__code__.co_firstlineno + 3}")
        assert "bench_test_half" not in [p.name for p in plugins.info()]
    finally:
        for name in names:
            del sys.modules[name]


def test_a_hook_without_the_marker_or_a_taken_plugin_name_is_a_load_error() -> None:
    from bench.plugins import Plugins, _register_module

    def register_schedulers(register):  # no @hookimpl: pluggy would ignore it without a word
        register("never", lambda train_config, **options: None)

    @hookimpl
    def register_models(register):
        pass

    names = _modules(
        unmarked={"register_schedulers": register_schedulers},
        half_marked={"register_models": register_models, "register_schedulers": register_schedulers},
        empty={},
    )
    try:
        plugins = load_plugins(tuple(names), entry_points=False)
        errors = {e.plugin: e.error for e in plugins.load_errors}
        assert "register_schedulers lack @bench.hookimpl" in errors["bench_test_unmarked"]
        assert "register_schedulers lack @bench.hookimpl" in errors["bench_test_half_marked"]
        assert "implements no bench hook" in errors["bench_test_empty"]
        assert "never" not in plugins.registry("schedulers")
        # An entry point named like a loaded plugin (here a built-in) is refused; the built-in stays.
        impostor = types.ModuleType("impostor")
        impostor.register_schedulers = hookimpl(register_schedulers)
        fresh = load_plugins(entry_points=False)
        with pytest.raises(Exception, match="'bench_builtins.schedulers' is taken"):
            _register_module(fresh, impostor, "bench_builtins.schedulers")
        assert (
            isinstance(fresh, Plugins) and fresh.manager.get_plugin("bench_builtins.schedulers") is not None
        )
        assert fresh.manager.get_plugin("bench_builtins.schedulers") is not impostor
    finally:
        for name in names:
            del sys.modules[name]


def test_every_hook_reaches_its_registry() -> None:
    """A plugin implementing register_models, register_schedulers, register_evaluators,
    register_datasets and register_reporters lands in each registry, owned by that plugin."""
    module = types.ModuleType("bench_test_everything")

    def factory(*args, **kwargs):
        """A test factory."""

    for kind in ("models", "schedulers", "evaluators", "datasets", "reporters"):

        def hook(register, _kind=kind):
            register(f"test-{_kind}", factory, aliases=(f"t-{_kind}",))

        hook.__name__ = f"register_{kind}"
        setattr(module, f"register_{kind}", hookimpl(hook))
    sys.modules["bench_test_everything"] = module
    try:
        plugins = load_plugins(("bench_test_everything",), entry_points=False)
    finally:
        del sys.modules["bench_test_everything"]
    for kind in ("models", "schedulers", "evaluators", "datasets", "reporters"):
        entry = plugins.registry(kind).get(f"t-{kind}")
        assert entry.name == f"test-{kind}" and entry.plugin == "bench_test_everything"
    assert {p.name for p in plugins.info() if p.builtin} == set(BUILTIN_PLUGINS)


def test_builtin_reporters_registered() -> None:
    names = {e.name for e in load_plugins(entry_points=False).registry("reporters")}
    assert {"plain", "github", "latex", "csv", "json", "html"} <= names


NO_TORCH = (
    "import sys\n"
    "from bench.cli import main\n"
    "for args in {args!r}:\n"
    "    main(args, standalone_mode=False)\n"
    "heavy = sorted(m for m in ('torch', 'diffusers', 'torchvision', 'torchmetrics') if m in sys.modules)\n"
    "assert not heavy, heavy\n"
)


@pytest.mark.parametrize("args", [[["--help"]], [["list"]], [["list", "schedulers"], ["plugins"]]])
def test_cli_imports_no_torch(installed: dict[str, Path], args: list[list[str]]) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed["my_ddim"]))
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(args=args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_bench_run_with_example_scheduler(installed: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        "--model",
        "ddpm-unet",
        "--checkpoint",
        "random",
        "--preset",
        "tiny",
        "--scheduler",
        "my-ddim",
        "--steps",
        "2",
        "--seeds",
        "0",
        "--evaluators",
        "none",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    result = bench(args, installed, ("my_ddim",), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and all(r["scheduler"] == "my-ddim" and not r["error"] for r in rows)
    assert all(r["speed"]["nfe"] == 2 for r in rows)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        # argparse at import: every command, `bench plugins` included, exited with its usage line
        ("import sys\nsys.exit(2)\n", "SystemExit: 2 at {file}:2 (the plugin exits while it is imported"),
        (
            "import bench_no_such_module_anywhere\n",
            "No module named 'bench_no_such_module_anywhere' at {file}:1",
        ),
        ("def broken(:\n    pass\n", "SyntaxError: invalid syntax ({name}.py, line 1) at {file}:1"),
    ],
    ids=["sys-exit", "import-error", "syntax-error"],
)
def test_a_plugin_that_fails_at_import_is_skipped_saying_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, says: str
) -> None:
    name = f"bench_test_import_{abs(hash(source))}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugins = load_plugins((name,), entry_points=False)
    finally:
        sys.modules.pop(name, None)
    ((plugin, error),) = [(e.plugin, e.error) for e in plugins.load_errors]
    assert plugin == name and says.format(file=path, name=name) in error, error
