"""The registry's paths (``architectures.registry``) resolved on a real model: its stacks of layers.

A model has one or two *stacks*: ``layers`` (an encoder's or a decoder's one list),
or ``encoder`` and ``decoder`` (an encoder-decoder's two). Everything that walks
layers (distill's student and layer maps, prune-heads, prune-ffn, gptq's block walk,
parallel's sharding) starts here.
"""

from __future__ import annotations

from dataclasses import dataclass

from compose.plugins.shared.architectures.registry import Architecture, Stack, require


@dataclass(frozen=True)
class StackModules:
    """One stack of ``model``: ``getattr(owner, attr)`` is its ``nn.ModuleList``; ``spec`` its registry entry."""

    spec: Stack
    owner: object
    attr: str
    prefix: str  # the list's module name in the whole model ("bert.encoder.layer")

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layers(self):
        return getattr(self.owner, self.attr)


def architecture(model, stage: str) -> Architecture:
    """The registry entry of ``model`` (ValueError naming the known types if there is none)."""
    return require(getattr(getattr(model, "config", None), "model_type", None), stage)


def stacks(model, stage: str = "this stage") -> list[StackModules]:
    """The model's stacks of layers, in forward order."""
    arch = architecture(model, stage)
    base = getattr(model, "base_model", model)
    base_name = next((name for name, module in model.named_modules() if module is base), "")
    found = []
    for spec in arch.stacks:
        parent, _, attr = spec.path.rpartition(".")
        try:
            owner = base.get_submodule(parent) if parent else base
        except AttributeError:
            owner = None
        if owner is None or not _is_module_list(getattr(owner, attr, None)):
            raise ValueError(
                f"{stage}: {type(model).__name__} (model type '{arch.name}') has no layer list at "
                f"'{spec.path}', where the architecture table puts its {spec.name} layers"
            )
        prefix = ".".join(part for part in (base_name, spec.path) if part)
        found.append(StackModules(spec, owner, attr, prefix))
    return found


def _is_module_list(value) -> bool:
    import torch

    return isinstance(value, torch.nn.ModuleList)


def submodule(layer, path: str):
    """``layer.get_submodule(path)``, or None where the layer has no such module."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def layer_counts(model, stage: str = "this stage") -> dict[str, int]:
    """{stack name: number of layers}."""
    return {stack.name: len(stack.layers) for stack in stacks(model, stage)}


__all__ = ["StackModules", "architecture", "layer_counts", "stacks", "submodule"]


def linear_shape(module):
    """(in_features, out_features, bias, weight as [out, in]) of an nn.Linear or a GPT-2 Conv1D."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features, module.bias is not None, module.weight.detach()
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0], weight.shape[1], module.bias is not None, weight.detach().T
    return None


def block_linears(block) -> dict:
    """{name: layer} of the block's nn.Linear and GPT-2 Conv1D layers: the matmuls a weight quantizer rounds."""
    return {name: module for name, module in block.named_modules() if linear_shape(module) is not None}
