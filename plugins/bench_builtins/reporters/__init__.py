"""Built-in reporters plugin."""

from bench import hookimpl


@hookimpl
def register_reporters(register):
    pass
