"""Built-in evaluators plugin."""

from bench import hookimpl


@hookimpl
def register_evaluators(register):
    pass
