"""The `qad` stage: quantization-aware distillation before the ONNX Runtime export.

The stage is ``stage``; the rounding functions are ``fake_quant``; which quantization is
simulated is ``scheme``; putting a model on the grid and leaving it there is
``simulation``. The settings schema is ``qad.schema.json``.
"""

from compose.plugins.qad.stage import compose_register_stages

__all__ = ["compose_register_stages"]
