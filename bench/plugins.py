"""The plugin manager: built-in plugins, safe entry-point loading, and the registries.

A third-party plugin that fails to import, implements a hook that does not exist (or none, or
one without ``@hookimpl``), takes an argument its hook spec lacks, raises in a hook, or registers
a name another plugin owns is skipped whole with one line on stderr and remembered in
``load_errors`` (``bench plugins`` lists them). ``BENCH_STRICT_PLUGINS=1`` makes it fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from bench import PROJECT_NAME, hookspecs
from bench.registry import Registry, RegistryError

ENTRY_POINT_GROUP = "bench"
STRICT_ENV = "BENCH_STRICT_PLUGINS"
KINDS = ("models", "schedulers", "evaluators", "datasets", "reporters")

# Built-ins are ordinary plugins: the same hooks a third party implements.
BUILTIN_PLUGINS = (
    "bench_builtins.models",
    "bench_builtins.schedulers",
    "bench_builtins.evaluators",
    "bench_builtins.datasets",
    "bench_builtins.reporters",
)


class PluginLoadError(Exception):
    """Raised instead of skipping a broken plugin when BENCH_STRICT_PLUGINS=1."""


class PluginFactoryError(Exception):
    """A plugin's component factory raised when bench called it (its message names the plugin)."""


@dataclass
class LoadError:
    plugin: str
    error: str


@dataclass
class PluginInfo:
    name: str
    version: str
    hooks: list[str]
    builtin: bool


@dataclass
class Plugins:
    """The loaded plugin manager, its registries and what failed to load."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry] = field(default_factory=dict)
    load_errors: list[LoadError] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # plugin names in registration order

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def external_versions(self) -> dict[str, str]:
        """Name -> version ("" when unknown) of every loaded plugin that is not built in."""
        return {
            name: self.versions.get(name, "")
            for name, plugin in self.manager.list_name_plugin()
            if plugin is not None and name not in BUILTIN_PLUGINS
        }

    def info(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(c.name for c in self.manager.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, self.versions.get(name, ""), hooks, name in BUILTIN_PLUGINS))
        return out


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "no")


def _fail(plugins: Plugins, name: str, error: BaseException | str) -> None:
    # A validation error (a misspelt hook, a hook's wrong arguments) names the module and the hook;
    # where it was raised is bench's or pluggy's check, which sent readers into the harness.
    where = "" if isinstance(error, str | pluggy.PluginValidationError) else raised_where(error)
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}{where}"
    if isinstance(error, SystemExit):
        message += " (the plugin exits while it is imported: it parses arguments or calls sys.exit at import)"
    message = " ".join(str(message).split())
    if _strict():
        raise PluginLoadError(f"plugin {name!r} failed to load: {message}")
    plugins.load_errors.append(LoadError(name, message))
    print(f"bench: skipping plugin {name!r}: {message}", file=sys.stderr)


def _unknown_hooks(module: ModuleType) -> list[str]:
    """Hook implementations whose name matches no hook spec (a misspelled hook)."""
    known = {n for n in dir(hookspecs) if n.startswith("register_")}
    marker = f"{PROJECT_NAME}_impl"
    return [
        attr
        for attr in dir(module)
        if getattr(getattr(module, attr, None), marker, None) is not None and attr not in known
    ]


def _unmarked_hooks(module: ModuleType) -> list[str]:
    """Functions named as a hook but without ``@bench.hookimpl``: pluggy ignores them silently."""
    marker = f"{PROJECT_NAME}_impl"
    known = {n for n in dir(hookspecs) if n.startswith("register_")}
    return [
        attr
        for attr in sorted(known)
        if callable(getattr(module, attr, None)) and getattr(getattr(module, attr), marker, None) is None
    ]


def _register_module(plugins: Plugins, module: ModuleType, name: str) -> None:
    hint = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("register_")))
    unknown = _unknown_hooks(module)
    if unknown:
        raise pluggy.PluginValidationError(
            module, f"unknown hook(s) {', '.join(unknown)}; known hooks: {hint}"
        )
    unmarked = _unmarked_hooks(module)
    if unmarked:
        raise pluggy.PluginValidationError(
            module, f"{', '.join(unmarked)} lack @bench.hookimpl, so pluggy would not call them"
        )
    taken = plugins.manager.get_plugin(name)
    if taken is not None:
        raise pluggy.PluginValidationError(
            module,
            f"the plugin name {name!r} is taken by {getattr(taken, '__name__', taken)!r}; "
            "give the entry point another name",
        )
    try:
        plugins.manager.register(module, name=name)
    except Exception:
        # pluggy records the name before it checks the hooks: take back a half registration.
        if plugins.manager.get_plugin(name) is module:
            plugins.manager.unregister(name=name)
        raise
    if not plugins.manager.get_hookcallers(module):
        plugins.manager.unregister(name=name)
        raise pluggy.PluginValidationError(module, f"implements no bench hook (known hooks: {hint})")
    plugins.order.append(name)


def is_bench_error(error: BaseException) -> bool:
    """An error bench raises on purpose (its own exception classes, built-in plugins' included):
    its message says what to do, so one line is enough."""
    return type(error).__module__.split(".")[0] in ("bench", "bench_builtins")


def debug_traceback(error: BaseException) -> None:
    """The traceback a one-line message stands for, printed under ``BENCH_DEBUG=1``."""
    if os.environ.get("BENCH_DEBUG"):
        traceback.print_exception(error)


def raised_where(error: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame that raised ``error`` ("" without a traceback),
    the import machinery's frozen frames left out, a syntax error's own line taken: a one-line
    message then still points into the plugin's own code."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" at {error.filename}:{error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def plugin_failure(what: str, entry: Any, error: Exception, *, call: str = "its factory") -> Exception:
    """What to raise when a component's factory (or ``call``, another of its methods) failed:
    bench's own errors (a missing judge file, a bad option) as they are, anything else as one line
    naming the plugin and the line that raised, since a plugin's bug is not the user's to debug
    from a traceback (``BENCH_DEBUG=1`` prints it)."""
    if is_bench_error(error):
        return error
    debug_traceback(error)
    return PluginFactoryError(
        f"{what}: {call} (plugin {entry.plugin!r}) failed: {type(error).__name__}: {error}{raised_where(error)}"
    )


def _raised(hook: str, error: BaseException) -> str:
    """A hook's own exception, said with the hook and the line that raised it (``BENCH_DEBUG=1``
    prints the whole traceback)."""
    debug_traceback(error)
    return f"{hook} raised {type(error).__name__}: {error}{raised_where(error)}"


def _fill_registries(plugins: Plugins) -> None:
    """Call the component hooks plugin by plugin, built-ins first (so they own their names). A
    plugin counts whole or not at all: if one of its hooks raises, or one of its names is taken,
    every component it registered is taken back and the plugin is skipped like any broken one."""
    plugins.registries.update({kind: Registry(kind) for kind in KINDS})
    for plugin_name in list(plugins.order):
        hook = ""
        try:
            for kind in KINDS:
                hook = f"register_{kind}"
                registry = plugins.registries[kind]

                def register(name, factory, aliases=(), _reg=registry, _plugin=plugin_name):
                    _reg.add(name, factory, aliases, plugin=_plugin)

                caller = getattr(plugins.manager.hook, f"register_{kind}")
                for impl in caller.get_hookimpls():
                    if impl.plugin_name == plugin_name:
                        impl.function(register=register)
        except Exception as error:  # noqa: BLE001 - a plugin's bug (or clash) must not take bench down
            for registry in plugins.registries.values():
                registry.remove_plugin(plugin_name)
            if plugin_name in BUILTIN_PLUGINS:
                raise
            plugins.manager.unregister(name=plugin_name)
            plugins.order.remove(plugin_name)
            _fail(plugins, plugin_name, error if isinstance(error, RegistryError) else _raised(hook, error))


def load_plugins(extra_modules: tuple[str, ...] = (), entry_points: bool = True) -> Plugins:
    """Load the built-ins, then every entry point in the ``bench`` group, safely."""
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager)
    for module_name in BUILTIN_PLUGINS:
        _register_module(plugins, importlib.import_module(module_name), module_name)
        plugins.versions[module_name] = _bench_version()
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)) if entry_points else []
    for ep in found:
        name = ep.name
        dist = ep.dist
        try:
            _register_module(plugins, ep.load(), name)
        # SystemExit too: a plugin that parses argv at import exited every command, `bench plugins` included
        except (Exception, SystemExit) as error:  # noqa: BLE001 - ImportError, SyntaxError, validation...
            _fail(plugins, name, error)
            continue
        plugins.versions[name] = dist.version if dist is not None else ""
    for module_name in extra_modules:
        try:
            _register_module(plugins, importlib.import_module(module_name), module_name)
        except (Exception, SystemExit) as error:  # noqa: BLE001
            _fail(plugins, module_name, error)
    _fill_registries(plugins)
    return plugins


def _bench_version() -> str:
    from bench import __version__

    return __version__


@cache
def get_plugins() -> Plugins:
    """The process-wide plugin set (loaded once)."""
    return load_plugins()


def get(kind: str, name: str):
    """Shortcut: the registry entry of a component by kind and name or alias."""
    return get_plugins().registry(kind).get(name)


class DataRootError(ValueError):
    """``--data-root`` given to a dataset that reads no folder."""


def check_data_root(
    data: str, factory: Callable[..., Any], data_root: str | None, images_dir: str | None = None
) -> None:
    """Refuse ``--data-root`` (and ``--images-dir``) for a dataset whose factory takes no such
    option: the factory would drop it without a word (the synthetic set keeps only its own options),
    and the training, judge or FID reference would use other data than the folder named."""
    if images_dir and not data_root:
        raise DataRootError(
            f"--images-dir {images_dir} goes with --data-root, the folder of train.json and objects.json"
        )
    if not data_root:
        return
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataRootError(f"--data-root {data_root} does not exist")
    if not root.is_dir():
        raise DataRootError(
            f"--data-root {data_root} is a file; name the folder that holds train.json and objects.json"
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: let the factory decide
        return
    if images_dir and "images_dir" not in params:
        raise DataRootError(f"--data {data} takes no --images-dir: its folder holds its own images")
    if "data_root" not in params:
        raise DataRootError(
            f"--data {data} takes no --data-root: it would use its own data, not {data_root}. "
            f"Drop --data-root, or use a folder in the i-CLEVR format with --data iclevr --data-root {data_root}"
        )
