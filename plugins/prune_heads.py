"""The `prune-heads` stage: score every attention head, then remove the weakest for real.

Scoring (``importance``), on shuffled calibration batches of ``calibration_split``:

- ``taylor``: the head-mask sensitivity of Michel et al. (2019), "Are Sixteen Heads
  Really Better than One?": I_h = sum over batches of |dL/dm_h|, where m_h is a gate
  (1.0) multiplying head h's context vector. transformers 5 BERT no longer accepts a
  ``head_mask`` argument, so the gate is a forward hook on each self-attention module
  that views its output (batch, seq, heads * head_size) per head and multiplies it by
  a differentiable vector of ones (``head_gates``): the forward is unchanged and the
  backward gives dL/dm. Only the gates require gradients while scoring.
- ``magnitude``: the L2 norm of head h's query/key/value rows and output-projection
  columns.

Both are normalised per layer by the layer's L2 norm (as in the paper), so that one
global ranking can compare heads of different layers (``ratio``).

Removal: torch-pruning's ``DependencyGraph`` couples each layer's query/key/value
output channels with the attention output projection's input channels; pruning the
chosen heads' channel indices through that group removes exactly those heads. (Its
``MetaPruner`` ranks heads by its own per-channel importance with one ratio per
layer, so it cannot express a set of heads chosen here.) The self-attention's
``num_attention_heads`` / ``all_head_size`` are then updated.

Reloading: transformers 5 cannot reload a head-pruned model by itself (config.json
keeps the original ``num_attention_heads``), so the stage records the heads kept per
layer with ``record_transform`` and ``rebuild`` shrinks a freshly built model to the
same shapes before ``load_artifact`` loads the weights.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compose import hookimpl
from compose.api import (
    Check,
    StageContext,
    StageResult,
    StageType,
    count_parameters,
    load_schema_file,
    record_transform,
    train_model,
)

STAGE = "prune-heads"


# -- where the attention heads are ---------------------------------------------


@dataclass
class AttentionSite:
    """One self-attention block: the module that computes the heads and its four projections."""

    index: int
    module: Any  # holds num_attention_heads / attention_head_size; receives the gate hook
    query: Any
    key: Any
    value: Any
    output: Any  # the projection after the heads (its input channels are the heads')

    @property
    def num_heads(self) -> int:
        return self.module.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.module.attention_head_size

    def channels(self, heads) -> list[int]:
        """The projection channels of ``heads`` (head h owns channels h*d .. h*d+d-1)."""
        d = self.head_size
        return [c for h in sorted(heads) for c in range(h * d, (h + 1) * d)]

    def set_num_heads(self, n: int) -> None:
        self.module.num_attention_heads = n
        self.module.all_head_size = n * self.head_size


def find_attention(model) -> list[AttentionSite]:
    """The model's prunable self-attention blocks, in layer order.

    The one place that knows where a model family keeps its attention. Now:
    BERT-class encoders (BERT, RoBERTa, ELECTRA, MiniLM...), whose layers are
    ``base_model.encoder.layer[i].attention`` with ``.self.{query,key,value}`` and
    ``.output.dense``. GPT-2 (fused ``c_attn``) and T5 are to be added here.
    """
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    sites = []
    for index, layer in enumerate(layers or ()):
        attention = getattr(layer, "attention", None)
        inner = getattr(attention, "self", None)
        dense = getattr(getattr(attention, "output", None), "dense", None)
        if inner is None or dense is None or not all(hasattr(inner, a) for a in ("query", "key", "value")):
            sites = []
            break
        sites.append(AttentionSite(index, inner, inner.query, inner.key, inner.value, dense))
    if not sites:
        raise ValueError(
            f"prune-heads cannot find BERT-style attention layers in {type(model).__name__}; "
            "it supports BERT-class encoders for now"
        )
    return sites


# -- scoring -----------------------------------------------------------------


@contextmanager
def head_gates(sites, device):
    """Differentiable per-head gates (ones) on each site's context output; yields the gate tensors.

    A forward hook on the self-attention module multiplies its output, viewed as
    (..., heads, head_size), by the layer's gate: the real replacement for the
    ``head_mask`` argument that transformers 5 removed.
    """
    import torch

    gates = [torch.ones(site.num_heads, device=device, requires_grad=True) for site in sites]

    def gate_hook(site, gate):
        def hook(module, args, output):
            context = output[0] if isinstance(output, tuple) else output
            shape = context.shape
            gated = (context.view(*shape[:-1], site.num_heads, -1) * gate.to(context.dtype)[:, None]).view(shape)
            return (gated, *output[1:]) if isinstance(output, tuple) else gated

        return hook

    handles = [site.module.register_forward_hook(gate_hook(site, gate)) for site, gate in zip(sites, gates)]
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def taylor_scores(model, sites, batches, device, bar) -> list:
    """Per layer: sum over batches of |dL/d gate_h| (Michel et al., 2019)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)  # only the gates need gradients
    scores = [torch.zeros(site.num_heads, device=device) for site in sites]
    try:
        with head_gates(sites, device) as gates:
            for batch in batches:
                loss = model(**batch).loss
                if loss is None:
                    raise ValueError("the model returned no loss: taylor scores need labelled calibration batches")
                for score, grad in zip(scores, torch.autograd.grad(loss, gates)):
                    score += grad.abs()
                bar.advance()
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return [s.cpu() for s in scores]


def magnitude_scores(sites) -> list:
    """Per layer: L2 norm of each head's query/key/value rows and output-projection columns."""
    import torch

    scores = []
    with torch.no_grad():
        for site in sites:
            h = site.num_heads
            squares = sum(lin.weight.float().reshape(h, -1).pow(2).sum(1) for lin in (site.query, site.key, site.value))
            out = site.output.weight.float()
            squares = squares + out.reshape(out.shape[0], h, -1).pow(2).sum((0, 2))
            scores.append(squares.sqrt().cpu())
    return scores


def normalise_per_layer(scores) -> list:
    """Divide each layer's scores by their L2 norm (Michel et al.), for a global ranking."""
    return [s / (s.norm() + 1e-20) for s in scores]


def choose_heads(scores, settings) -> list[list[int]]:
    """Heads to remove, per layer: the lowest-scoring ones, keeping ``min_heads_per_layer``."""
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


def remove_heads(model, sites, chosen, example) -> None:
    """Remove the chosen heads with torch-pruning's dependency graph; update the attributes."""
    import torch
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    names = {module: name for name, module in model.named_modules()}
    for site, heads in zip(sites, chosen):
        if not heads:
            continue
        group = graph.get_pruning_group(site.query, tp.prune_linear_out_channels, idxs=site.channels(heads))
        allowed = {site.query, site.key, site.value, site.output}
        strays = {
            names.get(dep.target.module, str(dep.target.module))
            for dep, _ in group
            if isinstance(dep.target.module, torch.nn.Module) and dep.target.module not in allowed
            and any(True for _ in dep.target.module.parameters(recurse=False))
        }
        if strays or not graph.check_pruning_group(group):
            raise RuntimeError(
                f"torch-pruning couples layer {site.index}'s heads with other layers ({', '.join(sorted(strays))}); "
                "this model's attention is not supported by prune-heads"
            )
        group.prune()
        site.set_num_heads(site.num_heads - len(heads))


def check_shapes(sites, expected: list[int]) -> None:
    for site, heads in zip(sites, expected):
        width = heads * site.head_size
        shapes = (site.query.out_features, site.key.out_features, site.value.out_features, site.output.in_features)
        if site.num_heads != heads or shapes != (width,) * 4:
            raise RuntimeError(
                f"layer {site.index}: expected {heads} heads ({width} channels) after pruning, "
                f"found {site.num_heads} heads and projections {shapes}"
            )


def _keep(linear, index, dim: int) -> None:
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(dim, index).clone())
    if dim == 0:
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data.index_select(0, index).clone())
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def rebuild(model, info):
    """Shrink a freshly built model's attention to the recorded heads (weights load afterwards)."""
    import torch

    sites = find_attention(model)
    for site in sites:
        keep = info["kept_heads"].get(str(site.index))
        if keep is None:
            continue
        if site.num_heads != info["heads_before"][site.index] or site.head_size != info["head_size"]:
            raise ValueError(
                f"layer {site.index} has {site.num_heads} heads of size {site.head_size}, but the recorded "
                f"pruning expects {info['heads_before'][site.index]} of size {info['head_size']}: "
                "the artifact does not match its config"
            )
        index = torch.tensor(site.channels(keep), dtype=torch.long, device=site.query.weight.device)
        for linear in (site.query, site.key, site.value):
            _keep(linear, index, 0)
        _keep(site.output, index, 1)
        site.set_num_heads(len(keep))
    return model


# -- the stage -----------------------------------------------------------------


def _calibration(ctx: StageContext, count: int) -> list[dict]:
    s = ctx.settings
    loader = ctx.task.batches(s["calibration_split"], ctx.tokenizer, s["calibration_batch_size"], shuffle=True,
                              seed=ctx.seed)  # fmt: skip
    batches = []
    for batch in loader:
        batches.append({k: v.to(ctx.device) for k, v in batch.items()})
        if len(batches) == count:
            break
    if not batches:
        raise ValueError(f"split '{s['calibration_split']}' has no rows to calibrate on; set calibration_split")
    return batches


def _rounded(scores) -> dict:
    return {str(i): [round(float(v), 4) for v in s] for i, s in enumerate(scores)}


def run(ctx: StageContext) -> StageResult:
    import torch

    settings = ctx.settings
    model = ctx.model.eval()
    sites = find_attention(model)
    heads_before = [site.num_heads for site in sites]
    params_before = count_parameters(model)
    # magnitude scores need no data: one batch traces the model for torch-pruning
    batches = _calibration(ctx, settings["calibration_batches"] if settings["importance"] == "taylor" else 1)

    started = time.perf_counter()
    if settings["importance"] == "taylor":
        with ctx.progress.track(f"{ctx.name}: scoring heads (taylor)", total=len(batches)) as bar:
            raw = taylor_scores(model, sites, batches, ctx.device, bar)
    else:
        raw = magnitude_scores(sites)
    scores = normalise_per_layer(raw)
    chosen = choose_heads(scores, settings)
    scoring_seconds = time.perf_counter() - started
    removed = sum(len(c) for c in chosen)
    requested = (settings["heads_per_layer"] * len(sites) if "heads_per_layer" in settings
                 else int(settings["ratio"] * sum(heads_before) + 1e-9))  # fmt: skip
    if removed < requested:
        ctx.log(f"min_heads_per_layer {settings['min_heads_per_layer']} lets only {removed} of the "
                f"{requested} requested heads go")  # fmt: skip
    ctx.log(f"removing {removed} of {sum(heads_before)} heads ({settings['importance']} importance)")

    started = time.perf_counter()
    if removed:
        example = {k: v for k, v in batches[0].items() if k != "labels"}
        remove_heads(model, sites, chosen, example)
    heads_after = [before - len(c) for before, c in zip(heads_before, chosen)]
    check_shapes(sites, heads_after)
    with torch.no_grad():
        logits = model(**batches[0]).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("the pruned model's outputs are not finite")
    pruning_seconds = time.perf_counter() - started

    recovery = None
    if settings["recovery"] is not None:
        model, summary = train_model(ctx, model, dict(settings["recovery"]))
        recovery = summary.to_json()
    if removed:
        kept = {str(site.index): [h for h in range(before) if h not in gone]
                for site, before, gone in zip(sites, heads_before, chosen)}  # fmt: skip
        record_transform(model, STAGE, {"kept_heads": kept, "heads_before": heads_before,
                                        "head_size": sites[0].head_size})  # fmt: skip
    return StageResult(
        model=model,
        details={
            "importance": settings["importance"],
            "calibration": {"split": settings["calibration_split"], "batches": len(batches),
                            "examples": sum(len(b["input_ids"]) for b in batches)},  # fmt: skip
            "heads_before": heads_before,
            "heads_after": heads_after,
            "heads_requested": requested,
            "heads_removed": removed,
            "pruned_heads": {str(i): c for i, c in enumerate(chosen)},
            "scores": _rounded(scores),
            "params_before": params_before,
            "params_after": count_parameters(model),
            "seconds": {"scoring": round(scoring_seconds, 3), "pruning": round(pruning_seconds, 3)},
            "recovery": recovery,
        },
    )


def describe(settings) -> str:
    if "ratio" in settings:
        what = f"remove {settings['ratio']:.0%} of all attention heads (ranked across layers)"
    else:
        what = f"remove {settings['heads_per_layer']} attention head(s) from every layer"
    if settings["importance"] == "taylor":
        how = (f"taylor head importance on {settings['calibration_batches']} batch(es) of "
               f"{settings['calibration_batch_size']} from '{settings['calibration_split']}'")  # fmt: skip
    else:
        how = "weight magnitude"
    text = f"{what} by {how}, keeping at least {settings['min_heads_per_layer']} per layer"
    recovery = settings["recovery"]
    if recovery is None:
        return text + "; no recovery training"
    length = f"{recovery['max_steps']} steps" if recovery["max_steps"] else f"{recovery['epochs']} epoch(s)"
    return text + f"; then recovery training for {length} at lr {recovery['learning_rate']}"


def check(settings, plan):
    splits = plan.recipe.get("task", {}).get("data", {})
    for path, split in (
        (("calibration_split",), settings["calibration_split"]),
        (("recovery", "split"), (settings["recovery"] or {}).get("split")),
    ):
        if split is not None and splits and split not in splits:
            yield Check(f"split '{split}' is not in task.data (it has: {', '.join(splits)})", "error", path)
    config = plan.model_config or {}
    heads, layers = config.get("num_attention_heads"), config.get("num_hidden_layers")
    if not isinstance(heads, int):
        return
    floor = settings["min_heads_per_layer"]
    if floor >= heads:
        yield Check(f"min_heads_per_layer {floor} keeps all {heads} heads of every layer: the stage has no "
                    f"effect; use at most {heads - 1}", "warning", ("min_heads_per_layer",))  # fmt: skip
    if "heads_per_layer" in settings:
        n = settings["heads_per_layer"]
        if n >= heads:
            yield Check(f"heads_per_layer {n} would remove every head of a layer (the model has {heads} per "
                        f"layer); use at most {max(1, heads - floor)}", "error", ("heads_per_layer",))  # fmt: skip
        elif n > heads - floor:
            yield Check(f"heads_per_layer {n} leaves fewer than min_heads_per_layer {floor} of {heads} heads: "
                        f"only {heads - floor} per layer will go", "warning", ("heads_per_layer",))  # fmt: skip
        return
    earlier = any(uses == STAGE for _, uses, _ in plan.stages[: plan.index])
    if not isinstance(layers, int) or earlier:
        return
    total = heads * layers
    n = int(settings["ratio"] * total + 1e-9)
    if n == 0:
        yield Check(f"ratio {settings['ratio']} removes 0 of the model's {total} heads (rounded down): the stage "
                    f"has no effect; use at least {math.ceil(1e4 / total) / 1e4}", "warning", ("ratio",))  # fmt: skip
    elif n > total - floor * layers:
        yield Check(f"ratio {settings['ratio']} asks for {n} of {total} heads, but min_heads_per_layer {floor} "
                    f"lets only {total - floor * layers} go", "warning", ("ratio",))  # fmt: skip


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.schemas", "prune-heads.schema.json"),
            description="Remove the least important attention heads (taylor or magnitude scores, torch-pruning).",
            needs={"quantized": False, "task_trained": True},
            leaves={"heads_pruned": True},
            compresses=True,
            families=("encoder",),
            check=check,
            describe=describe,
            rebuild=rebuild,
        )
    )
