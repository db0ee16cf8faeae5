"""GPTQModel, the GPTQ engine, imported once with its start-up chatter silenced.

Shared by the ``gptq`` stage (which quantizes with it) and by anything that simulates its
grid (``shared.quantization.fake_quant.gptq_groups``, used by ``qad``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from compose.api import library_chatter_off


def engine() -> SimpleNamespace:
    """GPTQModel's pieces, imported on first use (the import takes seconds)."""
    # On a small CPU machine GPTQModel's worker pool otherwise refuses to start, and
    # its JIT-compiled kernels go to a cache under the home folder.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("GPTQMODEL_CACHE_DIR", str(Path.home() / ".cache" / "recipe-compose" / "gptqmodel"))
    with library_chatter_off(stdout=True):
        import gptqmodel
        from gptqmodel.models.auto import MODEL_MAP
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.quantization.config import QuantizeConfig, RTNConfig
        from gptqmodel.quantization.gptq import GPTQ
        from gptqmodel.quantization.rtn import RTN
        from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module, convert_gptq_v2_to_v1_format_module

    return SimpleNamespace(
        version=gptqmodel.__version__,
        GPTQModel=gptqmodel.GPTQModel,
        model_definitions=MODEL_MAP,
        TorchLinear=TorchLinear,
        QuantizeConfig=QuantizeConfig,
        RTNConfig=RTNConfig,
        GPTQ=GPTQ,
        RTN=RTN,
        v1_to_v2=convert_gptq_v1_to_v2_format_module,
        v2_to_v1=convert_gptq_v2_to_v1_format_module,
    )
