"""The `export` stage: the model in a form that deploys without recipe-compose, evaluated there.

The stage is ``stage``; ONNX export, fusion and quantization is ``onnx_runtime``, a
decoder's transformers checkpoint ``decoder``, quantized layers made float ``floating``.
The settings schema is ``export.schema.json``.

What benchmarks reuse (bench/deploy.py, bench/export_minilm.py): ``onnx_runtime.export_classifier``
and ``onnx_runtime.onnx_module`` (export a classifier and run it as a module),
``floating.to_float`` and ``stage.deploy_tokenizer`` (the tokenizer.json an export ships).
"""

from compose.plugins.export.stage import compose_register_stages

__all__ = ["compose_register_stages"]
