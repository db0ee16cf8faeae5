"""The built-in stage plugins (installed as ``compose.plugins``), one package per technique.

- ``training``: the `train` stage and the training extensions every training stage takes
  (`amp`, `checkpointing`, `parallel`);
- ``distill``: the `distill` stage (student construction, losses, the teacher cache);
- ``pruning``: `prune-heads` (``pruning.heads``) and `prune-ffn` (``pruning.ffn``), sharing
  their calibration, importance scoring, the pruning stage skeleton and recovery;
- ``gptq``: the `gptq` stage (GPTQModel, whole-model row quantization);
- ``export``: the `export` stage (ONNX Runtime, transformers checkpoints);
- ``architectures``: where each known architecture keeps its attention, FFN and layer stacks.

Every package (or module, for the training extensions) that declares stages is registered
through the ``recipe_compose`` entry-point group in pyproject.toml, exactly as a third-party
plugin is, and imports from the core only ``compose.api`` and ``compose.hookimpl``
(tests/plugins/test_contract.py holds them to it). Each keeps its settings schema beside its code.
"""
