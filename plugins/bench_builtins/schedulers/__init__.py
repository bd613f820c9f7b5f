"""Built-in schedulers plugin."""

from bench import hookimpl


@hookimpl
def register_schedulers(register):
    pass
