"""The `gptq` stage: quantize the transformer blocks' linear layers to 2-8 bits with GPTQ.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers") quantizes a layer's weight columns one at a time and
spreads each column's rounding error over the columns not yet quantized, weighted by
the inverse of the layer's Hessian H = X^T X from calibration activations X.

Engine: GPTQModel (pip ``gptqmodel``), by one of two paths, per model family:

- decoder (Llama, GPT-2, and the other decoders GPTQModel has a model definition
  for): GPTQModel's own model path. The model is saved to a scratch folder with its
  tokenizer, loaded with ``GPTQModel.load(folder, QuantizeConfig)``, quantized with
  ``quantize(examples)`` on ``samples`` unpadded examples of ``split``, and saved;
  the packed tensors it saved are then loaded into packed layers of the pipeline's
  model (``gptq.engine``: why the engine's in-memory result is not used as is).
  GPTQModel then decides the block order, the input capture and the per-block
  grouping (``true_sequential``).
- encoder (BERT, RoBERTa) and encoder-decoder (T5, BART): GPTQModel 7.6.0 has no model
  definition for them (its table has no bert, t5, bart...), so the stage walks the
  blocks the architecture table (``architectures.registry``) names itself and leaves the maths and the packing to GPTQModel's layer-level
  API (``gptq.layers``): the encoder's blocks, then for T5 the decoder's, each
  calibrated on the outputs of the blocks already quantized. A decoder GPTQModel
  does not know, or one whose structure an earlier stage changed (a recorded
  transform, which the engine cannot load from a folder), takes this path too; the
  report's ``details.path`` and ``details.path_reason`` say which ran and why.

The two paths agree: on a tiny Llama, given the same calibration rows, the walk and
GPTQModel's LlamaQModel pack bit-identical weights (tests/plugins/gptq/test_gptq.py); their
times are in bench/results/design-measurements.md. The model path holds a second copy of
the model in memory (and on disk, in the stage's work folder) while GPTQModel works.

``method: rtn`` swaps GPTQ for GPTQModel's round to nearest (same bits, groups and
packing): the baseline GPTQ is measured against. ``details.relative_error`` is, per
layer, ||X (Wq - W)^T|| / ||X W^T|| over the layer's calibration inputs X in the
quantized model, whichever path ran.

Whole model: after the blocks, the embedding tables (``embeddings``), the lm_head
(``lm_head``) and, if asked, the classifier and pooler (``heads``) are quantized
row-wise (one row per token; round to nearest, per-row groups, 8 or 4 bits) and
packed into plain uint8/float16 tensors (``gptq.embeddings``, ``gptq.row_quant``). A
tied lm_head reads the embedding's packed table (stored once). An embedding lookup
dequantizes only the rows it reads. Defaults: embeddings and an untied lm_head at 8
bits (4x smaller, accuracy unchanged on MiniLM/SST-2), heads in float; ``bits: null``
keeps a part in float. ``details.rows_quantized`` lists them with bits, groups and
weight error, ``rows_fp32_bytes``/``rows_quantized_bytes`` the bytes before and after.
Norms stay in float.

The model returned keeps the packed modules, so the evaluation after the stage runs
the quantized model. Saved artifacts use the standard GPTQ checkpoint layout with
``quantization_config`` in config.json; ``checkpoint_format`` is ``gptq`` (qzeros
stored minus one, the layout AutoGPTQ defined and most kernels read) when ``sym``, and
``gptq_v2`` otherwise (v1 cannot store a zero point of 0). In memory GPTQModel's
kernel wants v2, so a state-dict hook converts on save and a load hook converts back.
``record_transform`` lets ``load_artifact`` rebuild the packed modules before the
weights load.

Skipped on purpose: GPTQModel's ``TorchLinear.post_init`` would ``torch.compile`` the
dequantizer, which on a CPU costs more than it saves (bench/results/design-measurements.md),
so the modules are marked already optimized. On CPU the packed model runs slower than fp32
(it dequantizes every call): the gain is size and memory, speed needs GPU kernels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from compose import hookimpl
from compose.api import (
    StageContext,
    StageResult,
    StageType,
    library_chatter_off,
    load_schema_file,
    record_transform,
    transforms_of,
)
from compose.plugins.gptq.engine import (
    hand_back,
    model_definition,
    new_quant_linear,
    quantize_with_model_definition,
    quantized_bytes,
    relative_error,
    set_module,
)
from compose.plugins.gptq.plan import check, describe, quantization
from compose.plugins.shared.quantization.gptqmodel import engine

STAGE = "gptq"


# -- settings -> GPTQModel ----------------------------------------------------------


def checkpoint_format(sym: bool) -> str:
    return "gptq" if sym else "gptq_v2"


def _quantize_config(eng, settings):
    common = dict(
        bits=settings["bits"],
        group_size=settings["group_size"],
        sym=settings["sym"],
        format=checkpoint_format(settings["sym"]),
        offload_to_disk=False,  # else every config makes a temporary folder
        fallback=None,  # never swap GPTQ for round-to-nearest behind the user's back
    )
    if settings["method"] == "rtn":
        return eng.RTNConfig(desc_act=False, **common)
    return eng.QuantizeConfig(
        desc_act=settings["act_order"],
        act_group_aware=settings["group_aware_order"] and not settings["act_order"],
        damp_percent=settings["damp_percent"],
        true_sequential=settings["true_sequential"],
        **common,
    )


def quantization_config(eng, base: Mapping, settings, path: str) -> dict:
    """The ``quantization_config`` for config.json: GPTQModel's own serialisation, plus how it was made."""
    config = json.loads(json.dumps(dict(base), default=str))
    config["quant_method"] = "gptq"
    config["checkpoint_format"] = checkpoint_format(settings["sym"])
    config.setdefault("meta", {}).update(
        {
            "quantizer": [f"gptqmodel:{eng.version}"],
            "method": settings["method"],
            "damp_percent": settings["damp_percent"] if settings["method"] == "gptq" else None,
            "true_sequential": settings["true_sequential"],
            "calibration": {"split": settings["split"], "samples": settings["samples"]},
            "path": path,
        }
    )
    return config


# -- the stage ---------------------------------------------------------------------------


def _calibration(ctx: StageContext) -> list:
    settings = ctx.settings
    loader = ctx.task.batches(settings["split"], ctx.tokenizer, settings["batch_size"], shuffle=True, seed=ctx.seed)
    batches, rows = [], 0
    for batch in loader:
        take = min(settings["samples"] - rows, len(batch["input_ids"]))
        batches.append({k: v[:take] for k, v in batch.items()})
        rows += take
        if rows >= settings["samples"]:
            break
    return batches


def _choose_path(eng, ctx: StageContext, model) -> tuple[str, str]:
    """("model", GPTQModel's definition) or ("layers", why not the engine's own model path)."""
    if ctx.family != "decoder":
        return "layers", f"GPTQModel has no model definition for {ctx.family} models"
    definition = model_definition(eng, model)
    if definition is None:
        return "layers", f"GPTQModel {eng.version} has no model definition for model_type '{model.config.model_type}'"
    changed = [t["stage"] for t in transforms_of(model)]
    if changed:
        return "layers", (
            f"stage(s) {', '.join(changed)} changed the model's structure, which GPTQModel cannot load from a folder"
        )
    return "model", definition


def _examples(batches: list) -> list[dict]:
    """One unpadded example per calibration row, as GPTQModel's quantize() takes them."""
    examples = []
    for batch in batches:
        masks = batch.get("attention_mask")
        for row, ids in enumerate(batch["input_ids"]):
            kept = ids[masks[row].bool()] if masks is not None else ids
            examples.append({"input_ids": kept.tolist(), "attention_mask": [1] * len(kept)})
    return examples


def _measure(model, weights: dict, batches: list, device) -> tuple[dict, int]:
    """Per quantized layer, the relative output error over its calibration inputs; and the tokens seen."""
    import torch

    from compose.plugins.gptq.layers import model_inputs

    hessians = {name: 0 for name in weights}
    state = {}

    def observer(name):
        def observe(_module, args, _output):
            x = args[0].detach()
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask]
            x = x.reshape(-1, x.shape[-1]).float()
            hessians[name] = hessians[name] + x.T @ x

        return observe

    handles = [model.get_submodule(name).register_forward_hook(observer(name)) for name in weights]
    tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                mask = batch.get("attention_mask")
                state["mask"] = mask.to(device).bool() if mask is not None else None
                tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
                model(**model_inputs(model, batch, device))
    finally:
        for handle in handles:
            handle.remove()
    errors = {
        name: round(relative_error(weights[name], model.get_submodule(name), hessians[name]), 6)
        for name in weights
        if not isinstance(hessians[name], int)
    }
    return errors, tokens


def _by_model_definition(eng, qcfg, spec, ctx, model, batches) -> dict:
    state, engine_config = quantize_with_model_definition(eng, qcfg, ctx, _examples(batches), ctx.work_dir)
    layers, weights = hand_back(eng, model, spec, state)
    errors, tokens = _measure(model, weights, batches, ctx.device)
    return {
        "layers": layers,
        "errors": errors,
        "tokens": tokens,
        "fp32_bytes": sum(w.numel() * 4 + (w.shape[0] * 4 if layers[n][2] else 0) for n, w in weights.items()),
        "packed_bytes": sum(quantized_bytes(model.get_submodule(name)) for name in layers),
        "config": engine_config,
    }


def run(ctx: StageContext) -> StageResult:
    import torch

    from compose.plugins.gptq import embeddings
    from compose.plugins.gptq.layers import quantize_by_blocks

    settings = ctx.settings
    started = time.perf_counter()
    eng = engine()
    with library_chatter_off(stdout=True):
        qcfg = _quantize_config(eng, settings)
    spec = {
        "bits": settings["bits"],
        "group_size": settings["group_size"],
        "sym": settings["sym"],
        "desc_act": bool(settings["method"] == "gptq" and settings["act_order"]),
        "checkpoint_format": checkpoint_format(settings["sym"]),
    }
    model = ctx.model.eval()
    batches = _calibration(ctx)
    if not batches:
        raise ValueError(f"split '{settings['split']}' has no rows to calibrate on")
    path, reason = _choose_path(eng, ctx, model)
    if path == "model":
        ctx.log(f"quantizing with GPTQModel's model definition {reason}")
        with ctx.progress.track(f"{ctx.name}: GPTQModel {reason} ({settings['method']})", total=None):
            found = _by_model_definition(eng, qcfg, spec, ctx, model, batches)
        base = found["config"]
    else:
        ctx.log(f"quantizing block by block: {reason}")
        with torch.no_grad(), library_chatter_off(stdout=True):
            with ctx.progress.track(f"{ctx.name}: quantizing blocks ({settings['method']})") as bar:
                found = quantize_by_blocks(eng, qcfg, spec, settings, model, batches, ctx.device, bar)
            base = qcfg.to_dict()
    layers, errors = found["layers"], found["errors"]
    fp32_bytes, packed_bytes = found["fp32_bytes"], found["packed_bytes"]
    if not layers or not errors:
        raise ValueError("no linear layer of the transformer blocks ran on the calibration data; nothing to quantize")
    with torch.no_grad():
        rows = embeddings.quantize(model, settings)
    with library_chatter_off(stdout=True):
        config = quantization_config(eng, base, settings, path)
    model.config.quantization_config = config
    info = {"quantization": spec, "layers": layers, "quantization_config": config, "rows": rows["modules"]}
    record_transform(model, STAGE, info)
    mean_error = sum(errors.values()) / len(errors)
    ctx.log(
        f"{len(layers)} layers to {settings['bits']} bits ({settings['method']}): "
        f"{packed_bytes / 1e6:.2f} MB from {fp32_bytes / 1e6:.2f} MB, mean relative output error {mean_error:.4f}"
    )
    if rows["modules"]:
        ctx.log(
            f"embeddings and heads ({', '.join(rows['modules'])}) row-wise: "
            f"{rows['packed_bytes'] / 1e6:.2f} MB from {rows['fp32_bytes'] / 1e6:.2f} MB"
        )
    details = {
        "method": settings["method"],
        "bits": settings["bits"],
        "group_size": settings["group_size"],
        "sym": settings["sym"],
        "act_order": spec["desc_act"],
        "checkpoint_format": spec["checkpoint_format"],
        "engine": f"gptqmodel {eng.version}",
        "path": path,
        "path_reason": reason if path == "layers" else f"GPTQModel's model definition {reason}",
        "layers_quantized": len(layers),
        "calibration_samples": sum(len(b["input_ids"]) for b in batches),
        "calibration_tokens": found["tokens"],
        "quantized_linear_bytes": packed_bytes,
        "fp32_linear_bytes": fp32_bytes,
        "linear_bytes_ratio": round(packed_bytes / fp32_bytes, 5),
        "mean_relative_error": round(mean_error, 6),
        "max_relative_error": max(errors.values()),
        "relative_error": errors,
        **_rows_details(rows),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return StageResult(model=model, details=details)


def _rows_details(rows: dict) -> dict:
    """What was quantized outside the blocks: per module, its role, bits, group, tie and weight error."""
    fp32, packed = rows["fp32_bytes"], rows["packed_bytes"]
    modules = {
        name: {
            "role": spec["role"],
            "shape": spec["shape"],
            **(
                {"tied_to": spec["tied_to"]}
                if spec["tied_to"]
                else {
                    "bits": spec["bits"],
                    "group_size": spec["group_size"],
                    "sym": spec["sym"],
                    "relative_error": rows["errors"][name],
                }
            ),
        }
        for name, spec in rows["modules"].items()
    }
    return {
        "rows_quantized": modules,
        "rows_skipped": rows["skipped"],
        "rows_fp32_bytes": fp32,
        "rows_quantized_bytes": packed,
        "rows_bytes_ratio": round(packed / fp32, 5) if fp32 else None,
    }


def rebuild(model, info):
    """Swap the recorded linear layers, embeddings and heads for empty packed modules of the same shape."""
    from compose.plugins.gptq import embeddings

    eng = engine()
    with library_chatter_off(stdout=True):
        for name, (in_features, out_features, bias) in info["layers"].items():
            set_module(model, name, new_quant_linear(eng, info["quantization"], in_features, out_features, bias))
    embeddings.rebuild(model, info.get("rows", {}))
    model.config.quantization_config = info["quantization_config"]
    return model


# -- plan-time rules ----------------------------------------------------------------------


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.plugins.gptq", "gptq.schema.json"),
            description=(
                "Quantize the transformer blocks' linear layers with GPTQ (GPTQModel) and pack them (2-8 bits); "
                "embeddings and lm_head row-wise (8 or 4 bits)."
            ),
            needs={"task_trained": True, "quantized": False},
            leaves={"quantized": True},
            compresses=True,
            families=("encoder", "decoder", "encoder-decoder"),
            check=check,
            describe=describe,
            rebuild=rebuild,
            quantization=quantization,
        )
    )
