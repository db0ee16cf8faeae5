"""The `gptq` stage: GPTQ quantization of the transformer blocks, and of the whole model.

The stage is ``stage``; GPTQModel is reached only through ``engine``; the block walk for
models GPTQModel has no definition for is ``layers``; embeddings and heads are quantized
by ``embeddings`` into the packed modules of ``row_quant``. The settings schema is
``gptq.schema.json``.
"""

from compose.plugins.gptq.stage import compose_register_stages

__all__ = ["compose_register_stages"]
