"""Keep third-party libraries' chatter (load reports, shard bars, kernel notices, INFO logs) off the terminal.

recipe-compose shows its own progress and report; what the libraries print at
import, load and work time would bury it. This module is the one way to silence them:

- ``quiet_libraries()`` once, when a command that runs models starts: environment
  switches and logger levels for the libraries that talk at import and load time;
- ``library_chatter_off()`` around a library call that talks while it works (exported
  to plugins as ``compose.api.library_chatter_off``).

Their warnings and errors that matter still raise. ``recipe -v`` (which sets
``RECIPE_COMPOSE_VERBOSE=1``, inherited by every process of a run) turns both off, so
the libraries speak as they would without recipe-compose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

#: Set (to anything but "" or "0") by ``recipe -v``: libraries keep their own output.
VERBOSE_ENV = "RECIPE_COMPOSE_VERBOSE"

#: The modules whose internal FutureWarning / DeprecationWarning lines a user cannot act on.
_LIBRARY_MODULES = (
    r"(transformers|torch|torchao|accelerate|optuna|gptqmodel|onnxruntime|onnx|onnxscript|optimum|"
    r"torch_pruning|huggingface_hub|tokenizers|safetensors|jsonschema|tokenicer|logbar)(\..*)?$"
)

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "accelerate", "gptqmodel", "logbar", "torch_pruning", "tokenicer")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Process-wide: the libraries' import- and load-time chatter off (unless ``recipe -v``)."""
    if verbose():
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # The libraries' own deprecation notices about their internals, not about a call of ours: a warning
    # that our call triggers is attributed to our module (stacklevel) and still shows, so an upgrade is loud.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARY_MODULES)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


@contextlib.contextmanager
def library_chatter_off(*, stdout: bool = False):
    """Within: no log record below ERROR reaches any handler, and (``stdout=True``) what is printed is dropped.

    Afterwards everything is as it was, including what a library changed inside: a
    ``logging.basicConfig(level=INFO)`` run by an import in the block (ONNX Runtime's
    quantizers do that) would otherwise leave the root logger at INFO with a stderr
    handler, printing every later INFO line of every library. ``stdout=True`` is for
    libraries that print their banners and bars (GPTQModel's LogBar ignores logging
    levels); stdout may carry ``recipe apply --json``. Nothing changes with ``recipe -v``.
    """
    if verbose():
        yield
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    placeholder = logging.NullHandler()
    if not handlers:  # a handler makes basicConfig() a no-op: it then adds none and sets no level
        root.addHandler(placeholder)
    try:
        with contextlib.ExitStack() as stack:
            if stdout:
                sink = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))
                stack.enter_context(contextlib.redirect_stdout(sink))
            yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.disable(disabled)
