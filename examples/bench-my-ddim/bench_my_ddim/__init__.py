"""An example bench scheduler plugin: DDIM, registered as ``my-ddim``."""

from bench import hookimpl


@hookimpl
def register_schedulers(register):
    register("my-ddim", make_my_ddim, aliases=("myddim",))


def make_my_ddim(train_config, **options):
    """train_config: the noise-schedule config the model was trained with (a dict that
    diffusers' from_config accepts). Returns a NEW diffusers scheduler on every call."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_config, **options)
