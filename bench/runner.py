"""``bench run``: every cell of the matrix (scheduler x steps x guidance x seed), sampled,
timed, judged and written as result rows. A failing cell records its error and the rest go on
(``bench run`` then exits 1). What would fail every cell (an unknown name, too many steps for a
scheduler, another noise schedule) fails the run before any work; a repeated matrix value runs once.

Guidance not given: the checkpoint's recommended sampling settings (``sampling_defaults`` in
its metadata: guidance and guidance interval), else 1 (off)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.atomic import why_unwritable
from bench.conditions import ConditionSet, load_condition_set, load_labels_spec, multi_hot
from bench.distributed import (
    all_gather,
    barrier,
    finish,
    gather,
    process_device,
    resolve_device,
    shard,
    world,
)
from bench.guidance import (
    GuidanceIntervalError,
    check_interval,
    check_interval_reaches,
    check_scale,
    format_interval,
)
from bench.plugins import (
    Plugins,
    check_data_root,
    debug_traceback,
    get_plugins,
    is_bench_error,
    plugin_failure,
    raised_where,
)
from bench.results import SPEED_SWITCHES, Row, RunResult, checked_metrics, environment, largest_costs
from bench.run_resume import REPLACED_RESULTS, finished_cells, remove_replaced_outputs

if TYPE_CHECKING:  # torch is imported only when a run starts
    from bench.sampling import SampleResult

DENOISING_CONDITION = ["red sphere", "cyan cylinder", "cyan cube"]
SHIPPED_CONDITIONS_DIR = Path(__file__).resolve().parent.parent / "plugins" / "bench_builtins" / "conditions"
DEFAULT_CONDITION_FILES = (SHIPPED_CONDITIONS_DIR / "test.json", SHIPPED_CONDITIONS_DIR / "new_test.json")


class RunError(Exception):
    """A problem with the run as a whole (not one cell): bad checkpoint, no conditions..."""


@dataclass
class RunConfig:
    """Every option that changes the output of ``bench run``."""

    model: str = "ddpm-unet"
    checkpoint: str | None = None  # a path, "random" (untrained, for speed), or None: the shipped default
    preset: str | None = None  # only with checkpoint="random"
    schedulers: list[str] = field(default_factory=lambda: ["cosine"])
    steps: list[int | None] = field(default_factory=lambda: [None])  # None: the scheduler's default
    seeds: list[int] = field(default_factory=lambda: [0])
    # None: not given, the checkpoint's recommended guidance (its sampling defaults), else [1.0]
    guidance: list[float] | None = None
    # (lo, hi) training timesteps where guidance applies; None: the checkpoint's recommended
    # interval when its guidance is used, else every step
    guidance_interval: tuple[float, float] | None = None
    condition_files: list[str] = field(default_factory=list)
    data: str = "synthetic"
    data_root: str | None = None
    images_dir: str | None = None  # the folder's PNGs, where they are not found beside train.json
    evaluators: list[str] = field(default_factory=lambda: ["iclevr-acc", "fid"])
    judge: str | None = None
    fid_weights: str | None = None
    ref_n: int = 500
    batch_size: int | None = None
    device: str = "auto"
    dtype: str | None = None  # None: the device's default (SamplingOptions.resolved)
    compile: bool | None = None
    cuda_graphs: bool | None = None
    channels_last: bool | None = None
    cudnn_benchmark: bool | None = None
    autotune: bool | None = None
    tune_kernels: bool | None = None
    group_norm_by_views: bool | None = None
    group_norm_by_channel_stats: bool | None = None
    fold_upsample: bool | None = None
    attention_by_sums: bool | None = None
    pad_thin_convs: bool | None = None
    freeze_weights: bool | None = None
    noise_ahead: bool | None = None
    triton_end_convs: bool | None = None
    allow_schedule_mismatch: bool = False
    denoising_figure: bool = True
    save_images: bool = True
    out_dir: str = "runs/latest"
    resume: bool = False  # keep the finished cells of out_dir's results.json (bench/run_resume.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _beyond_training(sets: list[ConditionSet], meta: dict[str, Any]) -> str | None:
    """A note when conditions name more objects than the checkpoint's training scenes held: its
    accuracy there measures extrapolation. Known for the synthetic set (its max_objects, 3 by
    default; checkpoints that did not record their data were trained on it) and i-CLEVR (1-3)."""
    if "train_config" not in meta:
        return None  # random weights: no training scenes
    train = meta["train_config"] or {}
    data = train.get("data") or "synthetic"
    if data not in ("synthetic", "iclevr"):
        return None  # data whose scenes are not known
    options = train.get("data_options") or {}
    most = int(options.get("max_objects", 3)) if data == "synthetic" else _iclevr_most_objects(train)
    over = [(s.name, sum(len(c) > most for c in s.conditions), len(s)) for s in sets]
    counts = ", ".join(f"{name} {n} of {total}" for name, n, total in over if n)
    if not counts:
        return None
    return (
        f"conditions with more than {most} objects ({counts}): the checkpoint trained on {data} scenes of "
        f"at most {most}, so its accuracy there measures extrapolation"
    )


def _iclevr_most_objects(train: dict[str, Any]) -> int:
    """The most objects an i-CLEVR-format training set named in one scene: read off its train.json
    where that file is still there (a user's folder may hold more than the task's 3), else 3."""
    from bench.jsonfile import read_json

    options = train.get("data_options") or {}
    path = options.get("train_json") or (
        Path(train["data_root"]) / "train.json" if train.get("data_root") else None
    )
    try:
        scenes = read_json(Path(path), ValueError) if path else None
        return max(len(labels) for labels in scenes.values())
    except (OSError, ValueError, AttributeError, TypeError):  # gone, unreadable or not the format
        return 3


def default_condition_files(data_root: str | None) -> list[str]:
    """Without --conditions: the test.json and new_test.json of the --data-root folder (a user's
    course files), those it holds only; the shipped copies when it holds neither or none is named.
    Never one of each: a shipped set scored under the name of the user's would pass for theirs."""
    root = Path(data_root).expanduser() if data_root else None
    own = [root / p.name for p in DEFAULT_CONDITION_FILES if root is not None and (root / p.name).is_file()]
    return [str(p) for p in own or DEFAULT_CONDITION_FILES]


def _condition_sets(
    config: RunConfig, labels: list[str], log: Callable[[str], None] = print
) -> list[ConditionSet]:
    files = config.condition_files or default_condition_files(config.data_root)
    if not config.condition_files and config.data_root:
        own = [f for f in files if Path(f).parent != SHIPPED_CONDITIONS_DIR]
        lacking = [
            p.name for p in DEFAULT_CONDITION_FILES if own and p.name not in {Path(f).name for f in own}
        ]
        log(
            f"condition sets: {', '.join(files)}"
            + ("" if own else f" (none in {config.data_root}: the shipped ones)")
            + (f" ({', '.join(lacking)} not in {config.data_root}: not scored)" if lacking else "")
        )
    sets = [load_condition_set(f, labels) for f in files]
    names = [s.name for s in sets]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise RunError(f"two condition files share the set name(s) {sorted(dupes)}; rename one file")
    return sets


def _check_set_sizes(config: RunConfig, plugins: Plugins, sets: list[ConditionSet]) -> None:
    """An evaluator that needs several images per condition set (``factory.min_images``: FID's and
    KID's statistics need two) refuses a smaller set before any work, not after every cell sampled."""
    for name in config.evaluators:
        entry = plugins.registry("evaluators").get(name)
        least = int(getattr(entry.factory, "min_images", 1))
        small = [f"{s.name} ({len(s.conditions)})" for s in sets if len(s.conditions) < least]
        if small:
            raise RunError(
                f"--evaluators {entry.name} needs at least {least} images per condition set; "
                f"{', '.join(small)} has fewer: add conditions, or leave {entry.name} out"
            )


def _check_request(config: RunConfig, plugins: Plugins) -> None:
    """Check what the run asks for before any work: a misspelt plugin name fails at once, with its
    close matches, and so do step counts and guidance scales that mean nothing, not after the
    weights load, the FID reference renders and the other cells sample."""
    # An empty list runs no cell and would overwrite results.json with no rows.
    for option, values in (
        ("--scheduler", config.schedulers),
        ("--steps", config.steps),
        ("--seeds", config.seeds),
        ("--guidance", config.guidance),
    ):
        if values is not None and not list(values):
            raise RunError(f"{option} is empty: the matrix would have no cell; give at least one value")
    negative = [seed for seed in config.seeds if seed < 0]
    if negative:  # its images' folder would read seed-1, as if a range; bench data and train take >= 0 too
        raise RunError(f"--seeds {negative[0]}: seeds are 0 or more")
    _check_out_dir(Path(config.out_dir))
    if config.preset is not None and config.checkpoint != "random":
        # A checkpoint carries its architecture: a preset would be silently ignored.
        raise RunError(f"--preset {config.preset} applies only with --checkpoint random (untrained weights)")
    data = plugins.registry("datasets").get(config.data)  # the FID reference's dataset
    check_data_root(data.name, data.factory, config.data_root, config.images_dir)
    if config.ref_n < 2:  # FID's covariance needs two images at least
        raise RunError(f"--ref-n must be at least 2, got {config.ref_n}")
    for scale in config.guidance or []:
        check_scale(scale, "--guidance")
    for kind, names in (
        ("models", [config.model]),
        ("schedulers", config.schedulers),
        ("evaluators", config.evaluators),
        ("datasets", [config.data]),
    ):
        for name in names:
            plugins.registry(kind).get(name)
    from bench.sampling import check_steps  # the rule sampling itself applies

    for steps in config.steps:
        if steps is not None:
            check_steps(steps)


def _check_out_dir(out_dir: Path) -> None:
    """--out must be (or become) a folder that can be written: a file there, or above it, or a
    read-only folder was a traceback after the model had loaded and the first cell sampled."""
    problem = why_unwritable(out_dir)
    if problem:
        raise RunError(f"--out {out_dir}: {problem}; give a folder bench run can write results.json into")


def unique_matrix(config: RunConfig, plugins: Plugins) -> tuple[RunConfig, str | None]:
    """``config`` with each matrix value once, in the given order, and every scheduler under its
    registered name; and a note naming what was dropped (None when nothing was). A repeated value
    ran the same cell twice and counted its images twice in n; an alias (dpmpp2m for dpm++2m)
    gave one scheduler two row names, so rows of runs that spelt it otherwise did not merge."""
    registry = plugins.registry("schedulers")
    dropped: list[str] = []

    def unique(values: list[Any], option: str, key: Callable, show: Callable = str) -> list[Any]:
        kept: list[Any] = []
        for value in values:
            if key(value) in kept:
                dropped.append(f"{option} {show(value)}")
            else:
                kept.append(key(value))
        return kept

    schedulers = unique(
        config.schedulers,
        "--scheduler",
        lambda n: registry.get(n).name,
        lambda n: n if registry.get(n).name == n else f"{n} (= {registry.get(n).name})",
    )
    steps = unique(config.steps, "--steps", lambda n: n)
    seeds = unique(config.seeds, "--seeds", int)
    guidance = None
    if config.guidance is not None:
        guidance = unique(config.guidance, "--guidance", float, lambda g: f"{g:g}")
    unique_config = replace(config, schedulers=schedulers, steps=steps, seeds=seeds, guidance=guidance)
    note = f"dropped repeated matrix values (each cell runs once): {', '.join(dropped)}" if dropped else None
    return unique_config, note


def _check_cells(config: RunConfig, plugins: Plugins, train_noise: dict[str, Any]) -> None:
    """What would fail in every cell of a scheduler, known once the trained noise schedule is: a
    scheduler on other betas (without --allow-schedule-mismatch), and a step count the scheduler
    refuses (diffusers' DDPM and DDIM take at most num_train_timesteps steps; DPM-Solver++, UniPC,
    Euler and Heun take more), so each scheduler is asked itself, as its cells would ask it."""
    from bench.noise import ScheduleMismatchError, check_schedule_compatible
    from bench.sampling import resolve_steps

    for name in config.schedulers:
        entry = plugins.registry("schedulers").get(name)
        _check_scheduler_factory(name, entry, train_noise)
        try:
            check_schedule_compatible(train_noise, entry, config.allow_schedule_mismatch)
        except ScheduleMismatchError as error:
            raise RunError(f"--scheduler {name}: {error}") from None
        for steps in config.steps:
            steps = resolve_steps(entry, steps)
            try:
                error = _refusal(entry.factory, train_noise, steps)
            except Exception as bug:  # noqa: BLE001 - a plugin's bug, said in one line
                raise plugin_failure(f"--scheduler {name}", entry, bug, call="its set_timesteps") from None
            if error is None:
                continue
            trained = train_noise.get("num_train_timesteps")
            if trained is not None and steps > int(trained):
                takers = [
                    e.name for e in plugins.registry("schedulers") if _takes(e.factory, train_noise, steps)
                ]
                raise RunError(
                    f"--steps {steps}: scheduler {name!r} samples at most {trained} steps, the "
                    f"checkpoint's training timesteps; use --steps {trained} or fewer"
                    + (f", or a scheduler that takes more ({', '.join(takers)})" if takers else "")
                ) from None
            raise RunError(f"--steps {steps} with --scheduler {name}: {error}") from None


def _check_scheduler_factory(name: str, entry: Any, train_noise: dict[str, Any]) -> None:
    """A plugin's scheduler factory that fails or returns no scheduler: one line naming the plugin,
    before any cell, instead of a traceback from inside the sampling loop."""
    try:
        scheduler = entry.factory(train_noise)
    except Exception as error:  # noqa: BLE001 - a plugin's bug, said in one line
        raise plugin_failure(f"--scheduler {name}", entry, error) from None
    # What the sampling loop reads (sampling._run_chunk), so that a toy scheduler lacking one is
    # refused here rather than failing every cell with an AttributeError.
    from bench.sampling import SCHEDULER_ATTRIBUTES

    missing = [a for a in SCHEDULER_ATTRIBUTES if not hasattr(scheduler, a)]
    if missing:
        raise RunError(
            f"--scheduler {name}: its factory (plugin {entry.plugin!r}) returned {type(scheduler).__name__}, "
            f"not a diffusers scheduler (no {', '.join(missing)}); see register_schedulers in bench/hookspecs.py"
        )


def _refusal(factory: Callable, train_noise: dict[str, Any], steps: int) -> ValueError | None:
    """The scheduler's own refusal of ``steps`` (a ValueError, as a cell would meet it), None when it
    takes them; any other exception is the scheduler's bug and propagates."""
    try:
        factory(train_noise).set_timesteps(steps)
    except ValueError as error:
        return error
    return None


def _takes(factory: Callable, train_noise: dict[str, Any], steps: int) -> bool:
    """Whether a scheduler can be offered for ``steps``: a broken one cannot."""
    try:
        return _refusal(factory, train_noise, steps) is None
    except Exception:  # noqa: BLE001 - not offered, whatever its bug
        return False


def _used_plugin_versions(config: RunConfig, plugins: Plugins) -> dict[str, str]:
    """Name -> version of the installed plugins whose components this run uses (model, schedulers,
    evaluators, dataset): what --resume requires unchanged. Every loaded plugin was recorded, so
    installing an unrelated one refused the resume of a run that never touched it."""
    used = {
        plugins.registry(kind).get(name).plugin
        for kind, names in (
            ("models", [config.model]),
            ("schedulers", config.schedulers),
            ("evaluators", config.evaluators),
            ("datasets", [config.data]),
        )
        for name in names
    }
    return {name: version for name, version in plugins.external_versions().items() if name in used}


def _about_the_preset(error: Exception) -> bool:
    """A factory's refusal of the preset (a ValueError, or a TypeError for a factory without a
    ``preset`` argument), not a bug inside it (a TypeError of its own arithmetic was blamed on
    --preset before)."""
    return isinstance(error, ValueError) or (isinstance(error, TypeError) and "preset" in str(error))


def _load_model(config: RunConfig, plugins: Plugins, device: str):
    from bench.checkpoints import load_model

    entry = plugins.registry("models").get(config.model)
    if config.checkpoint == "random":
        import torch

        # Seeded: the same untrained weights in every run and in every process of a launch.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                model = entry.factory(preset=config.preset)
            except Exception as error:  # noqa: BLE001 - one line
                if config.preset is not None and _about_the_preset(error):
                    raise RunError(f"--preset {config.preset}: {error}") from None  # as `bench train`
                raise plugin_failure(f"--model {config.model}", entry, error) from None
        from bench.noise import noise_config

        return (
            model.to(device).eval(),
            noise_config("cosine"),
            {"checkpoint": "random", "preset": config.preset},
        )
    path = config.checkpoint
    if path is None:
        default = getattr(entry.factory, "default_checkpoint", None)
        if default is None:
            raise RunError(
                f"model {entry.name!r} ships no default weights; pass --checkpoint PATH (or 'random')"
            )
        path = default()
    model, noise, meta = load_model(path, device=device)
    held = meta.get("model_name")
    if held is not None and plugins.registry("models").get(held).name != entry.name:  # aliases agree
        # The checkpoint builds its own model: rows labelled --model's name would name another one.
        raise RunError(
            f"--model {config.model}, but {path} holds a {held!r} model: pass --model {held} "
            "(its results rows are labelled with it)"
        )
    meta = {**meta, "checkpoint": str(path)}
    return model.eval(), noise, meta


@dataclass
class GuidanceChoice:
    """The guidance a run uses, and where it came from."""

    guidance: list[float]
    interval: tuple[float, float] | None
    source: str  # "option" (--guidance), "checkpoint" (its sampling defaults), "default" (off)
    note: str | None = None  # a line for the user, when the checkpoint decided or an option is moot


def resolve_guidance(config: RunConfig, meta: dict[str, Any]) -> GuidanceChoice:
    """``--guidance`` when given; else the checkpoint's ``sampling_defaults`` (guidance, and its
    interval unless ``--guidance-interval`` is given); else 1 (off)."""
    try:
        interval = check_interval(config.guidance_interval, "--guidance-interval")
    except GuidanceIntervalError as error:
        raise RunError(str(error)) from error
    defaults = meta.get("sampling_defaults") or {}
    if config.guidance is not None:
        choice = GuidanceChoice(list(config.guidance), interval, "option")
    elif defaults.get("guidance") is not None:
        guidance = float(defaults["guidance"])
        own = interval is not None
        if not own and defaults.get("guidance_interval") is not None:
            interval = check_interval(defaults["guidance_interval"])
        choice = GuidanceChoice([guidance], interval, "checkpoint")
        if guidance != 1.0:
            if interval is None:
                choice.note = f"guidance {guidance:g} from the checkpoint's sampling defaults"
            elif own:
                choice.note = (
                    f"guidance {guidance:g} from the checkpoint's sampling defaults "
                    f"(interval {format_interval(interval)} from --guidance-interval)"
                )
            else:
                choice.note = (
                    f"guidance {guidance:g} and interval {format_interval(interval)} "
                    "from the checkpoint's sampling defaults"
                )
            choice.note += "; --guidance 1 turns guidance off"
    else:
        choice = GuidanceChoice([1.0], interval, "default")
    if config.guidance_interval is not None and choice.guidance and all(g == 1.0 for g in choice.guidance):
        choice.note = (
            f"--guidance-interval {format_interval(interval)} has no effect: guidance is 1 (off); "
            "pass --guidance 3 (or another scale) to guide"
        )
    return choice


def make_evaluators(
    config: RunConfig,
    plugins: Plugins,
    device: str,
    labels: list[str],
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """The evaluators `config` names, by name, built once: those whose factory sets
    ``needs_reference`` (FID, KID, a plugin's) share one reference set (held-out renders for
    synthetic data, the user's folder otherwise), loaded only when one of them runs. ``log`` hears of options
    that change less than asked (a judge given to no evaluator, a reference smaller than --ref-n)."""
    if not config.evaluators and (config.judge or config.fid_weights):
        given = " and ".join(
            f for f, v in (("--judge", config.judge), ("--fid-weights", config.fid_weights)) if v
        )
        log(f"{given} ha{'ve' if ' and ' in given else 's'} no effect with --evaluators none")
    evaluators = {}
    reference = None
    for name in config.evaluators:
        entry = plugins.registry("evaluators").get(name)
        options: dict[str, Any] = {"device": device, "labels": labels}
        if config.judge:
            options["judge"] = config.judge
        if config.fid_weights:
            options["fid_weights"] = config.fid_weights
        if getattr(entry.factory, "needs_reference", False):  # FID-like: built-in or a plugin's
            if reference is None:
                reference = _reference_dataset(config, plugins)
                if len(reference) < config.ref_n:  # FID then uses every image it has: say so once
                    log(
                        f"--ref-n {config.ref_n}: the reference holds {len(reference)} images; "
                        "the evaluators that compare with it use those"
                    )
            options.update(dataset=reference, ref_n=config.ref_n)
        try:
            evaluators[entry.name] = entry.factory(**options)
        except TypeError as error:
            if "unexpected keyword argument" not in str(error):
                raise plugin_failure(f"evaluator {name!r}", entry, error) from None
            # A plugin factory that does not take the options every evaluator is given.
            raise RunError(
                f"evaluator {name!r} (plugin {entry.plugin!r}): {error}; an evaluator factory takes "
                "**options and ignores those it does not use (register_evaluators in bench/hookspecs.py)"
            ) from None
        except Exception as error:  # noqa: BLE001 - said in one line, naming the plugin
            raise plugin_failure(f"evaluator {name!r}", entry, error) from None
    return evaluators


def _reference_dataset(config: RunConfig, plugins: Plugins):
    """Real images for FID: held-out renders for synthetic data, the user's folder otherwise."""
    entry = plugins.registry("datasets").get(config.data)
    if entry.name == "synthetic":
        scenes = -(-config.ref_n // 3)
        return entry.factory(split="heldout", scenes=scenes)
    folder = {"images_dir": config.images_dir} if config.images_dir else {}
    return entry.factory(data_root=config.data_root, **folder)


@dataclass
class _Run:
    """What every cell of one ``bench run`` shares: loaded once, passed as one object."""

    config: RunConfig
    plugins: Plugins
    device: str
    model: Any
    train_noise: dict[str, Any]
    meta: dict[str, Any]
    labels: list[str]
    sets: list[ConditionSet]
    guidance: GuidanceChoice
    conditions: Any  # (N, 24) multi-hot of every set, concatenated
    spans: dict[str, tuple[int, int]]  # set name -> its rows in ``conditions``
    options: Any  # resolved SamplingOptions
    evaluators: dict[str, Any]
    out_dir: Path
    log: Any
    rank: int = 0
    size: int = 1
    # guided (doubled batch) or not -> (peak CUDA MB or None, seconds before the clock) of the
    # untimed warm-up at that batch shape: compile and CUDA-graph capture happen there, and a
    # graph's private pool is allocated there
    warm_ups: dict[bool, tuple[float | None, float]] = field(default_factory=dict)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def warm_up_figures(self, result: SampleResult, guidance: float) -> tuple[float | None, float]:
        """A cell's peak CUDA memory and seconds before its clock started: its own sampling call's,
        or its batch shapes' warm-up's where larger. A replayed CUDA graph allocates almost nothing
        (session 20's guided compiled cell read 521 MB without this, 3,573 with it, 7,424 eager),
        and the compile happened in the warm-up."""
        guided = guidance != 1.0
        shapes = {guided, False} if guided and _interval(self, guidance) else {guided}
        own = (result.peak_memory_mb, result.warmup_seconds)
        return largest_costs([own, *(self.warm_ups[g] for g in shapes if g in self.warm_ups)])


def run(config: RunConfig, plugins: Plugins | None = None, log=print) -> RunResult | None:
    """Run every cell of the matrix and write ``results.json`` into ``config.out_dir``.

    Under ``accelerate launch``/``torchrun`` with several processes each process samples its
    contiguous shard of every cell (the same images as one process: seeds are per image) and the
    main process gathers them, evaluates, writes every file and returns the result; the other
    processes return None.
    """
    from bench.sampling import SamplingOptions, resolve_steps

    plugins = plugins or get_plugins()
    _check_request(config, plugins)
    config, note = unique_matrix(config, plugins)
    device = resolve_device(config.device)
    rank, size = world(device)
    device = process_device(device)
    if note and rank == 0:
        log(note)
    labels = load_labels_spec()
    sets = _condition_sets(config, labels, log if rank == 0 else _quiet)
    _check_set_sizes(config, plugins, sets)
    options = SamplingOptions(
        dtype=config.dtype,
        channels_last=config.channels_last,
        compile=config.compile,
        cuda_graphs=config.cuda_graphs,
        **{switch: getattr(config, switch) for switch in SPEED_SWITCHES},
    ).resolved(device)
    if config.cudnn_benchmark and device == "cpu" and rank == 0:
        log("--cudnn-benchmark has no effect on a CPU (cuDNN is a GPU library)")
    if config.dtype is None and options.dtype == "bf16" and device == "cpu" and rank == 0:
        # The same command gives other (equally good) images on a CPU without AMX: say why.
        log("bf16 autocast: this CPU has AMX (bf16 in hardware); --dtype fp32 for the fp32 path")
    # Before the model loads: impossible options (a --batch-size of 0, --cuda-graphs on a CPU) fail
    # at once. The chunk size stays as given (None: sample() picks it per cell, guided cells on the CPU
    # take half as many images), so the result rows record the size each cell ran with.
    options = replace(options, batch_size=config.batch_size)
    model, train_noise, meta = _load_model(config, plugins, device)
    _check_cells(config, plugins, train_noise)  # before the judges load and any cell samples
    # here: importing bench.runner must not import torch
    from bench.attention import switchable_attentions
    from bench.end_convs import triton_end_convs
    from bench.padded_conv import paddable_convs
    from bench.upsample import foldable_upsamplers

    # A model-level switch asked for (by default it goes unsaid) on a model with nothing to switch.
    nothing_to_switch = {
        "fold_upsample": (foldable_upsamplers, "no nearest-2x + 3x3 upsampling to fold"),
        "pad_thin_convs": (paddable_convs, "no convolution off a multiple of 8 channels"),
        "attention_by_sums": (switchable_attentions, "no diffusers attention to rewrite"),
        "triton_end_convs": (triton_end_convs, "no thin 3x3 end convolution the kernels take"),
    }
    for switch, (count, lacks) in nothing_to_switch.items():
        if getattr(config, switch) and rank == 0 and not count(model):
            flag = "--" + switch.replace("_", "-")
            log(f"{flag}: this model has {lacks}; it samples as it is")
    if config.attention_by_sums and not options.compile and rank == 0 and switchable_attentions(model):
        log("--attention-by-sums without compile writes its products out: slower than torch's kernel")
    if config.group_norm_by_channel_stats and not options.compile and rank == 0:
        log(
            "--group-norm-by-channel-stats without compile runs as several kernels: slower than nn.GroupNorm's one"
        )
    guidance = resolve_guidance(config, meta)
    if any(g != 1.0 for g in guidance.guidance):
        what = (
            "--guidance-interval"
            if config.guidance_interval is not None
            else "the checkpoint's guidance interval"
        )
        try:
            check_interval_reaches(guidance.interval, train_noise.get("num_train_timesteps", 1000), what)
        except GuidanceIntervalError as error:
            raise RunError(str(error)) from None
    if guidance.note and rank == 0:
        log(guidance.note)
    beyond = _beyond_training(sets, meta)
    if beyond and rank == 0:
        log(beyond)
    spans, start = {}, 0
    for s in sets:
        spans[s.name] = (start, start + len(s.conditions))
        start += len(s.conditions)
    ctx = _Run(
        config=config,
        plugins=plugins,
        device=device,
        model=model,
        train_noise=train_noise,
        meta=meta,
        labels=labels,
        sets=sets,
        guidance=guidance,
        conditions=multi_hot([c for s in sets for c in s.conditions], labels),
        spans=spans,
        options=options,
        evaluators=make_evaluators(config, plugins, device, labels, log) if rank == 0 else {},
        out_dir=Path(config.out_dir),
        log=log if rank == 0 else _quiet,
        rank=rank,
        size=size,
    )
    if ctx.main:
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(
        config={
            **config.to_dict(),
            # what the cells used (the checkpoint's sampling defaults fill what was not given)
            "guidance": guidance.guidance,
            "guidance_interval": list(guidance.interval) if guidance.interval else None,
            "guidance_from": guidance.source,
            "model_meta": meta,
            "condition_files": [s.source for s in sets],  # the files read, defaults included
            # metrics an evaluator declares lower-is-better: the report's ↓
            "lower_is_better": _lower_is_better(ctx.evaluators, plugins),
            # what each set held, whatever its file was called: a report keeps two "test" sets apart
            "condition_sha256": {s.name: s.sha256 for s in sets},
            "train_noise_schedule": train_noise,
            "sampling": asdict(options),
        },
        seeds=list(config.seeds),
        environment=environment(device, plugins=_used_plugin_versions(config, plugins)),
    )
    # Each cell as (scheduler, resolved steps, guidance, seed), which is also its key in a results file.
    matrix = itertools.product(config.schedulers, config.steps, guidance.guidance, config.seeds)
    schedulers = plugins.registry("schedulers")
    cells = [
        (name, resolve_steps(schedulers.get(name), steps), float(scale), seed)
        for name, steps, scale, seed in matrix
    ]
    done = (
        finished_cells(
            ctx.out_dir / "results.json",
            result.config,
            result.environment,
            cells,
            [s.name for s in sets],
            scheduler_name=_registered_name(plugins),
        )
        if config.resume
        else {}
    )
    if done:
        ctx.log(f"--resume: {len(done)} of {len(cells)} cells are in {ctx.out_dir / 'results.json'} already")
    elif config.resume and not (ctx.out_dir / "results.json").exists():
        ctx.log(f"--resume: no results.json in {ctx.out_dir} yet; every cell runs")
    elif not config.resume and (ctx.out_dir / "results.json").exists():
        removed = remove_replaced_outputs(ctx.out_dir) if ctx.main else 0  # only the main one saves images
        ctx.log(
            f"replacing the results.json in {ctx.out_dir} (--resume would keep its finished cells)"
            + (f"; removed the {removed} images, grids and figures it named" if removed else "")
            + (
                f"; its rows are kept in {REPLACED_RESULTS}"
                if (ctx.out_dir / REPLACED_RESULTS).exists()
                else ""
            )
        )
    if len(done) < len(cells):
        _warm_up(ctx)
    n = len(ctx.conditions)
    for i, cell in enumerate(cells):
        if cell in done:
            result.rows.extend(done[cell])
            continue
        scheduler_name, steps, scale, seed = cell
        interval = _interval(ctx, scale)
        ctx.log(
            f"[{i + 1}/{len(cells)}] sampling {n} images: {scheduler_name}, {steps} steps, guidance {scale:g}"
            + (f" (interval {format_interval(interval)})" if interval else "")
            + f", seed {seed}"
        )
        rows = _run_cell(ctx, scheduler_name, steps, scale, seed)
        if ctx.main:
            result.rows.extend(rows)
            result.write(ctx.out_dir / "results.json")  # after every cell: an interrupted run keeps its rows
    if size > 1:
        finish()  # every shard is in: the process group is done
    if not ctx.main:
        return None  # the main process writes the rest and prints
    if config.denoising_figure:
        try:
            result.figures["denoising"] = _denoising_figure(ctx)
        except Exception as error:  # noqa: BLE001 - the figure must not lose the measured rows
            log(f"warning: denoising figure failed: {error}")
    result.write(ctx.out_dir / "results.json")
    return result


def _lower_is_better(evaluators: dict[str, Any], plugins: Plugins) -> list[str]:
    """The metric names the evaluators declare lower-is-better, on the evaluator or on its factory
    (where ``min_images`` and ``needs_reference`` go: set there, it was silently ignored)."""
    registry = plugins.registry("evaluators")
    declared = set()
    for name, evaluator in evaluators.items():
        for holder in (evaluator, registry.get(name).factory):
            declared.update(_names(getattr(holder, "lower_is_better", None)))
    return sorted(declared)


def _names(value: Any) -> list[str]:
    """An evaluator's ``lower_is_better``: a collection of names, or one name (``("fid_x")`` is a
    string, the missing comma of a one-tuple, not eleven one-letter names)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _registered_name(plugins: Plugins) -> Callable[[str], str]:
    """A row's scheduler under its registered name (rows written before names were made canonical
    may hold an alias); a name no plugin registers stays as it is."""
    registry = plugins.registry("schedulers")
    return lambda name: registry.get(name).name if name in registry else name


def _quiet(message: str) -> None:
    """The log of the processes other than the main one."""


def _interval(ctx: _Run, guidance: float) -> tuple[float, float] | None:
    """The guidance interval of a cell: none without guidance (it would change nothing)."""
    return ctx.guidance.interval if guidance != 1.0 else None


def _sample_all(ctx: _Run, scheduler, *, seed: int, **kwargs):
    """Sample every row of ``ctx.conditions``; across several processes each samples its
    contiguous shard (with the seeds its images have in one process) and the main process gets
    all images. Timing: the processes start together; ``seconds`` is the slowest one's.
    """
    import torch

    from bench.sampling import sample

    args = dict(train_config=ctx.train_noise, device=ctx.device, options=ctx.options, seed=seed, **kwargs)
    # A bar over the steps where a cell takes minutes (the CPU); on a GPU it would only run ahead.
    args.setdefault("show_progress", ctx.main and str(ctx.device).startswith("cpu"))
    if ctx.size == 1:
        return sample(ctx.model, scheduler, ctx.conditions, **args)
    size = ctx.size
    part = shard(len(ctx.conditions), ctx.rank, size)
    failure = None
    barrier()
    try:
        mine = sample(ctx.model, scheduler, ctx.conditions[part], first_index=part.start, **args)
    except Exception as error:  # noqa: BLE001 - every process must reach the gather below
        mine, failure = None, error
    parts = gather(mine if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if parts is None:
        return mine  # not the main process: the main one has the images
    failed = _failure_among(parts)
    if failed is not None:
        raise failed
    peak, warmup = largest_costs((p.peak_memory_mb, p.warmup_seconds) for p in parts)
    return replace(
        mine,
        images=torch.cat([p.images for p in parts]),
        seconds=max(p.seconds for p in parts),
        warmup_seconds=warmup,
        peak_memory_mb=peak,
    )


def _failure_among(outcomes: list[Any], during: str = "") -> BaseException | None:
    """The first failure among the processes' gathered outcomes (a failure travels as
    ``"ErrorName: message"``) as an exception to raise, or None when every process succeeded."""
    import torch

    for rank, value in enumerate(outcomes):
        if isinstance(value, str):
            if value.startswith("OutOfMemoryError:"):
                # raised as one, so the cell's row names a --batch-size to try, as in one process
                return torch.cuda.OutOfMemoryError(f"process {rank} of {len(outcomes)}: {value}")
            return RuntimeError(f"process {rank} of {len(outcomes)} failed{during}: {value}")
    return None


def _warm_up(ctx: _Run) -> None:
    """Untimed 1-step passes at the timed batch shapes (the doubled one too when a cell is
    guided): first-call costs (allocator, kernel selection, lazy init) must not land in the
    first cell's images/s."""
    from bench.compile_mode import compile_wait_note
    from bench.sampling import chunk_size, sample

    resolved = ctx.options.resolved(ctx.device)
    if resolved.compile:
        ctx.log(
            compile_wait_note(training=False, autotune=resolved.autotune, tune_kernels=resolved.tune_kernels)
        )
    mine = ctx.conditions[shard(len(ctx.conditions), ctx.rank, ctx.size)]
    for guidance in sorted({1.0, max(ctx.guidance.guidance)}):
        # the chunk the cells at this guidance take (a guided chunk holds fewer images)
        batch = chunk_size(len(mine), ctx.options.resolved(ctx.device, guided=guidance != 1.0).batch_size)
        failure = None
        try:
            warm = sample(
                ctx.model,
                ctx.plugins.registry("schedulers").get("ddim"),
                mine[:batch],
                train_config=ctx.train_noise,
                steps=1,
                guidance=guidance,
                device=ctx.device,
                options=ctx.options,
            )
            own: tuple[float | None, float] | str = (warm.peak_memory_mb, warm.warmup_seconds)
        except Exception as error:  # noqa: BLE001 - the first model call: a plugin model's bug shows here
            failure, own = error, f"{type(error).__name__}: {error}"
        # Every process learns of any one's failure and stops with it: one that went on into the
        # first cell waited for the failed one there for ever.
        outcomes = all_gather(own) if ctx.size > 1 else [own]
        failure = failure or _failure_among(outcomes, " in the warm-up")
        if failure is not None:
            if type(failure).__name__ == "OutOfMemoryError" or not isinstance(own, str):
                raise failure  # out of memory, or another process's failure: as it is
            entry = ctx.plugins.registry("models").get(ctx.config.model)
            raise plugin_failure(f"--model {ctx.config.model}", entry, failure, call="its forward") from None
        # the largest figures of every process are recorded (as for the cells)
        ctx.warm_ups[guidance != 1.0] = largest_costs(outcomes)


def _run_cell(ctx: _Run, scheduler_name: str, steps: int, guidance: float, seed: int) -> list[Row]:
    """One cell (``steps`` resolved): sample every condition set at once, then save, time and judge
    each set."""
    from bench.images import save_grid, save_images

    config, rows = ctx.config, []
    interval = _interval(ctx, guidance)
    base = dict(
        model=config.model,
        scheduler=scheduler_name,
        steps=steps,
        seed=seed,
        guidance=guidance,
        guidance_interval=list(interval) if interval else None,
        checkpoint=str(ctx.meta.get("checkpoint", "")),
    )
    try:
        entry = ctx.plugins.registry("schedulers").get(scheduler_name)
        result = _sample_all(
            ctx,
            entry,
            seed=seed,
            steps=steps,
            guidance=guidance,
            guidance_interval=interval,
            allow_schedule_mismatch=config.allow_schedule_mismatch,
        )
    except Exception as error:  # noqa: BLE001 - one failing cell must not stop the matrix
        ctx.log(f"cell {scheduler_name} steps={steps} guidance={guidance} seed={seed} failed: {error}")
        debug_traceback(error)
        message = f"{type(error).__name__}: {error}"
        if type(error).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            batch = ctx.options.resolved(ctx.device, guided=guidance != 1.0).batch_size
            message = f"out of GPU memory at --batch-size {batch}: try --batch-size {max(1, batch // 2)} ({message})"
            _release_gpu_memory()
        return [
            Row(**base, condition_set=s.name, n_images=len(s.conditions), error=message) for s in ctx.sets
        ]
    if not ctx.main:
        return rows  # the main process saves, evaluates and keeps the rows
    n_total = result.images.shape[0]
    options = result.options or ctx.options
    peak_mb, warmup_seconds = ctx.warm_up_figures(result, guidance)
    speed = {
        "images_per_s": n_total / result.seconds if result.seconds else None,
        "s_per_image": result.seconds / n_total,
        "nfe": result.nfe,
        "guided_nfe": result.extra.get("guided_nfe"),
        "peak_memory_mb": peak_mb,
        "batch_size": options.batch_size,
        "chunk": result.extra.get("chunk"),  # what ran: --batch-size 48 over 64 images runs 2 x 32
        "dtype": options.dtype,
        "device": ctx.device,
        "compile": options.compile,
        "cuda_graphs": options.cuda_graphs,
        **{switch: getattr(options, switch) for switch in SPEED_SWITCHES},
        "warmup_seconds": warmup_seconds,
        "total_images": n_total,
        "seconds": result.seconds,
        "processes": ctx.size,
    }
    cell = f"{scheduler_name}-{steps}-g{guidance:g}" + (f"-i{format_interval(interval)}" if interval else "")
    cell_dir = ctx.out_dir / "images" / cell / f"seed{seed}"
    for s in ctx.sets:
        lo, hi = ctx.spans[s.name]
        images, conditions = result.images[lo:hi], ctx.conditions[lo:hi]
        row = Row(**base, condition_set=s.name, n_images=hi - lo, speed=speed)
        if config.save_images:
            save_images(images, cell_dir / s.name)
            save_grid(images, cell_dir / f"{s.name}_grid.png", nrow=8)
            row.images_dir = str((cell_dir / s.name).relative_to(ctx.out_dir))
            row.grid = str((cell_dir / f"{s.name}_grid.png").relative_to(ctx.out_dir))
        owners: dict[str, str] = {}  # metric -> the evaluator that gave it
        for name, evaluator in ctx.evaluators.items():
            try:
                # Copies: an evaluator that writes into its input cannot change what the next one
                # judges, the misses sheet or the saved images.
                metrics = checked_metrics(name, evaluator(images.clone(), conditions.clone()), owners)
            except Exception as error:  # noqa: BLE001 - keep the other metrics
                debug_traceback(error)
                where = "" if is_bench_error(error) else raised_where(error)  # a plugin's bug: its line
                row.metrics[f"{name}_error"] = f"{type(error).__name__}: {error}{where}"
                continue
            row.metrics.update(metrics)
            owners.update(dict.fromkeys(metrics, name))
        if config.save_images:
            row.misses = _save_misses(ctx, images, conditions, cell_dir / f"{s.name}_misses.png")
        rows.append(row)
    return rows


def _save_misses(ctx: _Run, images: Any, conditions: Any, path: Path) -> str:
    """The sheet of images with an object the judge did not find, from the first evaluator that can
    tell (one with a ``misses`` method, as iclevr-acc): its path relative to the run folder, ""
    when none missed or no evaluator can tell. A picture only: a failure is said, not recorded."""
    from bench.images import save_misses_sheet

    judge = next((e for e in ctx.evaluators.values() if hasattr(e, "misses")), None)
    if judge is None:
        return ""
    try:
        misses = judge.misses(images, conditions)
        if not misses:
            return ""
        return str(save_misses_sheet(images, misses, path).relative_to(ctx.out_dir))
    except Exception as error:  # noqa: BLE001 - the metrics stand without the picture
        ctx.log(f"warning: the sheet of misses {path} failed: {type(error).__name__}: {error}")
        return ""


def _release_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next cell starts from a clean allocator


def _denoising_figure(ctx: _Run) -> str:
    """x_t from noise to image, 10 frames in one row, for the reference condition."""
    from bench.images import save_denoising_strip
    from bench.sampling import SamplingOptions, sample

    config = ctx.config
    entry = ctx.plugins.registry("schedulers").get(config.schedulers[0])
    result = sample(
        ctx.model,
        entry,
        multi_hot([DENOISING_CONDITION], ctx.labels),
        train_config=ctx.train_noise,
        steps=config.steps[0],
        seed=config.seeds[0],
        guidance=ctx.guidance.guidance[0],
        guidance_interval=_interval(ctx, ctx.guidance.guidance[0]),
        device=ctx.device,
        options=SamplingOptions.plain(batch_size=1),
        record_frames=9,
        allow_schedule_mismatch=config.allow_schedule_mismatch,
    )
    path = ctx.out_dir / "denoising.png"
    save_denoising_strip(result.frames[:, 0], path)  # frames: (F, N, 3, H, W); one image, F frames
    return str(path.relative_to(ctx.out_dir))
