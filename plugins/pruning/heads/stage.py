"""The `prune-heads` stage: score every attention head, then remove the weakest for real.

Works on every architecture of the table (``architectures.registry``; ``architectures.attention``
finds the attention blocks it names): BERT, RoBERTa, Llama, Qwen2, GPT-2, T5 and BART
(encoder self-attention, decoder self- and cross-attention). Where a model shares key/value heads between
query heads (grouped-query attention), a key/value head and its query heads are
scored and removed together as one *unit*, so the grouping stays valid; elsewhere a
unit is one head. The settings (``ratio``, ``heads_per_layer``,
``min_heads_per_layer``) count units.

Scoring (``importance``), on shuffled calibration batches of ``calibration_split``:

- ``taylor``: the head-mask sensitivity of Michel et al. (2019), "Are Sixteen Heads
  Really Better than One?": I_u = sum over batches of |dL/dm_u|, where m_u is a mask
  (1.0) multiplying unit u's context vectors. transformers 5 no longer accepts a
  ``head_mask`` argument, so the mask is a forward pre-hook on each output projection
  (BERT's ``attention.output.dense``, Llama's ``o_proj``, GPT-2's ``c_proj``, T5's
  ``o``) that views its input per unit and multiplies it by a differentiable vector
  of ones (``head_masks``): the forward is unchanged and the backward gives dL/dm.
  L is the task's own loss (``model(**batch).loss``: classification, next-token or
  target-token cross-entropy). Only the masks require gradients while scoring.
- ``magnitude``: the L2 norm of the unit's query/key/value rows and output-projection
  columns.

Both are normalised per attention block by the block's L2 norm (as in the paper), so
that one global ranking can compare heads of different layers (``ratio``).

Removal. On BERT-class encoders, torch-pruning's ``DependencyGraph`` couples each
layer's query/key/value output channels with the output projection's input
channels; pruning the chosen heads' channels through that group removes exactly
those heads (its ``MetaPruner`` ranks heads by its own importance with one ratio per
layer, so it cannot express a set of heads chosen here). On the other families the
heads' rows and columns are sliced directly, because torch-pruning cannot do it:
on a Llama its ``build_dependency`` does not finish in useful time (rotary embeddings;
bench/results/design-measurements.md); on T5 the group of one layer's query spans every self-attention layer
of the stack and the ``relative_attention_bias`` embedding (through the shared
position bias), so it could only remove the same channels everywhere and would cut
the embedding by channel rather than by head; with grouped key/value heads a
query channel group is not a key/value one; GPT-2's fused ``c_attn`` needs three
index ranges. Slicing is the same code that rebuilds saved artifacts.

Reloading: transformers 5 cannot reload a head-pruned model by itself (config.json
keeps the original head counts, which stay as they were: they describe the model
the transform starts from), so the stage records the units kept per attention block
with ``record_transform`` and ``rebuild`` shrinks a freshly built model to the same
shapes (and, on T5, re-attaches the position-bias selection) before
``load_artifact`` loads the weights.
"""

from __future__ import annotations

import math

from compose import hookimpl
from compose.api import Check, StageContext, load_schema_file
from compose.plugins.pruning import importance
from compose.plugins.pruning.base import UnitPruning
from compose.plugins.pruning.heads.removal import apply_kept, check_widths, head_masks
from compose.plugins.shared.architectures.attention import find_attention

STAGE = "prune-heads"

__all__ = ["choose_heads", "find_attention", "head_masks", "magnitude_scores", "rebuild", "taylor_scores"]


# -- scoring -----------------------------------------------------------------


def taylor_scores(model, sites, batches, device, bar) -> list:
    """Per attention block: sum over batches of |dL/d mask_u| (Michel et al., 2019)."""
    return importance.taylor_scores(model, head_masks(sites, device), batches, bar)


def magnitude_scores(sites) -> list:
    """Per attention block: L2 norm of each unit's query/key/value rows and output-projection columns."""
    import torch

    with torch.no_grad():
        return [sum(w.float().pow(2).sum(1) for w in site.unit_weights()).sqrt().cpu() for site in sites]


def choose_heads(scores, settings) -> list[list[int]]:
    """Units to remove, per block: the lowest-scoring ones, keeping ``min_heads_per_layer``."""
    floor = settings["min_heads_per_layer"]
    if "heads_per_layer" in settings:
        chosen = []
        for layer_scores in scores:
            n = max(0, min(settings["heads_per_layer"], len(layer_scores) - floor))
            order = sorted(range(len(layer_scores)), key=lambda h: (float(layer_scores[h]), h))
            chosen.append(sorted(order[:n]))
        return chosen
    total = sum(len(s) for s in scores)
    target = int(settings["ratio"] * total + 1e-9)  # rounded down
    ranked = sorted((float(s[h]), layer, h) for layer, s in enumerate(scores) for h in range(len(s)))
    remaining = [len(s) for s in scores]
    chosen = [[] for _ in scores]
    removed = 0
    for _, layer, head in ranked:
        if removed == target:
            break
        if remaining[layer] > floor:
            chosen[layer].append(head)
            remaining[layer] -= 1
            removed += 1
    return [sorted(c) for c in chosen]


# -- removing heads ------------------------------------------------------------


def remove_with_torch_pruning(model, sites, chosen, example) -> None:
    """BERT-class: remove the chosen heads through torch-pruning's dependency graph; update the attributes."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {module: name for name, module in model.named_modules()}
    for site, heads in zip(sites, chosen):
        if not heads:
            continue
        group = graph.get_pruning_group(site.query, tp.prune_linear_out_channels, idxs=site.query_channels(heads))
        allowed = {site.query, site.key, site.value, site.output}
        strays = {
            names.get(dep.target.module, str(dep.target.module))
            for dep, _ in group
            if isinstance(dep.target.module, torch.nn.Module)
            and dep.target.module not in allowed
            and any(True for _ in dep.target.module.parameters(recurse=False))
        }
        if strays or not graph.check_pruning_group(group):
            raise RuntimeError(
                f"torch-pruning couples layer {site.label}'s heads with other layers ({', '.join(sorted(strays))}); "
                "this model's attention is not supported by prune-heads"
            )
        group.prune()
        site.set_counts(site.num_units - len(heads))


def remove_heads(model, sites, chosen, example) -> None:
    if sites[0].kind == "bert":
        remove_with_torch_pruning(model, sites, chosen, example)
    else:
        apply_kept(
            model, sites, [[u for u in range(site.num_units) if u not in gone] for site, gone in zip(sites, chosen)]
        )


def rebuild(model, info):
    """Shrink a freshly built model's attention to the recorded units (weights load afterwards)."""
    sites = find_attention(model)
    if len(info["heads_before"]) != len(sites):
        raise ValueError(
            f"the recorded pruning covers {len(info['heads_before'])} attention blocks but the model "
            f"has {len(sites)}: the artifact does not match its config"
        )
    for site, before in zip(sites, info["heads_before"]):
        if site.num_units != before or site.head_size != info["head_size"]:
            raise ValueError(
                f"attention {site.label} has {site.num_units} heads of size {site.head_size}, but the recorded "
                f"pruning expects {before} of size {info['head_size']}: the artifact does not match its config"
            )
    kept = [info["kept_heads"].get(site.label, list(range(site.num_units))) for site in sites]
    apply_kept(model, sites, kept)
    return model


# -- the stage -----------------------------------------------------------------


def _unit_words(sites) -> str:
    groups = {site.group for site in sites}
    if groups == {1}:
        return "head"
    return f"key/value group ({'/'.join(str(g) for g in sorted(groups))} query heads each)"


class HeadPruning(UnitPruning):
    stage = STAGE
    units = "heads"
    compute_part = "attention"
    taylor_words = "taylor head importance"

    find_sites = staticmethod(find_attention)
    taylor_scores = staticmethod(taylor_scores)
    magnitude_scores = staticmethod(magnitude_scores)

    def choose(self, ctx: StageContext, sites, scores) -> dict:
        settings = ctx.settings
        chosen = choose_heads(scores, settings)
        before = [site.num_units for site in sites]
        removed = sum(len(c) for c in chosen)
        requested = (
            settings["heads_per_layer"] * len(sites)
            if "heads_per_layer" in settings
            else int(settings["ratio"] * sum(before) + 1e-9)
        )
        if removed < requested:
            ctx.log(
                f"min_heads_per_layer {settings['min_heads_per_layer']} lets only {removed} of the "
                f"{requested} requested heads go"
            )
        ctx.log(
            f"removing {removed} of {sum(before)} attention units (unit: {_unit_words(sites)}; "
            f"{settings['importance']} importance)"
        )
        return {"chosen": chosen, "before": before, "removed": removed, "requested": requested}

    def remove(self, model, sites, choice, batches) -> None:
        if choice["removed"]:
            example = {k: v for k, v in batches[0].items() if k != "labels"}
            remove_heads(model, sites, choice["chosen"], example)
        check_widths(sites, _heads_after(choice))

    def transform_record(self, sites, choice) -> dict | None:
        if not choice["removed"]:
            return None
        kept = {
            site.label: [h for h in range(before) if h not in gone]
            for site, before, gone in zip(sites, choice["before"], choice["chosen"])
        }
        return {
            "architecture": sites[0].architecture,
            "kept_heads": kept,
            "heads_before": choice["before"],
            "head_size": sites[0].head_size,
        }

    def details(self, sites, choice, scores, settings) -> dict:
        labels = [site.label for site in sites]
        return {
            "unit": _unit_words(sites),
            "attention": labels,
            "heads_before": choice["before"],
            "heads_after": _heads_after(choice),
            "heads_requested": choice["requested"],
            "heads_removed": choice["removed"],
            "pruned_heads": dict(zip(labels, choice["chosen"])),
            "scores": {label: [round(float(v), 4) for v in s] for label, s in zip(labels, scores)},
        }

    def what(self, settings) -> str:
        if "ratio" in settings:
            return f"remove {settings['ratio']:.0%} of all attention heads (ranked across layers)"
        return f"remove {settings['heads_per_layer']} attention head(s) from every attention block"

    def keeping(self, settings) -> str:
        return f"keeping at least {settings['min_heads_per_layer']} per attention block"

    def layout_checks(self, settings, plan, architecture):
        layout = head_layout(plan.model_config, architecture)
        if layout is not None:
            yield from _head_checks(settings, plan, *layout)


def _heads_after(choice) -> list[int]:
    return [before - len(gone) for before, gone in zip(choice["before"], choice["chosen"])]


PRUNING = HeadPruning()


def head_layout(config, arch) -> tuple[int, int, str] | None:
    """(units per attention block, attention blocks, what a unit is) from a config dict.

    Reads the architecture's own config keys (``architectures.registry``) without importing
    transformers; None where the config does not say (the checks then skip).
    """
    heads = arch.config_value(config, "heads")
    counts = arch.layer_counts(config)
    if heads is None or counts is None:
        return None
    kv = arch.config_value(config, "kv_heads") or heads
    blocks = sum(counts[stack.name] * len(stack.attention) for stack in arch.stacks)
    if 0 < kv < heads and heads % kv == 0:
        return kv, blocks, f"key/value groups of {heads // kv} query heads"
    return heads, blocks, "heads"


def _head_checks(settings, plan, heads: int, blocks: int, units: str):
    per = f"{heads} {units} per attention block"
    floor = settings["min_heads_per_layer"]
    if floor >= heads:
        yield Check(
            f"min_heads_per_layer {floor} keeps every head (the model has {per}): the stage has no "
            f"effect; use at most {heads - 1}",
            "warning",
            ("min_heads_per_layer",),
        )
    if "heads_per_layer" in settings:
        n = settings["heads_per_layer"]
        if n >= heads:
            yield Check(
                f"heads_per_layer {n} would remove every head of a layer (the model has {per}); "
                f"use at most {max(1, heads - floor)}",
                "error",
                ("heads_per_layer",),
            )
        elif n > heads - floor:
            yield Check(
                f"heads_per_layer {n} leaves fewer than min_heads_per_layer {floor} of {heads} heads: "
                f"only {heads - floor} per layer will go",
                "warning",
                ("heads_per_layer",),
            )
        return
    if plan.facts.get("heads_pruned"):
        return  # an earlier prune-heads leaves fewer heads than the config says
    total = heads * blocks
    n = int(settings["ratio"] * total + 1e-9)
    if n == 0:
        yield Check(
            f"ratio {settings['ratio']} removes 0 of the model's {total} {units} (rounded down): the "
            f"stage has no effect; use at least {math.ceil(1e4 / total) / 1e4}",
            "warning",
            ("ratio",),
        )
    elif n > total - floor * blocks:
        yield Check(
            f"ratio {settings['ratio']} asks for {n} of {total} {units}, but min_heads_per_layer {floor} "
            f"lets only {total - floor * blocks} go",
            "warning",
            ("ratio",),
        )


@hookimpl
def compose_register_stages(register):
    register(
        PRUNING.stage_type(
            schema=load_schema_file("compose.plugins.pruning.heads", "prune-heads.schema.json"),
            description="Remove the least important attention heads (taylor or magnitude scores): "
            "every architecture of plugins/shared/architectures/registry.py.",
            leaves={"heads_pruned": True, "structure_changed": True},
            rebuild=rebuild,
        )
    )
