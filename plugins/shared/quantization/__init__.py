"""Quantization grids as fake quantization (``fake_quant``: ONNX Runtime's int8 and 4-bit grids,
GPTQModel's round-to-nearest grid) and the GPTQ engine's import (``gptqmodel``), shared by the
``gptq`` and ``qad`` stages and public to third parties."""
