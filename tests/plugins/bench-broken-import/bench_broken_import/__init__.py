"""Fails at import: a dependency that is not installed."""

from bench import hookimpl
import bench_this_module_does_not_exist  # noqa: F401


@hookimpl
def register_schedulers(register):
    register("never-registered", lambda train_config, **options: None)
