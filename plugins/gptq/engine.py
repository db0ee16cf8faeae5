"""GPTQModel for the `gptq` stage: the engine's pieces, its packed layers, and its own model path.

``quantize_with_model_definition`` drives GPTQModel's documented flow for a
decoder it has a model definition for (Llama, GPT-2, Mistral, Qwen...):
``GPTQModel.load(folder, QuantizeConfig)`` -> ``quantize(calibration)`` ->
``save(folder)``. The checkpoint it writes is then loaded into packed layers of
the pipeline's own model object (``hand_back``), so later stages, the evaluation
and ``load_artifact`` see the same model class and the same packed modules as
with the layer walk (``gptq.layers``).

Why not keep the engine's in-memory model: in GPTQModel 7.6.0 the model object
returned by ``quantize()`` holds its packed layers with qzeros in the v1
checkpoint layout (``qzero_format() == 1``) while their forward reads v2, so that
model computes with every zero point off by one level, while the same checkpoint,
saved and reloaded, computes as quantized. Its documented use is quantize -> save -> load, which is what
this does.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

from compose.api import library_chatter_off
from compose.plugins.shared.architectures.modules import linear_shape


@contextlib.contextmanager
def _logs_in(folder: Path):
    """GPTQModel 7.6 writes a log file per quantized layer under ``./logs`` of the current
    directory (``loop_processor._PROJECT_LOG_DIR``); keep them in the stage's work folder
    so that a run never litters the directory the user ran it from."""
    from gptqmodel.looper import loop_processor

    saved = getattr(loop_processor, "_PROJECT_LOG_DIR", None)
    loop_processor._PROJECT_LOG_DIR = folder
    try:
        yield
    finally:
        if saved is not None:
            loop_processor._PROJECT_LOG_DIR = saved


# -- packed modules ----------------------------------------------------------------


def new_quant_linear(eng, spec: dict, in_features: int, out_features: int, bias: bool):
    module = eng.TorchLinear(
        bits=spec["bits"],
        group_size=spec["group_size"],
        sym=spec["sym"],
        desc_act=spec["desc_act"],
        in_features=in_features,
        out_features=out_features,
        bias=bias,
        register_buffers=True,
    )
    # Skip GPTQModel's torch.compile of the dequantizer (see the gptq module docstring).
    module.optimized = True
    _add_checkpoint_hooks(eng, module, spec["checkpoint_format"])
    return module


def _add_checkpoint_hooks(eng, module, fmt: str) -> None:
    """Keep qzeros in GPTQModel's in-memory v2 layout, but save (and load) ``fmt``."""
    words = SimpleNamespace(bits=module.bits, pack_dtype=module.pack_dtype)

    def save(mod, state, prefix, _metadata):
        if fmt != "gptq":
            return
        kept = mod.qzeros.detach().clone()
        try:
            with library_chatter_off(stdout=True):
                eng.v2_to_v1(mod, words)
            state[prefix + "qzeros"] = mod.qzeros.detach().clone()
        finally:
            mod.qzeros.data.copy_(kept)
            mod.qzero_format(format=2)

    def loaded(mod, _incompatible):
        with library_chatter_off(stdout=True):
            if fmt == "gptq":
                mod.qzero_format(format=1)
                eng.v1_to_v2(mod, bits=mod.bits, pack_dtype=mod.pack_dtype)
            mod.post_init()  # also drops caches keyed on the old buffers

    module.register_state_dict_post_hook(save)
    module.register_load_state_dict_post_hook(loaded)


def pack(eng, spec, linear, q_weight, scale, zero, g_idx):
    """A packed module from GPTQ's (or RTN's) result for ``linear``."""
    import torch

    source = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    source.weight.data = q_weight.detach().to("cpu", torch.float32)
    if linear.bias is not None:
        source.bias.data = linear.bias.detach().to("cpu", torch.float32)
    module = new_quant_linear(eng, spec, linear.in_features, linear.out_features, linear.bias is not None)
    module.pack_original(source, scale.detach().cpu(), zero.detach().cpu(), g_idx.detach().cpu().to(torch.int32))
    module.qzero_format(format=2)  # GPTQModel's packer writes the zero points as they are (v2)
    module.post_init()
    return module.eval().to(linear.weight.device)


def quantized_bytes(module) -> int:
    names = ("qweight", "qzeros", "scales", "g_idx", "bias")
    return sum(t.numel() * t.element_size() for t in (getattr(module, n, None) for n in names) if t is not None)


def set_module(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def relative_error(weight, module, hessian) -> float:
    """||X (Wq - W)^T|| / ||X W^T|| over the calibration inputs X, from H = X^T X (W is [out, in])."""
    w = weight.detach().double()
    d = module.dequantize_weight().T.double() - w
    h = hessian.double()
    num = float(((d @ h) * d).sum())
    den = float(((w @ h) * w).sum())
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


# -- the engine's own model path ------------------------------------------------------


def model_definition(eng, model) -> str | None:
    """The name of GPTQModel's definition for this model's type, or None."""
    definition = eng.model_definitions.get(getattr(model.config, "model_type", None))
    return definition.__name__ if definition is not None else None


def quantize_with_model_definition(eng, qcfg, ctx, examples: list[dict], work_dir: Path) -> tuple[dict, dict]:
    """Run GPTQModel's load -> quantize -> save on ``ctx.model``; (state dict, quantization_config) it saved."""
    from safetensors.torch import load_file

    if ctx.tokenizer is None:
        raise ValueError("gptq on a decoder needs the model's tokenizer (GPTQModel loads it with the model)")
    dtype = next(ctx.model.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="gptqmodel-", dir=work_dir) as tmp:
        source, target = Path(tmp) / "source", Path(tmp) / "quantized"
        ctx.model.save_pretrained(source)
        ctx.tokenizer.save_pretrained(source)
        with library_chatter_off(stdout=True), _logs_in(Path(tmp) / "logs"):
            qcfg.device = str(ctx.device)
            qmodel = eng.GPTQModel.load(str(source), qcfg, dtype=dtype)
            # The examples are already tokenized and unpadded; keep short ones too.
            qmodel.quantize(examples, batch_size=ctx.settings["batch_size"], calibration_data_min_length=0)
            qmodel.save(str(target))
            del qmodel
        state = {}
        for file in sorted(target.glob("*.safetensors")):
            state.update(load_file(file))
        config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    return state, config["quantization_config"]


def hand_back(eng, model, spec: dict, state: dict) -> tuple[dict, dict]:
    """Swap the layers GPTQModel quantized for packed modules holding its results, in place.

    Returns ({name: [in, out, bias]}, {name: original weight [out, in]})."""
    names = sorted(k[: -len(".qweight")] for k in state if k.endswith(".qweight"))
    if not names:
        raise ValueError("GPTQModel saved no quantized layer (no '*.qweight' tensor in its checkpoint)")
    layers, weights = {}, {}
    for name in names:
        try:
            shape = linear_shape(model.get_submodule(name))
        except AttributeError:
            shape = None
        if shape is None:
            raise ValueError(
                f"GPTQModel quantized '{name}', which is not a linear layer of {type(model).__name__}: "
                "its model definition restructures this model, so the result cannot be handed back"
            )
        layers[name] = list(shape[:3])
        weights[name] = shape[3]
    for name, (in_features, out_features, bias) in layers.items():
        packed = new_quant_linear(eng, spec, in_features, out_features, bias)
        set_module(model, name, packed.to(weights[name].device))
    wanted = {f"{name}.{key}" for name in layers for key in model.get_submodule(name).state_dict()}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"GPTQModel's checkpoint lacks packed tensors the model needs: {missing[:5]}")
    with library_chatter_off(stdout=True):
        model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return layers, weights
