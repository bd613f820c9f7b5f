"""Built-in models plugin."""

from bench import hookimpl


@hookimpl
def register_models(register):
    pass
