"""Fails at import: a dependency that is not installed."""

import bench_this_module_does_not_exist  # noqa: F401

from bench import hookimpl


@hookimpl
def register_schedulers(register):
    register("never-registered", lambda train_config, **options: None)
