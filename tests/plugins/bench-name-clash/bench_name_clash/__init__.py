"""Registers ``cosine``, a name the built-in schedulers plugin already owns."""

from bench import hookimpl


@hookimpl
def register_schedulers(register):
    register("cosine", make_cosine)


def make_cosine(train_config, **options):
    """A second cosine: must be refused, naming both plugins."""
    raise AssertionError("never called")
