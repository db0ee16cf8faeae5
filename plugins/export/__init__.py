"""The `export` stage: the model in a form that deploys without recipe-compose, evaluated there.

The stage is ``stage``; ONNX export, fusion and quantization is ``onnx_runtime``, a
decoder's transformers checkpoint ``decoder``, quantized layers made float ``floating``.
The settings schema is ``export.schema.json``.
"""

from compose.plugins.export.stage import compose_register_stages

__all__ = ["compose_register_stages"]
