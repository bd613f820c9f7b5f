"""Built-in datasets plugin: ``iclevr`` (a user's folder in the real format) and
``synthetic`` (the procedural stand-in, rendered locally and cached).

Both return an ``ImageConditionDataset``: items ``(image (3, 64, 64) in [-1, 1], multi-hot (24,))``,
attributes ``labels``, ``image_size``, ``conditions``, ``files``, and ``images_uint8()`` (the whole
set as one uint8 tensor for training on a GPU). torch is imported inside the factories.
"""

from __future__ import annotations

from bench import hookimpl


def make_iclevr(
    data_root=None,
    train_json=None,
    objects_json=None,
    images_dir=None,
    image_size: int = 64,
    cache_dir=None,
    use_cache: bool = True,
    **_options,
):
    """A folder in the i-CLEVR layout: train.json, objects.json, PNGs beside or in images/."""
    from bench_builtins.datasets.folder import load_iclevr_folder

    return load_iclevr_folder(
        data_root,
        train_json=train_json,
        objects_json=objects_json,
        images_dir=images_dir,
        image_size=image_size,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )


def make_synthetic(**options):
    """Procedural CLEVR-like renders (default 6003 scenes x 3 frames), cached after the first run.

    Options: those of ``load_synthetic`` (scenes, seed, split, max_objects, min_objects, frames,
    image_size, device, cache_dir, use_cache); options meant for other datasets are ignored.
    """
    import inspect

    from bench_builtins.datasets.synthetic.dataset import load_synthetic

    accepted = inspect.signature(load_synthetic).parameters
    return load_synthetic(**{k: v for k, v in options.items() if k in accepted})


@hookimpl
def register_datasets(register):
    register("iclevr", make_iclevr, aliases=("i-clevr",))
    register("synthetic", make_synthetic, aliases=("synthetic-iclevr",))
