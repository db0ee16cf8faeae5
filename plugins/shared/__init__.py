"""Building blocks that several techniques share, public to third-party plugins.

This package declares no stage and registers no hook: it is a library. A built-in stage
plugin imports from the core only ``compose.api`` and ``compose.hookimpl``, from its own
package, and from here; never from another plugin's package (tests/plugins/test_contract.py
holds every plugin to that). A third-party plugin may import these modules too, as it
imports ``compose.api``; what one stage needs to know of another (the quantization it will
apply, what the model was trained for) goes through ``compose.api``, not through these.

- ``architectures``: where each known architecture keeps its layer stacks, attention and FFN
  blocks, and the walk over a model's blocks and matmuls (``modules``);
- ``distillation``: the distillation loss (soft targets, hard labels, hidden states and
  attention maps) and the teacher-output cache;
- ``quantization``: the grids a deployment rounds to, as differentiable fake-quantization
  (ONNX Runtime's int8/int4 and GPTQModel's), and GPTQModel imported once (``gptqmodel``).
"""
