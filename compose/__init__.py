"""recipe-compose: declarative 'train large, then compress' recipes for transformers.

The core (this package) reads and validates recipes, hosts the stage plugins, runs
the stages in order and reports what each one cost and bought. Stage plugins reach
the core only through ``compose.api`` and the hooks in ``compose.hookspecs``.
"""

import pluggy

from compose.hookspecs import PROJECT_NAME

__version__ = "0.1.0"

#: Decorate your hook implementations with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["__version__", "hookimpl"]
