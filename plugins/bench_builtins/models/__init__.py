"""Built-in models plugin: ``ddpm-unet``."""

from bench import hookimpl
from bench_builtins.models.ddpm_unet import make_ddpm_unet


@hookimpl
def register_models(register):
    register("ddpm-unet", make_ddpm_unet)
