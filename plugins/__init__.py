"""The built-in stage plugins (installed as ``compose.plugins``), one package per technique.

- ``training``: the `train` stage and the training extensions every training stage takes
  (`amp`, `checkpointing`, `parallel`);
- ``distill``: the `distill` stage (student construction, losses, the teacher cache);
- ``pruning``: `prune-heads` (``pruning.heads``), `prune-ffn` (``pruning.ffn``) and `prune-vocab`
  (``pruning.vocab``), sharing their calibration, importance scoring, the pruning stage skeleton
  and recovery;
- ``gptq``: the `gptq` stage (GPTQModel, whole-model row quantization);
- ``qad``: the `qad` stage (quantization-aware distillation for the quantization a later stage
  declares);
- ``export``: the `export` stage (ONNX Runtime, transformers checkpoints);
- ``shared``: not a plugin but a library, public to third parties: architectures and the layer
  walk, the distillation loss and teacher cache, quantization grids.

Every package (or module, for the training extensions) that declares stages is registered
through the ``recipe_compose`` entry-point group in pyproject.toml, exactly as a third-party
plugin is, imports from the core only ``compose.api`` and ``compose.hookimpl``, and from
the other packages here only ``shared`` (tests/plugins/test_contract.py holds them to it). Each keeps its settings schema beside its code.
"""
