"""Put a model on the deployment's grid while it trains, and leave it there afterwards.

``simulate(model, scheme)`` makes every weight the export will quantize read through a
fake-quantize parametrization (``torch.nn.utils.parametrize``: the float weight stays the
trained parameter, the forward pass sees its rounded copy, gradients pass straight through)
and every quantized matmul's input through a fake-quantize pre-hook. ``bake(model)``
removes both, leaving each weight equal to its rounded copy, so that the export's
quantizer finds the weights already on its grid and reproduces them exactly.

What the export quantizes: every ``nn.Linear`` (the blocks' matmuls and, computed as
matmuls, the pooler and classifier) and every ``nn.Embedding`` (word, position and
token-type tables).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn.utils import parametrize

from compose.plugins.qad.scheme import GPTQScheme, Scheme
from compose.plugins.shared.quantization import fake_quant

_HOOK_ATTR = "_qad_activation_hook"


class _OnGrid(nn.Module):
    """A parametrization: the weight as the deployment will store it."""

    def __init__(self, rounding):
        super().__init__()
        self.rounding = rounding

    def forward(self, weight):
        return self.rounding(weight)


def _attention_projections(model) -> dict[int, tuple]:
    """id of each Q/K/V projection of BERT-class self-attention -> the three (``query``, ``key``, ``value``),
    which ONNX Runtime's fused Attention stores as one matrix."""
    found = {}
    for module in model.modules():
        if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")):
            group = tuple(getattr(module, n) for n in ("query", "key", "value"))
            found.update((id(linear), group) for linear in group)
    return found


def _original(module) -> torch.Tensor:
    """A linear layer's float weight, whether or not it is parametrized yet."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _int8_per_matrix_of(group: tuple):
    """Per-matrix int8 rounding with the scale of the fused matrix the ``group`` (Q, K, V) becomes."""

    def rounding(weight: torch.Tensor) -> torch.Tensor:
        absmax = torch.stack([_original(m).detach().abs().amax() for m in group]).amax()
        return fake_quant.int8_weight(weight, per_channel=False, absmax=absmax)

    return rounding


def _linear_rule(scheme: Scheme, fused_group: tuple | None):
    """(weight rounding, activation rounding) of a linear layer (``fused_group``: the Q, K and V it is
    fused with), or None where it stays float."""
    if scheme.weights == "int8" or (scheme.weights == "int4" and fused_group):
        if fused_group and not scheme.per_channel:
            return _int8_per_matrix_of(fused_group), fake_quant.uint8_activation
        return partial(fake_quant.int8_weight, per_channel=scheme.per_channel), fake_quant.uint8_activation
    if scheme.weights == "int4":
        block = scheme.block_size
        return partial(fake_quant.int4_blocks, block=block), partial(fake_quant.int8_activation_blocks, block=block)
    return None


def _embedding_rule(scheme: Scheme):
    if scheme.embeddings == "int4":
        return partial(fake_quant.int4_blocks, block=scheme.embeddings_block_size)
    if scheme.embeddings == "int8":
        return fake_quant.uint8_activation  # one asymmetric uint8 scale per table, as for an activation
    return None


def simulate(model, scheme: Scheme) -> dict:
    """Fake-quantize ``model`` in place as ``scheme`` says; {"linear": n, "embedding": n} put on the grid.
    ``scheme.fused_attention``: the runtime fuses this model's Q/K/V (its declaration saw the model)."""
    fused = _attention_projections(model) if scheme.fused_attention else {}
    counts = {"linear": 0, "embedding": 0}
    for module in list(model.modules()):
        if isinstance(module, nn.Linear):
            rule = _linear_rule(scheme, fused.get(id(module)))
            if rule is None:
                continue
            weight_rounding, activation_rounding = rule
            parametrize.register_parametrization(module, "weight", _OnGrid(weight_rounding), unsafe=True)
            hook = module.register_forward_pre_hook(
                lambda _module, args, rounding=activation_rounding: (rounding(args[0]), *args[1:])
            )
            module.__dict__[_HOOK_ATTR] = hook
            counts["linear"] += 1
        elif isinstance(module, nn.Embedding):
            rounding = _embedding_rule(scheme)
            if rounding is None:
                continue
            parametrize.register_parametrization(module, "weight", _OnGrid(rounding), unsafe=True)
            counts["embedding"] += 1
    return counts


def simulate_gptq(model, scheme: GPTQScheme, blocks) -> dict:
    """Fake-quantize the weights of ``blocks``' layers ({name: nn.Linear or GPT-2's Conv1D, whose weight
    is stored [in, out]}) on GPTQModel's grid, in place; {"linear": n, "embedding": 0}."""
    rounding = partial(fake_quant.gptq_groups, bits=scheme.bits, group_size=scheme.group_size, sym=scheme.sym)
    for module in blocks:
        rule = rounding if isinstance(module, nn.Linear) else _transposed(rounding)
        parametrize.register_parametrization(module, "weight", _OnGrid(rule), unsafe=True)
    return {"linear": len(blocks), "embedding": 0}


def _transposed(rounding):
    """``rounding`` of an [out, in] weight, for a weight stored [in, out] (GPT-2's Conv1D)."""
    return lambda weight: rounding(weight.t()).t()


def bake(model, keep_rounded: bool = True) -> None:
    """Remove the simulation. ``keep_rounded``: each weight becomes its rounded value (the grid the
    export reproduces exactly); else the trained float weight stays (a gptq stage quantizes it
    itself, recomputing its grid from it)."""
    for module in model.modules():
        hook = module.__dict__.pop(_HOOK_ATTR, None)
        if hook is not None:
            hook.remove()
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_rounded)
