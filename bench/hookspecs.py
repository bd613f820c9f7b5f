"""Every hook a bench plugin can implement.

Each component hook receives one argument, ``register``, a callback with the signature
``register(name: str, factory: Callable, aliases: Sequence[str] = ()) -> None``. The
registry remembers which plugin registered each name. Factories are called lazily, only
when a command needs the component, so plugin modules import nothing heavy (torch,
diffusers, torchvision) at top level: they import it inside the factory.

The factory contracts below are public API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from bench import hookspec


class Register(Protocol):
    """The callback every component hook receives."""

    def __call__(self, name: str, factory: Callable, aliases: Sequence[str] = ()) -> None: ...


@hookspec
def register_models(register: Register) -> None:
    """Register model factories.

    Contract: ``factory(preset: str | None = None, **config) -> torch.nn.Module``. The module's
    ``forward(sample, timesteps, conditions)`` returns the prediction (the noise, or v under
    ``prediction_type="v_prediction"``, as the noise config says), a tensor of ``sample``'s
    shape, for ``sample`` (B, C, H, W) at integer ``timesteps`` (B,) under multi-hot
    ``conditions`` (B, num_labels), and its attribute ``config`` is a JSON-serialisable dict
    such that ``factory(**config)`` rebuilds the same architecture (it is stored in every
    checkpoint; training refuses a model without it). ``config["sample_size"]`` and
    ``config["in_channels"]`` give the shape ``bench run`` samples (else 64 and 3); ``bench train``
    refuses data of another size. ``preset`` names a set of defaults; keyword arguments override
    them. A factory may carry ``factory.presets`` (names) and ``factory.default_checkpoint`` (a
    zero-argument callable returning the path of shipped weights, or None).
    """


@hookspec
def register_schedulers(register: Register) -> None:
    """Register noise-scheduler factories.

    Contract (exactly)::

        def make_my_ddim(train_config, **options):
            '''train_config: the noise-schedule config the model was trained with (a dict
            that diffusers' from_config accepts). Returns a NEW diffusers scheduler on every
            call.'''

    Not a diffusers scheduler? The sampling loop reads ``config``, ``set_timesteps(steps)``,
    ``timesteps`` (set by it), ``init_noise_sigma``, ``scale_model_input(x, t)`` and ``step(out, t, x,
    return_dict=False, generator=...)`` (``generator`` only where ``step`` takes it) returning a
    tuple whose first item is the next ``x``; a factory whose scheduler lacks one is refused
    before any cell.

    A scheduler that defines a training noise schedule of its own (for example ``cosine``
    or ``linear``) says so with the attribute ``factory.noise_schedule``: a dict of the
    diffusers config keys it fixes (e.g. ``{"beta_schedule": "squaredcos_cap_v2"}``).
    ``bench train --scheduler NAME`` trains with that schedule, and ``bench run`` refuses to
    sample a checkpoint trained with another schedule unless ``--allow-schedule-mismatch``.
    A factory may set ``factory.default_steps`` (int) for its default number of steps (else 50).
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluator factories.

    Contract: ``factory(**options) -> evaluator`` where ``evaluator(images, conditions)``
    returns a dict of metric name -> finite number (a 0-dim tensor is read as its number), or
    name -> dict of label -> number (``acc_per_label``); anything else, and a name another
    evaluator of the row gave, is recorded as ``<evaluator>_error`` and makes ``bench run`` exit 1.
    ``images`` is a float tensor (B, 3, H, W) with values in [-1, 1]; ``conditions`` is the
    multi-hot float tensor (B, num_labels). Options the harness passes: ``device``, ``labels``
    (the label names in condition index order), ``judge`` and ``fid_weights`` (paths, when
    given). A factory with the attribute ``needs_reference = True`` (the built-in ``fid`` and
    ``kid`` have it) also gets ``dataset`` (the reference images: held-out renders, or the
    user's folder) and ``ref_n`` (how many of them to use). An evaluator ignores options it does
    not use (accept ``**options``). Metric names
    carry their variant (``fid-judge`` is never called ``fid``) and a sample count where it
    matters (``fid_n``).

    Optional: ``factory.min_images``, the fewest images per condition set it can judge (FID and
    KID: 2); ``bench run`` refuses a smaller set before any work.
    Optional: ``evaluator.lower_is_better`` (or ``factory.lower_is_better``), the names of its
    metrics where lower is better, or
    one name as a string (``bench report`` marks them ↓; the FID, KID, LPIPS and loss families are
    known already). Each evaluator gets its own copy of ``images`` and ``conditions``.
    Optional: ``evaluator.misses(images, conditions)`` returns, for each image in which an object
    of its condition was not found, ``(index, [missed label names], [label names found instead])``;
    ``bench run`` then draws those images as ``<set>_misses.png`` (the first evaluator that has the
    method does).
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset factories.

    Contract: ``factory(**options) -> dataset`` where ``dataset`` is a sized, indexable
    collection (a ``torch.utils.data.Dataset``) whose items are ``(image, condition)``:
    ``image`` a float tensor (3, H, W) in [-1, 1], ``condition`` a multi-hot float tensor.
    It exposes ``labels`` (list of label names in index order) and ``image_size`` (int).
    Options the harness passes: ``data_root`` (``--data-root``) and ``images_dir``
    (``--images-dir``), each only when given; the built-in ``synthetic`` also gets ``scenes``,
    ``max_objects``, ``seed`` and ``split``. A factory that reads a folder names ``data_root`` (and
    ``images_dir``) as parameters: ``--data-root`` is refused for a factory whose signature lacks
    it (``**options`` alone is not enough), so that a folder given is never silently dropped.
    """


@hookspec
def register_reporters(register: Register) -> None:
    """Register report renderers.

    Contract: ``factory(**options) -> reporter`` where ``reporter(report)`` returns the
    rendered text for a :class:`bench.report.Report` (its tables, and for rich formats its
    plot and image grids). The reporter's registered name is the ``--format`` value.
    """
