"""Implements ``register_scheduler`` (singular): a hook that does not exist."""

from bench import hookimpl


@hookimpl
def register_scheduler(register):
    register("misspelled", lambda train_config, **options: None)
