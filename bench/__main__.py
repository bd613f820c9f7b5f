"""``python -m bench`` (and ``accelerate launch -m bench ...``) runs the CLI."""

from bench.cli import main

if __name__ == "__main__":  # guarded: spawned worker processes re-import this module
    main()
