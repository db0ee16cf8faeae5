"""The `export` stage: write the model in a form that deploys without recipe-compose, and evaluate that form.

- encoder (BERT-class sequence classifiers): ``model.onnx`` (exported with
  ``torch.onnx.export``, fused and quantized with ONNX Runtime: ``export.onnx_runtime``)
  beside the tokenizer files, config.json (``id2label``/``label2id``), export.json
  and a README. Loading it needs onnxruntime, tokenizers and numpy only. Quantized
  PyTorch layers (GPTQ's packed linears, modules with ``dequantized()``) are made
  float first (``export.floating``). The model handed to the evaluation runs the
  ONNX file in ONNX Runtime, so the report's row measures what deploys.
- decoder (Llama, GPT-2...): a checkpoint for plain
  ``AutoModelForCausalLM.from_pretrained`` (GPTQ layout when a gptq stage ran),
  loaded back that way for the evaluation (``export.decoder``).
- encoder-decoder (T5): refused at validation (see ``check``).

The stage writes its folder itself and returns it as ``StageResult.artifact``; the
core measures that folder instead of saving the model again. It must be the last
stage: a later stage would receive a model that runs in ONNX Runtime.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from compose import hookimpl
from compose.api import (
    Check,
    Dequantizable,
    QuantizationScheme,
    StageContext,
    StageResult,
    StageType,
    TensorQuantization,
    count_parameters,
    load_artifact,
    load_schema_file,
    save_artifact,
    trained_for,
    transforms_of,
    writing_folder,
)

STAGE = "export"
MANIFEST = "export.json"

README = """# {name}: {model_type} sequence classifier in ONNX

Made by recipe-compose's `export` stage. Runs with onnxruntime, tokenizers and numpy
(no torch, no transformers): `pip install onnxruntime tokenizers numpy`.

Files: `model.onnx` (the graph), `tokenizer.json` (the tokenizer), `config.json`
(the model's config; `id2label` names the classes), `export.json` (inputs, outputs,
how it was made).

Inputs (int64, shape [batch, sequence]): {inputs}.
Output: `logits` (float32, [batch, {labels}]); the class is `argmax(logits, -1)`.

```python
import json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")  # pads to the longest row, truncates at {max_length}
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
labels = json.load(open("config.json"))["id2label"]
batch = tokenizer.encode_batch(["a gorgeous, witty film", "a dull mess"])
feeds = {{name: np.array([getattr(e, attr) for e in batch], dtype=np.int64) for name, attr in
         (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
         if name in {{i.name for i in session.get_inputs()}}}}
logits = session.run(["logits"], feeds)[0]
print([labels[str(i)] for i in logits.argmax(-1)])
```
"""


def _check_rows(ctx: StageContext, reference, exported) -> dict:
    """Agreement of the exported model's predictions with the PyTorch model's on the first rows of the eval split."""
    import torch

    rows = ctx.settings["check_rows"]
    if not rows:
        return {}
    split = ctx.recipe["evaluate"]["split"]
    agree = total = 0
    worst = 0.0
    reference = reference.eval()
    with torch.no_grad():
        for batch in ctx.task.batches(split, ctx.tokenizer, 32, limit=rows):
            inputs = {k: v.to(ctx.device) for k, v in batch.items() if k != "labels"}
            a = reference(**inputs).logits.float().cpu()
            b = exported(**inputs).logits.float().cpu()
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += len(a)
            worst = max(worst, float((a - b).abs().max()))
    return {
        "check_rows": total,
        "agreement": round(agree / total, 6) if total else None,
        "max_logit_difference": round(worst, 6),
    }


def deploy_tokenizer(tokenizer, path: Path, max_length: int | None) -> None:
    """tokenizer.json as the evaluation tokenized: truncation at the task's max_length, padding to the
    longest row of a batch; written compact (MiniLM's: 0.46 MB instead of 0.71 MB pretty-printed)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    if max_length:
        backend.enable_truncation(int(max_length))
    backend.enable_padding(pad_id=tokenizer.pad_token_id or 0, pad_token=tokenizer.pad_token or "[PAD]")
    path.write_text(backend.to_str(pretty=False), encoding="utf-8")


def _export_encoder(ctx: StageContext, folder: Path) -> StageResult:
    from compose.plugins.export.floating import to_float
    from compose.plugins.export.onnx_runtime import MODEL_FILE, export_classifier, onnx_module

    settings = ctx.settings
    tokenizer = ctx.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("export needs a fast tokenizer (one with a tokenizer.json) to deploy without transformers")
    model = copy.deepcopy(ctx.model).cpu().float().eval()
    replaced = to_float(model)
    parameters = count_parameters(ctx.model)
    details = {"format": "onnx", "replaced_with_float": replaced}
    simulated = simulated_by(ctx.model, settings, ctx.family)
    if simulated:
        details["weights_trained_for"] = simulated

    def write(tmp: Path) -> None:
        details.update(export_classifier(model, tokenizer, tmp, settings))
        tokenizer.save_pretrained(tmp)
        deploy_tokenizer(tokenizer, tmp / "tokenizer.json", ctx.task.spec.get("max_length"))
        model.config.to_json_file(tmp / "config.json")
        labels = model.config.num_labels
        manifest = {
            "format": "onnx",
            "model": MODEL_FILE,
            "inputs": {name: {"dtype": "int64", "shape": ["batch", "sequence"]} for name in details["inputs"]},
            "outputs": {"logits": {"dtype": "float32", "shape": ["batch", labels]}},
            "id2label": {str(k): v for k, v in model.config.id2label.items()},
            "settings": dict(settings),
            "parameters": parameters,
            "made_by": f"recipe-compose export stage '{ctx.name}'",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(
            README.format(
                name=ctx.name,
                model_type=model.config.model_type,
                labels=labels,
                inputs=", ".join(f"`{n}`" for n in details["inputs"]),
                max_length=ctx.task.spec.get("max_length") or "the tokenizer's limit",
            ),
            encoding="utf-8",
        )

    with writing_folder(folder) as tmp:  # the folder appears whole, or the old one stays
        write(tmp)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"the tokenizer did not write tokenizer.json into {folder}")
    exported = onnx_module(folder, parameters, model.config)
    details.update(_check_rows(ctx, model, exported))
    details["model_bytes"] = (folder / MODEL_FILE).stat().st_size
    details["loads_with"] = "onnxruntime + tokenizers (see README.md in the folder)"
    ctx.log(
        f"wrote {folder / MODEL_FILE} ({details['model_bytes'] / 1e6:.2f} MB; "
        f"{'; '.join(details['quantization']['steps']) or 'fp32'})"
    )
    return StageResult(model=exported, artifact=folder, details=details)


def _export_decoder(ctx: StageContext, folder: Path) -> StageResult:
    from compose.plugins.export.decoder import RELOAD_TOLERANCE, compare, plain_load
    from compose.plugins.export.floating import to_float

    model = ctx.model.eval()
    transforms = [t["stage"] for t in transforms_of(model)]
    quantized = "gptq" in transforms
    details = {"format": "gptq" if quantized else "transformers", "transforms": transforms}
    if set(transforms) <= {"gptq"} and any(isinstance(m, Dequantizable) for m in model.modules()):
        # Row-quantized embeddings / lm_head have no standard layout: the checkpoint carries them as
        # float tables (the GPTQ blocks stay packed), so plain from_pretrained can load it.
        model = copy.deepcopy(model)
        details["replaced_with_float"] = to_float(model, gptq=False)
    save_artifact(model, ctx.tokenizer, folder, ctx.task.kind)
    batch = next(iter(ctx.task.batches(ctx.recipe["evaluate"]["split"], ctx.tokenizer, 4, limit=4)))
    batch = {k: v.to(ctx.device) for k, v in batch.items() if k != "labels"}
    try:
        reloaded = plain_load(folder).to(ctx.device)
        difference = compare(model, reloaded, batch)
        problem = None if difference <= RELOAD_TOLERANCE else f"its logits differ by {difference:.2e} (relative)"
    except Exception as exc:  # noqa: BLE001 - reported, and the artifact loader takes over
        lines = str(exc).strip().splitlines()
        reloaded, problem = None, f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if problem is None:
        details["loads_with"] = "transformers AutoModelForCausalLM.from_pretrained" + (
            " (with gptqmodel and optimum installed)" if quantized else ""
        )
        details["reload_relative_difference"] = round(difference, 8)
        return StageResult(model=reloaded, artifact=folder, details=details)
    details["loads_with"] = "compose.api.load_artifact (recipe-compose and the plugins named in compose-artifact.json)"
    details["why_not_from_pretrained"] = (
        f"plain from_pretrained cannot rebuild what {', '.join(t for t in transforms if t != 'gptq') or 'a stage'} "
        f"changed: {problem}"
    )
    ctx.log(details["why_not_from_pretrained"])
    save_artifact(ctx.model, ctx.tokenizer, folder, ctx.task.kind)  # the project's own layout, with every transform
    model, _ = load_artifact(folder, ctx.plugin_host)
    return StageResult(model=model.to(ctx.device), artifact=folder, details=details)


def quantization(settings, family: str, model=None) -> QuantizationScheme | None:
    """The quantization this export applies (ONNX Runtime's quantizers, encoders only); a decoder's export
    writes a float transformers checkpoint and declares none. ``model``: the model about to be exported,
    whose attention ONNX Runtime fuses only where every layer keeps the config's head width."""
    if family != "encoder":
        return None
    block = settings["block_size"]
    weights = {
        "int8": TensorQuantization(8, -1 if settings["per_channel"] else 0, True),
        "int4": TensorQuantization(4, block, True),
    }.get(settings["weights"])
    activations = {
        "int8": TensorQuantization(8, 0, False),  # DynamicQuantizeLinear: per tensor, uint8
        "int4": TensorQuantization(8, block, True),  # MatMulNBits at accuracy level 4: int8 blocks
    }.get(settings["weights"])
    embeddings = {
        "int4": TensorQuantization(4, settings["embeddings_block_size"], True),
        "int8": TensorQuantization(8, 0, False),
    }.get(settings["embeddings"])
    fused = bool(settings["optimize"])
    if fused and model is not None:
        from compose.plugins.export.onnx_runtime import attention_fuses

        fused = attention_fuses(model)
    return QuantizationScheme(
        stage="",  # filled in by the reader's lookup: the stage's name is the recipe's, not the plugin's
        runtime="onnxruntime",
        weights=weights,
        activations=activations,
        embeddings=embeddings,
        fused_attention=fused,
        # a fused attention's Q/K/V stay int8 (QAttention) under 4-bit matmuls, per channel or per matrix
        options={"per_channel": bool(settings["per_channel"])},
    )


def simulated_by(model, settings, family: str) -> dict | None:
    """The last stage that trained ``model`` for a quantization (``compose.api.trained_for``): its name, the
    scheme, and whether this export applies the same one (the fields that differ)."""
    found = trained_for(model)
    if found is None:
        return None
    stage, scheme = found
    mine = quantization(settings, family, model)
    differs = ["runtime"] if mine is None else scheme.differences(mine)
    return {"stage": stage, "scheme": scheme.as_dict(), "same_settings": not differs, "differs": differs}


def run(ctx: StageContext) -> StageResult:
    started = time.perf_counter()
    folder = Path(ctx.artifact_dir or ctx.work_dir / "export")
    result = _export_encoder(ctx, folder) if ctx.family == "encoder" else _export_decoder(ctx, folder)
    result.details["seconds"] = round(time.perf_counter() - started, 3)
    return result


# -- plan-time rules ----------------------------------------------------------------------


def check(settings, plan):
    name, _, _ = plan.stages[plan.index]
    later = [n for n, _, _ in plan.stages[plan.index + 1 :]]
    if later:
        yield Check(
            f"export must be the last stage, but {', '.join(repr(n) for n in later)} come(s) after it; "
            f"move '{name}' to the end of the stages list (later stages would receive a model running in "
            "ONNX Runtime or reloaded from the exported folder)"
        )
    if plan.family == "encoder-decoder":
        yield Check(
            "export does not support encoder-decoder (T5) models yet: remove this stage; the last stage's "
            "artifact (stages/NN-name/model) loads with compose.api.load_artifact, or with plain "
            "transformers from_pretrained when no stage changed its structure",
            path=(),
        )
    elif plan.family == "encoder" and plan.task_kind != "sequence-classification":
        yield Check(f"export writes ONNX for sequence-classification encoders only, not task.kind '{plan.task_kind}'")


def describe(settings) -> str:
    int8 = "int8" in (settings["weights"], settings["embeddings"])
    how = ("fused, " if settings["optimize"] else "") + f"weights {settings['weights']}, "
    how += f"embeddings {settings['embeddings']}" + (", int8 per channel" if int8 and settings["per_channel"] else "")
    return (
        f"encoders: ONNX ({how}) + tokenizer, for onnxruntime alone; decoders: a checkpoint for plain from_pretrained"
    )


def load(folder: Path):
    """The exported encoder as the evaluation ran it (ONNX Runtime); None for a decoder's checkpoint,
    which the core's loader reads with ``from_pretrained``."""
    manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != "onnx":
        return None
    from transformers import AutoConfig

    from compose.plugins.export.onnx_runtime import onnx_module

    return onnx_module(Path(folder), manifest["parameters"], AutoConfig.from_pretrained(folder))


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.plugins.export", "export.schema.json"),
            description="Write the model for deployment (ONNX + ONNX Runtime quantization for encoders, "
            "a from_pretrained checkpoint for decoders) and evaluate it as deployed. Last stage only.",
            needs={"task_trained": True},
            leaves={"exported": True},
            compresses=True,
            families=("encoder", "decoder"),
            check=check,
            describe=describe,
            load=load,
            quantization=quantization,
        )
    )
