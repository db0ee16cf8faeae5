"""The `prune-ffn` stage: score every feed-forward neuron, then remove the weakest for real.

Structured pruning of the FFN ("structured pruning removes entire neurons or
channels"): intermediate neuron j of a block is row j of its up (and gate)
projection and column j of its down projection; removing it shrinks those matrices
and nothing else. The FFN holds about two thirds of a BERT block's weights and most
of its FLOPs at short sequence lengths, which is why head pruning alone buys little
speed. ``compose.plugins.shared.architectures.ffn`` finds the blocks where the architecture table
(``architectures.registry``) puts them: BERT, RoBERTa, Llama, Qwen2 (masked), GPT-2 (``Conv1D``:
transposed weights), T5 (``wi`` or masked ``wi_0``/``wi_1``, then ``wo``) and BART
(``fc1``, ``fc2``; encoder and decoder blocks).

Scoring (``importance``), on shuffled calibration batches of ``calibration_split``:

- ``taylor``: the first-order Taylor criterion of Molchanov et al. (2017), "Pruning
  Convolutional Neural Networks for Resource Efficient Inference": removing neuron j
  changes the loss by about -sum_t a_jt * dL/da_jt (a: its activation over the
  tokens t of a batch). A differentiable mask of ones on the down projection's input
  (``neuron_masks``) gives exactly that sum as dL/d mask_j; the score is
  sum over batches of |dL/d mask_j|, as prune-heads scores heads. L is the task's
  own loss (``model(**batch).loss``). Only the masks require gradients while scoring.
- ``magnitude``: the L2 norm of the neuron's up/gate rows and down column.

Both are normalised per block by the block's L2 norm (Molchanov et al.), so that a
global ranking can compare neurons of different blocks.

How many go (``ratio`` with ``scope``, or ``layer_ratios``): ``scope: global`` removes
the lowest-ranked neurons of the whole model, so blocks lose different numbers;
``per_layer`` (and ``layer_ratios``) remove a fraction of every block, ranked inside
it. Every block keeps at least ``min_neurons_per_layer`` and a pruned block keeps a
multiple of ``multiple_of`` (the nearest one to what the ranking asked for); within a
block the highest-scoring neurons stay, in their original order.

Reloading: config.json has one ``intermediate_size`` (``d_ff``, ``n_inner``) for all
blocks and cannot describe per-block widths, so it stays as it was (it describes the
model the transform starts from); the stage records every block's width before and
after with ``record_transform``, and ``rebuild`` shrinks a freshly built model to the
same shapes before ``load_artifact`` loads the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from compose import hookimpl
from compose.api import Check, StageContext, load_schema_file
from compose.plugins.pruning import importance
from compose.plugins.pruning.base import UnitPruning
from compose.plugins.shared.architectures.ffn import check_widths, find_ffn, neuron_masks

STAGE = "prune-ffn"

__all__ = ["choose_neurons", "find_ffn", "kept_counts", "magnitude_scores", "neuron_masks", "rebuild", "taylor_scores"]


# -- scoring -----------------------------------------------------------------


def taylor_scores(model, sites, batches, device, bar) -> list:
    """Per block: sum over batches of |dL/d mask_j| = |sum over tokens of activation x gradient| (Molchanov et al.)."""
    return importance.taylor_scores(model, neuron_masks(sites, device), batches, bar)


def magnitude_scores(sites) -> list:
    """Per block: the L2 norm of each neuron's up/gate rows and down-projection column."""
    return [site.neuron_norms().cpu() for site in sites]


# -- how many neurons stay, and which ------------------------------------------


def layer_ratio_list(layer_ratios, labels: list[str]) -> list[float]:
    """``layer_ratios`` (a list in block order, or a map label -> fraction) as one fraction per block."""
    if isinstance(layer_ratios, Mapping):
        unknown = sorted(set(layer_ratios) - set(labels))
        if unknown:
            raise ValueError(
                f"layer_ratios names block(s) {', '.join(unknown)} that the model does not have "
                f"(its feed-forward blocks: {', '.join(labels)})"
            )
        return [float(layer_ratios.get(label, 0.0)) for label in labels]
    if len(layer_ratios) != len(labels):
        raise ValueError(
            f"layer_ratios lists {len(layer_ratios)} fraction(s) but the model has {len(labels)} "
            f"feed-forward blocks ({', '.join(labels)}): give one per block, or a map"
        )
    return [float(r) for r in layer_ratios]


def floor_of(width: int, settings) -> int:
    """The fewest neurons a block of ``width`` keeps: min_neurons_per_layer rounded up to multiple_of."""
    m = settings["multiple_of"]
    return min(width, -(-settings["min_neurons_per_layer"] // m) * m)


def _rounded(keep: int, width: int, floor: int, multiple: int) -> int:
    """``keep`` rounded to the nearest multiple (a block that keeps everything keeps its width)."""
    if keep >= width:
        return width
    nearest = multiple * math.floor(keep / multiple + 0.5)
    return width if nearest >= width else max(floor, nearest)


def _rounded_total(wanted: list[int], widths: list[int], multiple: int) -> list[int]:
    """Each pruned block rounded down to a multiple, then the largest remainders rounded up until the
    total is within half a multiple of what was wanted (largest-remainder apportionment)."""
    kept = [w if k >= w else multiple * (k // multiple) for k, w in zip(wanted, widths)]
    extra = math.floor((sum(wanted) - sum(kept)) / multiple + 0.5)
    by_remainder = sorted(
        (i for i, (k, w) in enumerate(zip(wanted, widths)) if k < w), key=lambda i: (-(wanted[i] - kept[i]), i)
    )
    for i in by_remainder[:extra]:
        kept[i] = min(widths[i], kept[i] + multiple)
    return kept


def kept_counts(scores, labels: list[str], settings) -> list[int]:
    """How many neurons each block keeps: the ratios, the floor and the rounding to ``multiple_of`` applied.

    Per block (``scope: per_layer``, ``layer_ratios``) each count is rounded to its
    nearest multiple; globally, the total stays within half a multiple of the target.
    """
    widths = [len(s) for s in scores]
    floors = [floor_of(w, settings) for w in widths]
    if "layer_ratios" in settings or settings["scope"] == "per_layer":
        ratios = (
            layer_ratio_list(settings["layer_ratios"], labels)
            if "layer_ratios" in settings
            else [settings["ratio"]] * len(widths)
        )
        wanted = [max(f, w - int(r * w + 1e-9)) for w, f, r in zip(widths, floors, ratios)]
        return [_rounded(k, w, f, settings["multiple_of"]) for k, w, f in zip(wanted, widths, floors)]
    target = int(settings["ratio"] * sum(widths) + 1e-9)  # rounded down
    ranked = sorted((v, layer, j) for layer, s in enumerate(scores) for j, v in enumerate(_values(s)))
    wanted = list(widths)
    removed = 0
    for _, layer, _ in ranked:
        if removed == target:
            break
        if wanted[layer] > floors[layer]:
            wanted[layer] -= 1
            removed += 1
    return _rounded_total(wanted, widths, settings["multiple_of"])


def choose_neurons(scores, counts: list[int]) -> list[list[int]]:
    """Per block: the ``counts[i]`` highest-scoring neurons (ties: the lower index), in their original order."""
    kept = []
    for layer_scores, n in zip(scores, counts):
        values = _values(layer_scores)
        order = sorted(range(len(values)), key=lambda j: (-values[j], j))
        kept.append(sorted(order[:n]))
    return kept


def _values(scores) -> list[float]:
    return scores.tolist() if hasattr(scores, "tolist") else [float(v) for v in scores]


# -- reloading -------------------------------------------------------------------


def rebuild(model, info):
    """Shrink a freshly built model's feed-forward blocks to the recorded widths (weights load afterwards)."""
    sites = find_ffn(model)
    before, after = info["neurons_before"], info["neurons_after"]
    if len(before) != len(sites) or len(after) != len(sites):
        raise ValueError(
            f"the recorded FFN pruning covers {len(before)} feed-forward blocks but the model has "
            f"{len(sites)}: the artifact does not match its config"
        )
    for site, width in zip(sites, before):
        if site.width != width:
            raise ValueError(
                f"feed-forward {site.label} has {site.width} neurons, but the recorded pruning "
                f"expects {width}: the artifact does not match its config"
            )
    for site, n in zip(sites, after):
        if n < site.width:
            site.keep(list(range(n)))  # which neurons does not matter: the saved weights replace them
    check_widths(sites, after)
    return model


# -- the stage -----------------------------------------------------------------


def requested_removal(widths: list[int], labels: list[str], settings) -> int:
    if "layer_ratios" in settings:
        return sum(int(r * w + 1e-9) for w, r in zip(widths, layer_ratio_list(settings["layer_ratios"], labels)))
    if settings["scope"] == "per_layer":
        return sum(int(settings["ratio"] * w + 1e-9) for w in widths)
    return int(settings["ratio"] * sum(widths) + 1e-9)


class NeuronPruning(UnitPruning):
    stage = STAGE
    units = "FFN neurons"
    taylor_words = "taylor importance (activation x gradient)"

    find_sites = staticmethod(find_ffn)
    taylor_scores = staticmethod(taylor_scores)
    magnitude_scores = staticmethod(magnitude_scores)

    def before_scoring(self, ctx: StageContext, sites) -> None:
        if "layer_ratios" in ctx.settings:
            layer_ratio_list(ctx.settings["layer_ratios"], [site.label for site in sites])  # fails before scoring

    def choose(self, ctx: StageContext, sites, scores) -> dict:
        settings = ctx.settings
        labels = [site.label for site in sites]
        before = [site.width for site in sites]
        after = kept_counts(scores, labels, settings)
        requested = requested_removal(before, labels, settings)
        ctx.log(
            f"removing {sum(before) - sum(after)} of {sum(before)} FFN neurons ({requested} requested; "
            f"{settings['importance']} importance, kept counts multiples of {settings['multiple_of']}, "
            f"at least {settings['min_neurons_per_layer']} per block); neurons kept per block: "
            + ", ".join(f"{label}: {n}/{w}" for label, n, w in zip(labels, after, before))
        )
        return {
            "labels": labels,
            "before": before,
            "after": after,
            "kept": choose_neurons(scores, after),
            "requested": requested,
        }

    def remove(self, model, sites, choice, batches) -> None:
        for site, keep in zip(sites, choice["kept"]):
            if len(keep) < site.width:
                site.keep(keep)
        check_widths(sites, choice["after"])

    def transform_record(self, sites, choice) -> dict | None:
        if sum(choice["before"]) == sum(choice["after"]):
            return None
        return {
            "architecture": sites[0].architecture,
            "labels": choice["labels"],
            "neurons_before": choice["before"],
            "neurons_after": choice["after"],
        }

    def details(self, sites, choice, scores, settings) -> dict:
        return {
            "scope": "layer_ratios" if "layer_ratios" in settings else settings["scope"],
            "blocks": choice["labels"],
            "neurons_before": choice["before"],
            "neurons_after": choice["after"],
            "neurons_requested": choice["requested"],
            "neurons_removed": sum(choice["before"]) - sum(choice["after"]),
            "multiple_of": settings["multiple_of"],
        }

    def what(self, settings) -> str:
        if "layer_ratios" in settings:
            ratios = settings["layer_ratios"]
            listed = (
                ", ".join(f"{k}: {v:.0%}" for k, v in ratios.items())
                if isinstance(ratios, Mapping)
                else ", ".join(f"{v:.0%}" for v in ratios)
            )
            return f"remove per feed-forward block the fraction of neurons listed ({listed})"
        if settings["scope"] == "global":
            return f"remove {settings['ratio']:.0%} of all FFN neurons (ranked across blocks)"
        return f"remove {settings['ratio']:.0%} of the FFN neurons of every block"

    def keeping(self, settings) -> str:
        return (
            f"keeping at least {settings['min_neurons_per_layer']} per block and a multiple of "
            f"{settings['multiple_of']}"
        )

    def settings_checks(self, settings, plan):
        return _gptq_checks(settings, plan)

    def layout_checks(self, settings, plan, architecture):
        layout = ffn_layout(plan.model_config, architecture)
        if layout is not None:
            yield from _layout_checks(settings, plan, *layout)


PRUNING = NeuronPruning()


# -- validation ------------------------------------------------------------------


def ffn_layout(config, arch) -> tuple[int | None, list[str]] | None:
    """(intermediate width or None, block labels) from a config dict, without importing transformers.

    Reads the architecture's own config keys (``architectures.registry``: BERT/Llama
    ``intermediate_size``, T5 ``d_ff``, GPT-2 ``n_inner`` or 4 x ``n_embd``, BART
    ``encoder_ffn_dim``); None where the config does not say how many blocks there are.
    """
    counts = arch.layer_counts(config)
    if counts is None:
        return None
    labels = [str(i) if stack == "layers" else f"{stack}.{i}" for stack, n in counts.items() for i in range(n)]
    return arch.config_value(config, "intermediate"), labels


def _gptq_checks(settings, plan):
    """A later gptq stage quantizes the pruned widths: its packing and groups want multiples."""
    m = settings["multiple_of"]
    for name, uses, later in plan.stages[plan.index + 1 :]:
        if uses != "gptq" or not isinstance(later, Mapping):
            continue
        if later.get("bits") == 3 and m % 32:
            yield Check(
                f"stage '{name}' quantizes to 3 bits, which packs 32 weights into 3 words and needs layer "
                f"widths that are multiples of 32, but multiple_of {m} lets a pruned FFN keep other counts; "
                f"set multiple_of: {math.lcm(m, 32)}",
                "error",
                ("multiple_of",),
            )
        group = later.get("group_size")
        if isinstance(group, int) and group > 0 and m % group:
            yield Check(
                f"stage '{name}' quantizes with group_size {group}, which does not divide every width "
                f"multiple_of {m} allows: a pruned FFN's down projection would get a partial last group "
                f"(it works, but fast GPU kernels such as Marlin and ExLlama refuse such layers); set "
                f"multiple_of: {math.lcm(m, group)} to keep whole groups",
                "warning",
                ("multiple_of",),
            )


def _layout_checks(settings, plan, width: int | None, labels: list[str]):
    if "layer_ratios" in settings:
        try:
            layer_ratio_list(settings["layer_ratios"], labels)
        except ValueError as exc:
            yield Check(str(exc), "error", ("layer_ratios",))
    if width is None or plan.facts.get("ffn_pruned"):
        return  # an earlier prune-ffn leaves other widths than the config says
    floor = floor_of(width, settings)
    if floor >= width:
        yield Check(
            f"min_neurons_per_layer {settings['min_neurons_per_layer']} (rounded up to a multiple of "
            f"{settings['multiple_of']}) keeps every one of the {width} neurons per block: the stage has no "
            f"effect; lower it",
            "warning",
            ("min_neurons_per_layer",),
        )
        return
    if "ratio" in settings:
        total = width * len(labels)
        n = requested_removal([width] * len(labels), labels, settings)
        if n == 0:
            yield Check(
                f"ratio {settings['ratio']} removes 0 of the model's {total} FFN neurons (rounded down): "
                f"the stage has no effect",
                "warning",
                ("ratio",),
            )
        elif n > total - floor * len(labels):
            yield Check(
                f"ratio {settings['ratio']} asks for {n} of {total} FFN neurons, but min_neurons_per_layer "
                f"lets only {total - floor * len(labels)} go ({floor} stay per block)",
                "warning",
                ("ratio",),
            )


@hookimpl
def compose_register_stages(register):
    register(
        PRUNING.stage_type(
            schema=load_schema_file("compose.plugins.pruning.ffn", "prune-ffn.schema.json"),
            description="Remove the least important feed-forward neurons (taylor or magnitude scores), globally or "
            "per block: every architecture of plugins/shared/architectures/registry.py.",
            leaves={"ffn_pruned": True, "structure_changed": True},
            rebuild=rebuild,
        )
    )
