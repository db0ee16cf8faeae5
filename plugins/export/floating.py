"""Turn a compressed PyTorch model back into plain float modules before it is exported.

Exporters trace plain ``nn.Linear``/``nn.Embedding`` maths. Two kinds of module are not:

- any module with a ``dequantized()`` method (the protocol for quantized layers in
  this project: it returns an equivalent float ``nn.Embedding``/``nn.Linear``);
- GPTQModel's packed linear layers (``qweight``/``qzeros``/``scales``/``g_idx`` and
  ``dequantize_weight()``), which the `gptq` stage leaves.

``to_float`` replaces both kinds in place, on a copy the caller owns.
"""

from __future__ import annotations

from compose.api import Dequantizable


def _set_module(root, name: str, module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def is_gptq_packed(module) -> bool:
    return all(hasattr(module, a) for a in ("qweight", "qzeros", "scales", "g_idx", "dequantize_weight"))


def gptq_to_linear(module):
    """The float ``nn.Linear`` a GPTQModel packed linear computes (weights dequantized once)."""
    import torch

    was_training = module.training
    module.eval()  # GPTQModel's fast dequantizer runs in eval mode
    with torch.no_grad():
        weight = module.dequantize_weight().T.detach().to("cpu", torch.float32)  # (out, in)
    module.train(was_training)
    weight = weight[: module.out_features, : module.in_features]
    linear = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    linear.weight.data = weight.contiguous()
    if module.bias is not None:
        linear.bias.data = module.bias.detach().to("cpu", torch.float32).clone()
    return linear


def to_float(model, *, gptq: bool = True) -> dict:
    """Replace quantized modules of ``model`` by float ones; return {kind: count} of what was replaced.

    ``gptq=False`` keeps GPTQModel's packed linears (a GPTQ checkpoint carries them) and
    replaces only the modules with ``dequantized()`` (row-quantized tables and heads,
    which no standard checkpoint layout describes)."""
    replaced = {"dequantized": 0, "gptq_packed": 0}
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(d + ".") for d in done):
            continue
        if isinstance(module, Dequantizable):
            _set_module(model, name, module.dequantized())
            replaced["dequantized"] += 1
            done.append(name)
        elif gptq and is_gptq_packed(module):
            _set_module(model, name, gptq_to_linear(module))
            replaced["gptq_packed"] += 1
            done.append(name)
    if replaced["gptq_packed"] and hasattr(getattr(model, "config", None), "quantization_config"):
        del model.config.quantization_config
    return {k: v for k, v in replaced.items() if v}
