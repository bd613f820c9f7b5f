"""Where a training step's time goes: torch.profiler over a few steps of bench.training's step.

Trains a random-weight ``ddpm-unet`` on random images (speed does not depend on content) with the
step every ``bench train`` run takes (``bench.training._Trainer.train_step``), after an untimed
warm-up (compile, autotune, allocator), and writes:

- ``OUT_DIR/profile.txt``: the ops with the most self time on the GPU (on the CPU without one);
- ``OUT_DIR/host.txt``: the ops with the most self CPU time: what the host spends a step on;
- ``OUT_DIR/profile.json``: the setting, the unprofiled time per step and images/s, and the
  profiled time per step by op family with the device's busy share (``bench/profiling.py``).
  A busy share well under 1 says the GPU waited on the host: launches, Python, or a sync.

Usage: python scripts/profile_training.py OUT_DIR [--preset seed] [--batch 128] [--steps 5]
       [--warmup 3] [--recipe default] [--no-compile] [--cuda-graphs] [--no-force-layout-opt]
       [--no-profile] [--rows 30] [--inductor-code]

``--inductor-code`` writes ``OUT_DIR/inductor_code/graph_N.py``: Inductor's code of the warm-up's
compiled graphs (forward and backward), as in scripts/profile_sampling.py.
"""

from __future__ import annotations

import torch

from bench.profiling import inductor_code_to, profile_arguments, profile_to, run_setting
from bench.training import TrainConfig, _Trainer
from bench_builtins.datasets.base import random_dataset


def main() -> None:
    parser = profile_arguments(
        __doc__.splitlines()[0], batch=128, steps=5, steps_help="training steps timed, then profiled"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile)")
    parser.add_argument("--recipe", default="default", help="training recipe (bench.training.RECIPES)")
    parser.add_argument("--no-compile", action="store_true", help="eager (compile is the CUDA default)")
    parser.add_argument("--cuda-graphs", action="store_true", help="compile with CUDA graphs")
    parser.add_argument(
        "--no-force-layout-opt",
        action="store_true",
        help="leave Inductor's layout optimisation of the backward graph to Inductor (forced by default)",
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dataset = random_dataset(2 * args.batch)
    config = TrainConfig.from_recipe(
        args.recipe,
        preset=args.preset,
        batch_size=args.batch,
        device="cuda" if cuda else "cpu",
        compile=cuda and not args.no_compile,  # compiling on the CPU builds C++ for minutes
        cuda_graphs=args.cuda_graphs,
        force_layout_opt=not args.no_force_layout_opt,
        out_dir=str(args.out / "unused"),  # the trainer writes nothing there; only train() would
    )
    trainer = _Trainer(config, dataset)
    batches = trainer.repeating_batches(args.warmup + 2 * args.steps)
    with inductor_code_to(args.out, args.inductor_code):
        for _ in range(args.warmup):
            trainer.train_step(*next(batches))
    seconds = trainer.timed_steps(batches, args.steps)
    setting = {
        **run_setting(args),
        "recipe": args.recipe,
        # compile, cuda_graphs, force_layout_opt, bf16, channels_last as the trainer resolved them
        # (its "device" is "cuda"; run_setting's names the card)
        **{k: v for k, v in trainer.settings().items() if k != "device"},
        "ms_per_step_unprofiled": 1e3 * seconds / args.steps,
        "images_per_s_unprofiled": args.steps * args.batch / seconds,
    }
    print(
        f"{setting['device']} {args.preset} batch {args.batch} compile {setting['compile']} cuda graphs "
        f"{setting['cuda_graphs']}: {setting['ms_per_step_unprofiled']:.1f} ms/step, "
        f"{setting['images_per_s_unprofiled']:.0f} images/s unprofiled"
    )
    profile_to(
        args.out,
        setting,
        lambda: trainer.timed_steps(batches, args.steps),
        args.steps,
        timing_only=args.no_profile,
        rows=args.rows,
    )


if __name__ == "__main__":
    main()
