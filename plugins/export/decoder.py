"""Write a decoder as a checkpoint plain ``transformers`` loads, and load it back that way.

A model the `gptq` stage quantized keeps GPTQModel's packed linears and
``quantization_config`` (quant_method gptq) in config.json: ``save_pretrained``
writes the standard GPTQ layout, which ``AutoModelForCausalLM.from_pretrained``
loads through transformers' GPTQ integration when GPTQModel is installed. A model
that was not quantized is written in its own float dtype. Either way the folder is
then loaded back with plain ``from_pretrained`` (no recipe-compose code involved)
and compared with the model that was exported; when that fails (a structural change
config.json cannot describe), the folder still carries ``compose-artifact.json``
and ``compose.api.load_artifact`` loads it, and the details say so.
"""

from __future__ import annotations

from pathlib import Path

#: Largest relative logits difference between the exported model and its plain reload that counts as equal.
#: Not exact: loading a GPTQ checkpoint, GPTQModel picks its own CPU kernel (TorchAtenLinear, tiny
#: Llama: 1.6e-3 relative from the same packed weights), not the TorchLinear the gptq stage ran.
RELOAD_TOLERANCE = 1e-2


def plain_load(folder: Path):
    """The folder as a user loads it: ``AutoModelForCausalLM.from_pretrained`` and nothing else."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def compare(reference, other, batch) -> float:
    """Relative max difference of the two models' logits on ``batch``."""
    import torch

    with torch.no_grad():
        a = reference(**batch).logits.float()
        b = other(**batch).logits.float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
