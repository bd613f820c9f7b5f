"""Built-in datasets plugin."""

from bench import hookimpl


@hookimpl
def register_datasets(register):
    pass
