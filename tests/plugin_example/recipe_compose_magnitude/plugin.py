"""The `magnitude-prune` stage: unstructured magnitude pruning of the transformer blocks.

Zeroes the smallest-magnitude weights of the Linear layers inside the model's
transformer blocks (and, if asked, of the classifier head) with
``torch.nn.utils.prune``, then makes the pruning permanent (``prune.remove``): the
zeros are ordinary weights, so the model keeps its shape, saves and reloads like
any other, and needs no ``rebuild``.

With ``hold_in_training`` (the default), a later stage of the same run that trains
the model keeps the pruned weights at zero (``compose_training_setup`` below).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from compose import hookimpl
from compose.api import Check, StageContext, StageResult, StageType, load_schema_file

STAGE = "magnitude-prune"

#: Set on a model this stage pruned with hold_in_training: the names of the pruned modules.
_HELD_ATTR = "recipe_compose_magnitude_held"

# torch is imported inside the functions that run, not here: `recipe validate` loads
# every installed plugin, and importing torch would cost it seconds.
if TYPE_CHECKING:
    import torch


# -- finding the layers ---------------------------------------------------


def _prunable(module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D  # GPT-2 writes its Linear layers as Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _blocks(model) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks: the items of the outermost ModuleLists of same-class modules."""
    import torch

    found, lists = [], []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(outer + ".") for outer in lists):
            continue  # a list inside a block (T5's sub-layers)
        if len({type(child) for child in module}) != 1:
            continue
        if not any(_prunable(m) for m in module.modules()):
            continue
        lists.append(name)
        found += [(f"{name}.{i}", block) for i, block in enumerate(module)]
    return found


def _scope_of(relative_name: str) -> str:
    parts = relative_name.lower().split(".")
    return "attention" if any("attn" in p or "attention" in p for p in parts) else "feed-forward"


def select_layers(model, scope) -> list[tuple[str, str, str, torch.nn.Module]]:
    """(full name, scope, layer type, module) of every layer the settings select.

    The layer type is the module's name inside its block (``attention.self.query``),
    the same for every block.
    """
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            f"found no transformer blocks in {type(model).__name__} (no list of identical layers "
            "holding Linear weights); magnitude-prune supports the usual transformers architectures"
        )
    selected = []
    for block_name, block in blocks:
        for name, module in block.named_modules():
            if name and _prunable(module) and _scope_of(name) in scope:
                selected.append((f"{block_name}.{name}", _scope_of(name), name, module))
    if "classifier" in scope:
        selected += _classifier_layers(model)
    return selected


def _classifier_layers(model) -> list[tuple[str, str, str, torch.nn.Module]]:
    """The task head: prunable layers outside the base model, unless tied to the embeddings."""
    base = getattr(model, "base_model", model)
    if base is model:
        return []
    inside = {id(m) for m in base.modules()}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embeddings.weight if embeddings is not None else None
    return [
        (name, "classifier", name, module)
        for name, module in model.named_modules()
        if _prunable(module) and id(module) not in inside and module.weight is not tied
    ]


# -- the stage --------------------------------------------------------------


def prune_layers(layers, sparsity: float, granularity: str, progress) -> None:
    """Zero the smallest weights of ``layers`` (from ``select_layers``), permanently."""
    from torch.nn.utils import prune

    if granularity == "global":
        with progress.track(f"{STAGE}: pruning (global threshold)", total=1) as bar:
            params = [(module, "weight") for *_, module in layers]
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
            for module, _ in params:
                prune.remove(module, "weight")  # permanent: the mask is multiplied into the weight
            bar.advance()
        return
    with progress.track(f"{STAGE}: pruning", total=len(layers)) as bar:
        for *_, module in layers:
            prune.l1_unstructured(module, "weight", amount=sparsity)
            prune.remove(module, "weight")
            bar.advance()


def sparsity_details(layers, settings) -> dict:
    zeros, totals = defaultdict(int), defaultdict(int)
    by_type_zeros, by_type_totals = defaultdict(int), defaultdict(int)
    for _, scope, layer_type, module in layers:
        z = int((module.weight == 0).sum())
        n = module.weight.numel()
        zeros[scope] += z
        totals[scope] += n
        by_type_zeros[layer_type] += z
        by_type_totals[layer_type] += n
    return {
        "target_sparsity": settings["sparsity"],
        "granularity": settings["granularity"],
        "pruned_layers": len(layers),
        "pruned_weights": sum(totals.values()),
        "zero_weights": sum(zeros.values()),
        "sparsity": round(sum(zeros.values()) / sum(totals.values()), 6),
        "sparsity_by_scope": {k: round(zeros[k] / totals[k], 6) for k in sorted(totals)},
        "sparsity_by_layer_type": {k: round(by_type_zeros[k] / by_type_totals[k], 6) for k in sorted(by_type_totals)},
    }


def run(ctx: StageContext) -> StageResult:
    settings = ctx.settings
    layers = select_layers(ctx.model, settings["scope"])
    if not layers:
        raise ValueError(
            f"scope {settings['scope']} selects no layer of {type(ctx.model).__name__}: it has no task head "
            "of its own (none, or one tied to the embeddings, which are never pruned); "
            "add 'attention' or 'feed-forward' to scope"
        )
    prune_layers(layers, float(settings["sparsity"]), settings["granularity"], ctx.progress)
    details = sparsity_details(layers, settings)
    if settings["hold_in_training"]:
        held = set(getattr(ctx.model, _HELD_ATTR, [])) | {name for name, *_ in layers}
        ctx.model.__dict__[_HELD_ATTR] = sorted(held)  # read by compose_training_setup below
    by_scope = ", ".join(f"{k} {100 * v:.1f}%" for k, v in details["sparsity_by_scope"].items())
    ctx.log(f"{details['zero_weights']:,} of {details['pruned_weights']:,} weights are zero ({by_scope})")
    return StageResult(details=details)  # the model was changed in place


def check(settings, plan):
    if settings["sparsity"] == 0:
        yield Check("sparsity is 0: this stage will prune nothing (set e.g. sparsity: 0.5)", "warning", ("sparsity",))


def describe(settings) -> str:
    how = "one global threshold" if settings["granularity"] == "global" else "the same fraction in every layer"
    return (
        f"zero the {100 * settings['sparsity']:.0f}% smallest-magnitude weights of the "
        f"{' + '.join(settings['scope'])} Linear layers ({how})"
    )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("recipe_compose_magnitude", "magnitude-prune.schema.json"),
            description="Unstructured magnitude pruning of the Linear weights in the transformer blocks.",
            needs={"quantized": False},
            compresses=True,
            families=("encoder", "decoder", "encoder-decoder"),
            check=check,
            describe=describe,
        )
    )


# -- keeping the zeros through later training ------------------------------


@hookimpl
def compose_training_setup(setup):
    """If the model to train was pruned by this stage, zero its pruned weights after every step."""
    held = getattr(setup.model, _HELD_ATTR, None)
    if not held:
        return
    modules = dict(setup.model.named_modules())
    masks = [(modules[name], modules[name].weight != 0) for name in held if name in modules]

    def reapply(step):
        import torch

        with torch.no_grad():
            for module, mask in masks:
                module.weight.mul_(mask.to(module.weight.device))

    setup.on_step_end.append(reapply)
