"""The `gptq` stage's embeddings and heads: which modules, tied tables, the swap, and the rebuild.

GPTQ packs the transformer blocks' linear layers; this quantizes what lies outside
the blocks (every module not inside an ``nn.ModuleList``), row-wise with
``gptq.row_quant``, by role:

- ``embeddings``: every ``nn.Embedding`` (word, position, token type; T5's relative
  position bias lives inside its blocks and stays);
- ``lm_head``: the model's output embeddings (``get_output_embeddings()``), the
  decoder's and T5's projection to the vocabulary;
- ``heads``: every other ``nn.Linear`` (a classifier, BERT's pooler).

Tied weights (GPT-2's and T5's lm_head, T5's ``shared`` table and its stacks'
``embed_tokens``) are one tensor: they are quantized once, with the ``embeddings``
settings if any member is an embedding and they are set, else with ``lm_head``'s.
The first member (an embedding if there is one) owns the packed tensors; the others
become views that read them, so the table is stored once and stays tied. The model's
own tying (``_tied_weights_keys``, which ``tie_weights()`` would use to re-tie
``.weight`` parameters that no longer exist) is narrowed to the pairs left in float.

Subclasses of ``nn.Embedding``/``nn.Linear`` (with a forward of their own, e.g. a
scaled embedding) are left in float and reported as skipped.
"""

from __future__ import annotations

import torch

from compose.plugins.gptq.engine import set_module
from compose.plugins.gptq.row_quant import QuantEmbedding, QuantLinear

ROLES = ("embeddings", "lm_head", "heads")


def _outside_blocks(model) -> list[tuple[str, torch.nn.Module]]:
    inside = set()
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            inside.update(id(m) for m in module.modules())
    return [(n, m) for n, m in model.named_modules() if n and id(m) not in inside]


def _role(module, output) -> str | None:
    if isinstance(module, torch.nn.Embedding):
        return "embeddings"
    if module is output:
        return "lm_head"
    if isinstance(module, torch.nn.Linear):
        return "heads"
    return None


def plan(model, settings) -> tuple[list[dict], list[str]]:
    """([{"members": [(name, role)], "role", "settings"}] to quantize, names skipped as subclasses).

    A group is the modules sharing one weight tensor; ``role`` is the setting it follows."""
    groups, skipped = {}, []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in _outside_blocks(model):
        role = _role(module, output)
        if role is None:
            continue
        if type(module) not in (torch.nn.Embedding, torch.nn.Linear):
            if settings[role]["bits"] is not None:
                skipped.append(name)
            continue
        if role == "embeddings" and module.max_norm is not None:
            skipped.append(name)  # its forward renormalises the table in place
            continue
        groups.setdefault(id(module.weight), []).append((name, role))
    chosen = []
    for members in groups.values():
        roles = [r for _, r in members]
        role = next((r for r in ROLES if r in roles and settings[r]["bits"] is not None), None)
        if role is not None:
            members.sort(key=lambda m: m[1] != "embeddings")  # an embedding owns a tied table
            chosen.append({"members": members, "role": role, "settings": settings[role]})
    return chosen, skipped


def _spec(module, role: str, rows: dict, tied_to: str | None) -> dict:
    embedding = isinstance(module, torch.nn.Embedding)
    shape = list(module.weight.shape)
    return {
        "kind": "embedding" if embedding else "linear",
        "role": role,
        "shape": shape,  # [rows, cols]: [num_embeddings, dim] or [out_features, in_features]
        "bits": rows["bits"],
        "group_size": rows["group_size"],
        "sym": rows["sym"],
        "padding_idx": module.padding_idx if embedding else None,
        "bias": (not embedding) and module.bias is not None,
        "dtype": str(module.weight.dtype).removeprefix("torch."),
        "tied_to": tied_to,
    }


def _new(spec: dict, owner=None):
    rows, cols = spec["shape"]
    common = dict(
        bits=spec["bits"],
        group_size=spec["group_size"],
        sym=spec["sym"],
        dtype=getattr(torch, spec["dtype"]),
        tied_to=owner,
    )
    if spec["kind"] == "embedding":
        return QuantEmbedding(rows, cols, padding_idx=spec["padding_idx"], **common)
    return QuantLinear(cols, rows, bias=spec["bias"], **common)


def quantize(model, settings) -> dict:
    """Quantize and swap the embeddings and heads ``settings`` asks for, in place.

    Returns {"modules": {name: spec} (what ``rebuild`` takes), "skipped": [...],
    "errors": {owner name: ||Wq - W|| / ||W||}, "fp32_bytes", "packed_bytes"}."""
    chosen, skipped = plan(model, settings)
    found = {"modules": {}, "skipped": skipped, "errors": {}, "fp32_bytes": 0, "packed_bytes": 0}
    for group in chosen:
        (owner_name, _), *views = group["members"]
        source = model.get_submodule(owner_name)
        weight = source.weight.detach()
        spec = _spec(source, group["role"], group["settings"], None)
        owner = _new(spec).to(weight.device).load_weight(weight)
        if spec["bias"]:
            owner.bias.copy_(source.bias.detach())
        found["modules"][owner_name] = spec
        found["errors"][owner_name] = round(
            float((owner.rows_of().float() - weight.float()).norm() / weight.float().norm().clamp(min=1e-12)), 6
        )
        found["fp32_bytes"] += weight.numel() * weight.element_size()
        found["packed_bytes"] += sum(t.numel() * t.element_size() for t in owner.state_dict().values())
        swaps = [(owner_name, owner)]
        for name, role in views:
            module = model.get_submodule(name)
            view_spec = _spec(module, role, group["settings"], owner_name)
            view = _new(view_spec, owner).to(weight.device)
            if view_spec["bias"]:
                view.bias.copy_(module.bias.detach())
                found["packed_bytes"] += view.bias.numel() * view.bias.element_size()
            found["modules"][name] = view_spec
            swaps.append((name, view))
        for name, module in swaps:
            set_module(model, name, module)
    untie(model, list(found["modules"]))
    return found


def rebuild(model, modules: dict) -> None:
    """Swap in empty packed modules as recorded by ``quantize`` (owners, then their tied views)."""
    made = {}
    for name, spec in sorted(modules.items(), key=lambda item: item[1]["tied_to"] is not None):
        made[name] = _new(spec, made[spec["tied_to"]] if spec["tied_to"] else None)
        set_module(model, name, made[name])
    untie(model, list(modules))


def untie(model, names: list[str]) -> None:
    """Drop the model's tying pairs that name a swapped module (its ``.weight`` is gone)."""
    from transformers import PreTrainedModel

    prefixes = tuple(name + "." for name in names)
    for path, sub in model.named_modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        head = path + "." if path else ""
        for attribute in ("_tied_weights_keys", "all_tied_weights_keys"):
            pairs = getattr(sub, attribute, None)
            if isinstance(pairs, dict):
                kept = {
                    k: v
                    for k, v in pairs.items()
                    if not (head + k).startswith(prefixes) and not (head + v).startswith(prefixes)
                }
                sub.__dict__[attribute] = kept
