"""Export a BERT-class sequence classifier to ONNX, fuse its graph, quantize it, and run it.

The pipeline (each step checked against the PyTorch model's logits):

1. ``torch.onnx.export(..., dynamo=False)``: the TorchScript exporter (the dynamo
   exporter of torch 2.13 needs ``onnxscript``), eager attention (transformers 5's
   SDPA path traces to a graph ORT's fusions do not recognise), dynamic batch and
   sequence axes.
2. ``onnxruntime.transformers.optimizer`` with model_type bert: EmbedLayerNormalization,
   Attention, SkipLayerNormalization and BiasGelu fusions. The fused Attention op
   has one head count for the whole graph, so when heads were pruned (layers with
   different head counts) attention is left unfused; if the fused graph's logits
   drift from PyTorch's, the unfused export is kept (``details.optimization`` says).
3. ``onnxruntime.quantization``: weight-only 4-bit (``MatMulNBits``, and
   ``GatherBlockQuantized`` for the word embeddings) and/or dynamic int8
   (``quantize_dynamic``: int8 weights, activations quantized per batch at run time).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

from compose.api import library_chatter_off

MODEL_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: Largest |logit| difference between the fused and the plain fp32 graph that counts as equal.
FUSION_TOLERANCE = 1e-3
#: MatMulNBits' accuracy_level 4: activations quantized to int8 per block at run time, so the 4-bit
#: matmuls run as int8 dot products on CPUs (the float path, level 0/1, dequantizes the weights instead).
INT4_ACCURACY_LEVEL = 4


def _inputs(tokenizer) -> list[str]:
    wanted = getattr(tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"]
    return [n for n in INPUT_NAMES if n in wanted]


def _sample(tokenizer, names):
    texts = ["a short one", "a somewhat longer sentence to export with", "x y z"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return {n: encoded[n] for n in names}


def head_counts(model) -> list[int]:
    """Attention heads per layer (after any pruning), for BERT-class encoders."""
    counts = []
    for module in model.modules():
        if hasattr(module, "num_attention_heads") and hasattr(module, "query") and hasattr(module, "key"):
            counts.append(int(module.num_attention_heads))
    return counts


def attention_fuses(model) -> bool:
    """Whether ONNX Runtime's optimizer can fuse the model's attention (one head count in every layer,
    heads of the config's width): then the Q/K/V projections become one ``Attention`` node, which the
    int8 quantizer turns into ``QAttention`` even when the other matmuls are 4-bit."""
    heads = head_counts(model)
    hidden = int(model.config.hidden_size)
    return bool(heads) and len(set(heads)) == 1 and heads[0] * (hidden // model.config.num_attention_heads) == hidden


def _matmul_heads(model) -> int:
    """Linear layers outside the transformer blocks (pooler, classifier) act on [batch, hidden] and export as
    Gemm, which ORT's dynamic int8 and 4-bit quantizers skip; computed as matmul + add they export as MatMul."""
    import torch

    class MatMulLinear(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x):
            y = torch.matmul(x, self.weight.t())
            return y + self.bias if self.bias is not None else y

    blocks = {id(m) for layer in _blocks(model) for m in layer.modules()}
    heads = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m) not in blocks]
    for name in heads:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, MatMulLinear(getattr(owner, child)))
    return len(heads)


def _blocks(model) -> list:
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def torch_export(model, tokenizer, path: Path, opset: int) -> tuple[list[str], dict]:
    import torch

    model = copy.deepcopy(model).float().cpu().eval()
    model.config._attn_implementation = "eager"  # shared by every submodule's config
    _matmul_heads(model)
    names = _inputs(tokenizer)
    sample = _sample(tokenizer, names)

    class Logits(torch.nn.Module):  # positional inputs, one named output
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on transformers' mask code: checked by the logits below
        torch.onnx.export(
            Logits(model),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return names, sample


def session(path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_logits(sess, feeds: dict):
    import numpy as np

    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: np.asarray(v, dtype=np.int64) for k, v in feeds.items() if k in wanted})[0]


def optimize(source: Path, target: Path, model, sample: dict, reference, settings) -> dict:
    """Fuse the graph for BERT; keep the plain export when fusion would change the logits."""
    import numpy as np
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    heads = head_counts(model)
    hidden = int(model.config.hidden_size)
    uniform = attention_fuses(model)
    options = FusionOptions("bert")
    notes = []
    if settings["embeddings"] != "fp32":
        options.enable_embed_layer_norm = False
        notes.append("embeddings left unfused: the fused EmbedLayerNormalization reads a float table")
    if not uniform:
        options.enable_attention = False
        notes.append(
            f"attention left unfused: heads differ per layer ({heads}) after pruning, and ORT's fused "
            "Attention op takes one head count"
        )
    fused = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=heads[0] if uniform else 0,
        hidden_size=hidden if uniform else 0,
        optimization_options=options,
        opt_level=0,
    )
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    fused.save_model_to_file(str(target))
    drift = float(np.abs(run_logits(session(target), sample) - reference).max())
    if drift > FUSION_TOLERANCE:
        os.replace(source, target)
        return {
            "applied": False,
            "fusions": {},
            "why": f"fused graph's logits drift {drift:.2e}; kept the plain "
            "export (ORT still applies its basic graph optimisations when the session loads)",
        }
    return {"applied": True, "fusions": stats, "max_logit_drift": drift, "notes": notes}


def _gathers_of_non_tables(model) -> list[str]:
    """Gather nodes that do not look up rows of a 2-D constant table (shape arithmetic): never quantized."""
    tables = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] not in tables]


def quantize(source: Path, target: Path, settings) -> dict:
    """Weight-only 4-bit and/or dynamic int8, as the settings ask; the steps taken."""
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # removed on error too
        return _quantize_in(source, target, settings, Path(scratch))


def _quantize_in(source: Path, target: Path, settings, tmp: Path) -> dict:
    import onnx

    steps = []
    current = source
    for op, key, block in (("Gather", "embeddings", "embeddings_block_size"), ("MatMul", "weights", "block_size")):
        if settings[key] != "int4":
            continue
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        model = onnx.load(str(current))
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=settings[block],
            is_symmetric=True,
            accuracy_level=INT4_ACCURACY_LEVEL,
            op_types_to_quantize=(op,),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
            nodes_to_exclude=_gathers_of_non_tables(model),
        )
        quantizer.process()
        current = tmp / f"int4-{op}.onnx"
        quantizer.model.save_model_to_file(str(current), use_external_data_format=False)
        steps.append(f"4-bit weight-only (blocks of {settings[block]}, symmetric): {op}")
    int8 = [op for op, key in (("MatMul", "weights"), ("Gather", "embeddings")) if settings[key] == "int8"]
    if settings["weights"] != "fp32":
        int8.append("Attention")  # a fused attention's QKV projection (MatMulNBits only rewrites MatMul)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = tmp / "int8.onnx"
        quantize_dynamic(
            str(current),
            str(out),
            op_types_to_quantize=int8,
            per_channel=settings["per_channel"],
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        current = out
        channel = "per channel" if settings["per_channel"] else "per tensor"
        steps.append(f"dynamic int8 ({channel}): {', '.join(int8)}")
    os.replace(current, target)
    return {"steps": steps}


def export_classifier(model, tokenizer, folder: Path, settings) -> dict:
    """Write ``folder/model.onnx`` for a sequence classifier; the details for the report."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # removed on error too
        return _export_in(model, tokenizer, folder, settings, Path(tmp))


def _export_in(model, tokenizer, folder: Path, settings, scratch: Path) -> dict:
    import numpy as np
    import torch

    raw = scratch / "raw.onnx"
    names, sample = torch_export(model, tokenizer, raw, settings["opset"])
    with torch.no_grad():
        reference = copy.deepcopy(model).float().cpu().eval()(**sample).logits.numpy()
    sample_np = {k: v.numpy() for k, v in sample.items()}
    drift = float(np.abs(run_logits(session(raw), sample_np) - reference).max())
    details = {"inputs": names, "opset": settings["opset"], "export_max_logit_drift": drift}
    fused = scratch / "fused.onnx"
    with library_chatter_off():
        if settings["optimize"]:
            details["optimization"] = optimize(raw, fused, model, sample_np, reference, settings)
        else:
            os.replace(raw, fused)
            details["optimization"] = {"applied": False, "why": "optimize: false"}
        details["quantization"] = quantize(fused, folder / MODEL_FILE, settings)
    return details


def onnx_module(folder: Path, parameters: int, config=None):
    """A ``torch.nn.Module`` that runs ``folder/model.onnx`` in ONNX Runtime, as the core evaluates models:
    ``model(**inputs).logits`` (a torch tensor), ``eval()``/``train()``/``to()`` accepted.

    The session is made with ``intra_op_num_threads = torch.get_num_threads()``, and made
    again when that number changes (the core sets it for latency measurements)."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class OnnxSequenceClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.folder = Path(folder)
            self.config = config
            #: parameters of the PyTorch model it was exported from (``count_parameters`` reads it)
            self.packed_parameters = int(parameters)
            self._session = None
            self._threads = None

        def session(self):
            threads = torch.get_num_threads()
            if self._session is None or self._threads != threads:
                self._session = session(self.folder / MODEL_FILE, threads)
                self._threads = threads
            return self._session

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_ignored):
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            feeds = {k: v.detach().cpu().numpy() for k, v in feeds.items() if v is not None}
            if "attention_mask" not in feeds:
                feeds["attention_mask"] = feeds["input_ids"] * 0 + 1
            if "token_type_ids" not in feeds:
                feeds["token_type_ids"] = feeds["input_ids"] * 0
            logits = run_logits(self.session(), feeds)
            return SequenceClassifierOutput(logits=torch.from_numpy(logits).to(input_ids.device))

        def __getstate__(self):
            state = self.__dict__.copy()
            state["_session"] = None
            return state

    return OnnxSequenceClassifier()
