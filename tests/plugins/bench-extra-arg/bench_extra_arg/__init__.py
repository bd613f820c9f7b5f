"""Its hook takes an argument, ``extra``, that the hook spec lacks."""

from bench import hookimpl


@hookimpl
def register_schedulers(register, extra):
    register("extra-arg", lambda train_config, **options: None)
