"""bench: a plugin-based benchmark harness for class-conditional diffusion models.

A plugin needs only ``from bench import hookimpl``.
"""

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "bench"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["hookimpl", "hookspec", "__version__", "PROJECT_NAME"]
