"""Keep third-party libraries' chatter (load reports, shard bars, kernel notices) off the terminal.

recipe-compose shows its own progress and report; what the libraries print at
import and load time would bury it. Their real errors still raise.
"""

from __future__ import annotations

import logging
import os
import warnings

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "accelerate", "gptqmodel", "logbar", "torch_pruning")


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
