"""The `gptq` stage: quantize the transformer blocks' linear layers to 2-8 bits with GPTQ.

GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers") quantizes a layer's weight columns one at a time and
spreads each column's rounding error over the columns not yet quantized, weighted by
the inverse of the layer's Hessian H = X^T X from calibration activations X.

Engine: GPTQModel (pip ``gptqmodel``). It has no model definition for encoders
(BERT-class), so this stage walks the model itself and leaves the maths and the
packing to GPTQModel's layer-level API:

1. Draw ``samples`` calibration examples at random from the task's ``split``; run the
   model up to its first transformer block and keep that block's inputs.
2. For each block in order: a forward hook on each of its ``nn.Linear`` layers feeds
   the layer's inputs (padding tokens dropped) to ``gptqmodel...gptq.GPTQ.add_batch``
   while the block runs on the calibration inputs; ``GPTQ.quantize()`` then does the
   column-wise quantization with error compensation (damping, groups, act-order);
   the result is packed into GPTQModel's ``TorchLinear`` (``qweight``/``qzeros``/
   ``scales``/``g_idx``), which replaces the ``nn.Linear``. With ``true_sequential``
   the block's layers go in the order the forward calls them (layers that share an
   input, like q/k/v, together), each group calibrated on the outputs of those already
   quantized. The quantized block's outputs are the next block's inputs.
3. ``method: rtn`` swaps ``GPTQ`` for GPTQModel's ``RTN`` (round to nearest, same bits,
   groups and packing): the baseline GPTQ is measured against.

The model returned keeps the packed modules, so the evaluation after the stage runs
the quantized model. Saved artifacts use the standard GPTQ checkpoint layout with
``quantization_config`` in config.json; ``checkpoint_format`` is ``gptq`` (qzeros
stored minus one, the layout AutoGPTQ defined and most kernels read) when ``sym``, and
``gptq_v2`` otherwise (v1 cannot store a zero point of 0). In memory GPTQModel's
kernel wants v2, so a state-dict hook converts on save and a load hook converts back.
``record_transform`` lets ``load_artifact`` rebuild the packed modules before the
weights load.

Skipped on purpose: GPTQModel's ``TorchLinear.post_init`` would ``torch.compile`` the
dequantizer; on 2 shared CPU cores that took 18-34 s per layer shape and then ran ~4x
slower than eager (2.4 s vs 0.65 s per 4096-token call of a 384x1536 layer), so the
modules are marked already optimized. On CPU the packed model runs slower than fp32
(it dequantizes every call): the gain is size and memory, speed needs GPU kernels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from compose import hookimpl
from compose.api import Check, StageContext, StageResult, StageType, load_schema_file, record_transform

STAGE = "gptq"


# -- the engine ------------------------------------------------------------------


@contextlib.contextmanager
def _engine_chatter_off():
    """GPTQModel prints its banner and INFO lines on stdout through LogBar (which
    ignores ``logging`` levels); stdout may carry ``recipe apply --json``, and
    recipe-compose keeps library chatter off the terminal. Its errors still raise."""
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield


def _engine() -> SimpleNamespace:
    """GPTQModel's pieces, imported on first use (the import takes seconds)."""
    # On a small CPU machine GPTQModel's worker pool otherwise refuses to start, and
    # its JIT-compiled kernels go to a cache under the home folder.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    os.environ.setdefault("GPTQMODEL_CACHE_DIR", str(Path.home() / ".cache" / "recipe-compose" / "gptqmodel"))
    with _engine_chatter_off():
        import gptqmodel
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.quantization.config import QuantizeConfig, RTNConfig
        from gptqmodel.quantization.gptq import GPTQ
        from gptqmodel.quantization.rtn import RTN
        from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module, convert_gptq_v2_to_v1_format_module

    return SimpleNamespace(
        version=gptqmodel.__version__,
        TorchLinear=TorchLinear,
        QuantizeConfig=QuantizeConfig,
        RTNConfig=RTNConfig,
        GPTQ=GPTQ,
        RTN=RTN,
        v1_to_v2=convert_gptq_v1_to_v2_format_module,
        v2_to_v1=convert_gptq_v2_to_v1_format_module,
    )


def checkpoint_format(sym: bool) -> str:
    return "gptq" if sym else "gptq_v2"


def _quantize_config(engine, settings):
    common = dict(
        bits=settings["bits"],
        group_size=settings["group_size"],
        sym=settings["sym"],
        format=checkpoint_format(settings["sym"]),
        offload_to_disk=False,  # else every config makes a temporary folder
        fallback=None,  # never swap GPTQ for round-to-nearest behind the user's back
    )
    if settings["method"] == "rtn":
        return engine.RTNConfig(desc_act=False, **common)
    return engine.QuantizeConfig(
        desc_act=settings["act_order"],
        act_group_aware=settings["group_aware_order"] and not settings["act_order"],
        damp_percent=settings["damp_percent"],
        **common,
    )


def quantization_config(engine, qcfg, settings) -> dict:
    """The ``quantization_config`` for config.json: GPTQModel's own serialisation."""
    config = json.loads(json.dumps(qcfg.to_dict(), default=str))
    config["quant_method"] = "gptq"
    config["checkpoint_format"] = checkpoint_format(settings["sym"])
    config.setdefault("meta", {}).update(
        {
            "quantizer": [f"gptqmodel:{engine.version}"],
            "method": settings["method"],
            "damp_percent": settings["damp_percent"] if settings["method"] == "gptq" else None,
            "true_sequential": settings["true_sequential"],
            "calibration": {"split": settings["split"], "samples": settings["samples"]},
        }
    )
    return config


# -- packed modules ----------------------------------------------------------------


def _new_quant_linear(engine, spec: dict, in_features: int, out_features: int, bias: bool):
    module = engine.TorchLinear(
        bits=spec["bits"],
        group_size=spec["group_size"],
        sym=spec["sym"],
        desc_act=spec["desc_act"],
        in_features=in_features,
        out_features=out_features,
        bias=bias,
        register_buffers=True,
    )
    module.optimized = True  # skip torch.compile of the dequantizer (see the module docstring)
    _add_checkpoint_hooks(engine, module, spec["checkpoint_format"])
    return module


def _add_checkpoint_hooks(engine, module, fmt: str) -> None:
    """Keep qzeros in GPTQModel's in-memory v2 layout, but save (and load) ``fmt``."""
    words = SimpleNamespace(bits=module.bits, pack_dtype=module.pack_dtype)

    def save(mod, state, prefix, _metadata):
        if fmt != "gptq":
            return
        kept = mod.qzeros.detach().clone()
        try:
            with _engine_chatter_off():
                engine.v2_to_v1(mod, words)
            state[prefix + "qzeros"] = mod.qzeros.detach().clone()
        finally:
            mod.qzeros.data.copy_(kept)
            mod.qzero_format(format=2)

    def loaded(mod, _incompatible):
        with _engine_chatter_off():
            if fmt == "gptq":
                mod.qzero_format(format=1)
                engine.v1_to_v2(mod, bits=mod.bits, pack_dtype=mod.pack_dtype)
            mod.post_init()  # also drops caches keyed on the old buffers

    module.register_state_dict_post_hook(save)
    module.register_load_state_dict_post_hook(loaded)


def _pack(engine, spec, linear, q_weight, scale, zero, g_idx):
    import torch

    source = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    source.weight.data = q_weight.detach().to("cpu", torch.float32)
    if linear.bias is not None:
        source.bias.data = linear.bias.detach().to("cpu", torch.float32)
    module = _new_quant_linear(engine, spec, linear.in_features, linear.out_features, linear.bias is not None)
    module.pack_original(source, scale.detach().cpu(), zero.detach().cpu(), g_idx.detach().cpu().to(torch.int32))
    module.qzero_format(format=2)  # GPTQModel's packer writes the zero points as they are (v2)
    module.post_init()
    return module.eval().to(linear.weight.device)


def quantized_bytes(module) -> int:
    names = ("qweight", "qzeros", "scales", "g_idx", "bias")
    return sum(t.numel() * t.element_size() for t in (getattr(module, n, None) for n in names) if t is not None)


def _set_module(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _check_shapes(settings, in_features: int, out_features: int, where: str) -> None:
    if settings["bits"] == 3 and (in_features % 32 or out_features % 32):
        raise ValueError(
            f"{where}: 3-bit GPTQ packs 32 weights into 3 words, so in_features and out_features "
            f"must be multiples of 32 (this layer is {in_features} -> {out_features}); use bits 2, 4 or 8"
        )


# -- walking the model ---------------------------------------------------------------


def transformer_blocks(model):
    """(name, blocks): the model's largest ``nn.ModuleList`` of layers holding ``nn.Linear``s."""
    import torch

    best = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module):
            count = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
            if count and (best is None or count > best[2]):
                best = (name, list(module), count)
    if best is None:
        raise ValueError(f"found no transformer blocks (a ModuleList of layers with nn.Linear) in {type(model).__name__}")
    return best[0], best[1]


class _Captured(Exception):
    pass


def _first_block_inputs(model, block, batches, device):
    """[(args, kwargs)] the first block receives for each calibration batch, and the token masks."""
    captured = []

    def grab(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _Captured

    masks = []
    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mask = inputs.get("attention_mask")
            masks.append(mask.bool() if mask is not None else None)
            try:
                model(**inputs)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured, masks


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _run_block(block, inputs, masks, observers=None, linears=None):
    """Run ``block`` on every input; ``observers[name](x)`` sees each linear's real-token inputs."""
    state = {}
    handles = []
    for name, observe in (observers or {}).items():

        def hook(_module, args, _output, observe=observe):
            x = args[0].detach()
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask]
            observe(x.reshape(-1, x.shape[-1]))

        handles.append(linears[name].register_forward_hook(hook))
    outputs = []
    try:
        for (args, kwargs), mask in zip(inputs, masks):
            state["mask"] = mask
            outputs.append(_hidden(block(*args, **kwargs)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _call_groups(block, linears, first_input, sequential: bool):
    """The block's linears in call order, grouped by shared input (q/k/v) when ``sequential``."""
    calls = []
    handles = [
        lin.register_forward_hook(lambda _m, a, _o, n=name: calls.append((n, a[0].data_ptr(), tuple(a[0].shape))))
        for name, lin in linears.items()
    ]
    try:
        args, kwargs = first_input
        block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    groups, seen, last = [], set(), None
    for name, pointer, shape in calls:
        if name in seen:
            continue
        seen.add(name)
        if groups and (not sequential or (pointer, shape) == last):
            groups[-1].append(name)
        else:
            groups.append([name])
        last = (pointer, shape)
    return groups


def _relative_error(weight, module, hessian) -> float:
    """||X (Wq - W)^T|| / ||X W^T|| over the calibration inputs X, from H = X^T X."""
    w = weight.detach().double()
    d = module.dequantize_weight().T.double() - w
    h = hessian.double()
    num = float(((d @ h) * d).sum())
    den = float(((w @ h) * w).sum())
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


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


def _quantize_block(engine, qcfg, spec, settings, block, prefix, inputs, masks, found) -> None:
    """Quantize and pack ``block``'s linear layers in place, group by group (see the module docstring)."""
    import torch

    linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, lin in linears.items():
        _check_shapes(settings, lin.in_features, lin.out_features, f"{prefix}.{name}")
    for group in _call_groups(block, linears, inputs[0], settings["true_sequential"]):
        gptq = {}
        if settings["method"] == "gptq":
            for name in group:
                gptq[name] = engine.GPTQ(linears[name], qcfg)
                gptq[name].quantizer.configure(perchannel=True)
        hessians = {name: 0 for name in group}  # X^T X again, to measure the output error

        def observer(name):
            def observe(x):
                if name in gptq:
                    gptq[name].add_batch(x, None)
                xf = x.float()
                hessians[name] = hessians[name] + xf.T @ xf

            return observe

        _run_block(block, inputs, masks, {n: observer(n) for n in group}, linears)
        for name in group:
            lin = linears[name]
            if name in gptq:
                q_weight, scale, zero, g_idx, *_ = gptq.pop(name).quantize()
            else:
                q_weight, scale, zero, g_idx, *_ = engine.RTN(lin, qcfg).quantize()
            packed = _pack(engine, spec, lin, q_weight, scale, zero, g_idx)
            full = f"{prefix}.{name}"
            found["errors"][full] = round(_relative_error(lin.weight, packed, hessians.pop(name)), 6)
            found["fp32_bytes"] += lin.weight.numel() * 4 + (lin.bias.numel() * 4 if lin.bias is not None else 0)
            found["packed_bytes"] += quantized_bytes(packed)
            found["layers"][full] = [lin.in_features, lin.out_features, lin.bias is not None]
            packed.enable_weight_cache(True)  # dequantize once for the block's remaining passes
            _set_module(block, name, packed)
            linears[name] = packed


def run(ctx: StageContext) -> StageResult:
    import torch

    settings = ctx.settings
    started = time.perf_counter()
    engine = _engine()
    with _engine_chatter_off():
        qcfg = _quantize_config(engine, settings)
    spec = {
        "bits": settings["bits"],
        "group_size": settings["group_size"],
        "sym": settings["sym"],
        "desc_act": bool(settings["method"] == "gptq" and settings["act_order"]),
        "checkpoint_format": checkpoint_format(settings["sym"]),
    }
    model = ctx.model.eval()
    blocks_name, blocks = transformer_blocks(model)
    batches = _calibration(ctx)
    if not batches:
        raise ValueError(f"split '{settings['split']}' has no rows to calibrate on")
    found = {"layers": {}, "errors": {}, "fp32_bytes": 0, "packed_bytes": 0}
    with torch.no_grad(), _engine_chatter_off():
        inputs, masks = _first_block_inputs(model, blocks[0], batches, ctx.device)
        tokens = int(sum(m.sum() if m is not None else 0 for m in masks))
        with ctx.progress.track(f"{ctx.name}: quantizing blocks ({settings['method']})", total=len(blocks)) as bar:
            for index, block in enumerate(blocks):
                _quantize_block(engine, qcfg, spec, settings, block, f"{blocks_name}.{index}", inputs, masks, found)
                outputs = _run_block(block, inputs, masks)  # the quantized block's: the next one's inputs
                inputs = [_with_hidden(args, kwargs, out) for (args, kwargs), out in zip(inputs, outputs)]
                for module in block.modules():
                    if isinstance(module, engine.TorchLinear):
                        module.enable_weight_cache(False)  # drops the dequantized copy
                bar.advance()
    layers, errors = found["layers"], found["errors"]
    fp32_bytes, packed_bytes = found["fp32_bytes"], found["packed_bytes"]
    if not layers:
        raise ValueError("no linear layer of the transformer blocks ran on the calibration data; nothing to quantize")
    with _engine_chatter_off():
        config = quantization_config(engine, qcfg, settings)
    model.config.quantization_config = config
    record_transform(model, STAGE, {"quantization": spec, "layers": layers, "quantization_config": config})
    mean_error = sum(errors.values()) / len(errors)
    ctx.log(
        f"{len(layers)} layers to {settings['bits']} bits ({settings['method']}): "
        f"{packed_bytes / 1e6:.2f} MB from {fp32_bytes / 1e6:.2f} MB, mean relative output error {mean_error:.4f}"
    )
    details = {
        "method": settings["method"],
        "bits": settings["bits"],
        "group_size": settings["group_size"],
        "sym": settings["sym"],
        "act_order": spec["desc_act"],
        "checkpoint_format": spec["checkpoint_format"],
        "engine": f"gptqmodel {engine.version}",
        "layers_quantized": len(layers),
        "calibration_samples": sum(len(b["input_ids"]) for b in batches),
        "calibration_tokens": tokens,
        "quantized_linear_bytes": packed_bytes,
        "fp32_linear_bytes": fp32_bytes,
        "linear_bytes_ratio": round(packed_bytes / fp32_bytes, 5),
        "mean_relative_error": round(mean_error, 6),
        "max_relative_error": max(errors.values()),
        "relative_error": errors,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return StageResult(model=model, details=details)


def rebuild(model, info):
    """Swap the recorded ``nn.Linear`` layers for empty packed modules of the same shape."""
    engine = _engine()
    with _engine_chatter_off():
        for name, (in_features, out_features, bias) in info["layers"].items():
            module = _new_quant_linear(engine, info["quantization"], in_features, out_features, bias)
            _set_module(model, name, module)
    model.config.quantization_config = info["quantization_config"]
    return model


# -- plan-time rules ----------------------------------------------------------------------


def _model_widths(model_spec) -> dict:
    """{"hidden": h, "intermediate": i} of a BERT-class model, when the recipe tells."""
    config = model_spec.get("config")
    if config is None and "path" in model_spec:
        path = Path(str(model_spec["path"])) / "config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                config = None
    if not isinstance(config, dict):
        return {}
    widths = {
        "hidden": config.get("hidden_size", config.get("dim")),
        "intermediate": config.get("intermediate_size", config.get("hidden_dim")),
    }
    return {k: v for k, v in widths.items() if isinstance(v, int)}


def check(settings, plan):
    # (a `split` missing from task.data is reported by the core for every stage)
    if settings["method"] == "rtn" and settings["act_order"]:
        yield Check(
            "act_order has no effect with method rtn (round-to-nearest uses no activation statistics)",
            "warning",
            ("act_order",),
        )
    widths = _model_widths(plan.recipe.get("model", {}))
    group = settings["group_size"]
    for width in sorted(set(widths.values())):
        if settings["bits"] == 3 and width % 32:
            yield Check(
                f"3-bit packing needs layer widths that are multiples of 32, and this model has {width}; "
                "use bits 2, 4 or 8",
                path=("bits",),
            )
        if group == -1:
            continue
        if group > width:
            yield Check(
                f"group_size {group} is larger than in_features {width} of some layers: they get one "
                "group per row, as with group_size -1",
                "warning",
                ("group_size",),
            )
        elif width % group:
            yield Check(
                f"group_size {group} does not divide in_features {width}: the last group of each row is "
                "partial, and fast GPU kernels (Marlin, ExLlama) refuse such layers",
                "warning",
                ("group_size",),
            )


def describe(settings) -> str:
    group = "per channel" if settings["group_size"] == -1 else f"group {settings['group_size']}"
    how = "GPTQ" if settings["method"] == "gptq" else "round-to-nearest"
    extras = []
    if settings["method"] == "gptq":
        extras.append(f"damp {settings['damp_percent']}")
        if settings["act_order"]:
            extras.append("act-order")
    return (
        f"quantize the transformer blocks' linear layers to {settings['bits']} bits ({group}, "
        f"{'symmetric' if settings['sym'] else 'asymmetric'}{', ' + ', '.join(extras) if extras else ''}) "
        f"with {how} via GPTQModel, calibrated on {settings['samples']} examples of '{settings['split']}'"
    )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.schemas", "gptq.schema.json"),
            description="Quantize the transformer blocks' linear layers with GPTQ (GPTQModel) and pack them (2-8 bits).",
            needs={"task_trained": True, "quantized": False},
            leaves={"quantized": True},
            compresses=True,
            families=("encoder",),
            check=check,
            describe=describe,
            rebuild=rebuild,
        )
    )
