"""The `gptq` stage's layer walk: GPTQ block by block over any transformer, with GPTQModel's layer API.

Used where GPTQModel has no model definition: encoders (BERT-class) and
encoder-decoders (T5), and decoders it does not know.

1. The model's *stacks* of blocks, in forward order, where the architecture table
   (``architectures.registry``) puts them; for an encoder-decoder, the encoder's and then the
   decoder's. A block's layers are its ``nn.Linear`` s, or GPT-2's ``Conv1D`` s (weight
   stored (in, out); GPTQModel's GPTQ reads both, and the packed module replaces either).
2. For each stack, one forward pass per calibration batch records what every
   block receives (args and kwargs: masks, position encodings, T5's shared
   position bias, the encoder's states for cross-attention). The stack's first
   block keeps its hidden states; the others take the previous quantized block's
   outputs instead. The decoder's pass runs after the encoder is quantized, so it
   calibrates on the quantized encoder's states.
3. Per block, a forward hook on each ``nn.Linear`` feeds the layer's inputs, padding
   dropped, to ``GPTQ.add_batch``; ``GPTQ.quantize()`` then does the column-wise
   quantization with error compensation; the result is packed and replaces the
   layer. With ``true_sequential`` the block's layers go in the order the forward
   calls them (layers that share an input, like q/k/v, together), each group
   calibrated on the outputs of those already quantized.

Padding: a layer's input rows are the block's tokens (the attention mask, or for a
decoder stack of an encoder-decoder the target positions, labels != -100), except
for cross-attention keys and values, whose inputs are the encoder's states (the
source attention mask).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from compose.plugins.gptq.engine import pack, quantized_bytes, relative_error, set_module
from compose.plugins.shared.architectures import modules as architecture_modules
from compose.plugins.shared.architectures.modules import block_linears, linear_shape


def stacks(model) -> list[tuple[str, list]]:
    """[(name, blocks)] in forward order: one stack, or the encoder's and the decoder's."""
    return [(stack.prefix, list(stack.layers)) for stack in architecture_modules.stacks(model, "gptq")]


def _as_linear(module):
    """in_features, out_features, weight ([out, in]) and bias of an nn.Linear or a Conv1D."""
    in_features, out_features, _, weight = linear_shape(module)
    return SimpleNamespace(in_features=in_features, out_features=out_features, weight=weight, bias=module.bias)


class _Captured(Exception):
    pass


def model_inputs(model, batch: dict, device) -> dict:
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    if getattr(model.config, "is_encoder_decoder", False) and "labels" in batch and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"].to(device))
    if hasattr(model.config, "use_cache"):
        inputs["use_cache"] = False  # a cache would grow each time a block is re-run
    return inputs


def _token_masks(model, batch: dict, decoder_stack: bool, device):
    """(mask of the stack's own tokens, mask of the encoder's tokens or None) for one batch."""
    source = batch.get("attention_mask")
    source = source.to(device).bool() if source is not None else None
    if decoder_stack:
        labels = batch.get("labels")
        own = (labels != -100).to(device) if labels is not None else None
        return own, source
    return source, None


def _encoder_states(block, args, kwargs):
    try:
        bound = inspect.signature(block.forward).bind_partial(*args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get("encoder_hidden_states")


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def capture_stack(model, blocks, batches, device, decoder_stack: bool):
    """Per block, per batch: (args, kwargs) the block receives (hidden states only for the first);
    per batch: the token masks (see ``_token_masks``)."""
    records = [[] for _ in blocks]

    def grabber(index):
        def grab(_module, args, kwargs):
            if index:
                args, kwargs = _with_hidden(args, kwargs, None)  # replaced by the quantized blocks' outputs
            records[index].append((args, kwargs))
            if index == len(blocks) - 1:
                raise _Captured

        return grab

    handles = [block.register_forward_pre_hook(grabber(i), with_kwargs=True) for i, block in enumerate(blocks)]
    masks = []
    try:
        for batch in batches:
            masks.append(_token_masks(model, batch, decoder_stack, device))
            try:
                model(**model_inputs(model, batch, device))
            except _Captured:
                pass
    finally:
        for handle in handles:
            handle.remove()
    if any(len(r) != len(batches) for r in records):
        raise ValueError("the model's forward skipped some of its blocks on the calibration data")
    return records, masks


def run_block(block, inputs, masks, observers=None, linears=None):
    """Run ``block`` on every input; ``observers[name](x)`` sees each linear's real-token inputs."""
    state = {}
    handles = []
    for name, observe in (observers or {}).items():

        def hook(_module, args, _output, observe=observe):
            x = args[0].detach()
            mask = state["own"]
            memory = state["memory"]
            if memory is not None and x.data_ptr() == memory.data_ptr() and x.shape == memory.shape:
                mask = state["memory_mask"]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask]
            observe(x.reshape(-1, x.shape[-1]))

        handles.append(linears[name].register_forward_hook(hook))
    outputs = []
    try:
        for (args, kwargs), (own, memory_mask) in zip(inputs, masks):
            state.update(own=own, memory_mask=memory_mask, memory=None)
            if memory_mask is not None:
                state["memory"] = _encoder_states(block, args, kwargs)
            outputs.append(_hidden(block(*args, **kwargs)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def call_groups(block, linears, first_input, sequential: bool):
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


def check_shapes(settings, in_features: int, out_features: int, where: str) -> None:
    if settings["bits"] == 3 and (in_features % 32 or out_features % 32):
        raise ValueError(
            f"{where}: 3-bit GPTQ packs 32 weights into 3 words, so in_features and out_features "
            f"must be multiples of 32 (this layer is {in_features} -> {out_features}); use bits 2, 4 or 8"
        )


def quantize_block(eng, qcfg, spec, settings, block, prefix, inputs, masks, found) -> None:
    """Quantize and pack ``block``'s linear layers in place, group by group."""
    import torch

    linears = block_linears(block)
    for name, lin in linears.items():
        lin = _as_linear(lin)
        check_shapes(settings, lin.in_features, lin.out_features, f"{prefix}.{name}")
    for group in call_groups(block, linears, inputs[0], settings["true_sequential"]):
        gptq = {}
        if settings["method"] == "gptq":
            for name in group:
                gptq[name] = eng.GPTQ(linears[name], qcfg)
                gptq[name].quantizer.configure(perchannel=True)
        hessians = {name: 0 for name in group}  # X^T X again, to measure the output error

        def observer(name, gptq=gptq, hessians=hessians):
            def observe(x):
                if name in gptq:
                    gptq[name].add_batch(x, None)
                xf = x.float()
                hessians[name] = hessians[name] + xf.T @ xf

            return observe

        run_block(block, inputs, masks, {n: observer(n) for n in group}, linears)
        for name in group:
            if name in gptq:
                q_weight, scale, zero, g_idx, *_ = gptq.pop(name).quantize()
            else:
                q_weight, scale, zero, g_idx, *_ = eng.RTN(linears[name], qcfg).quantize()
            lin = _as_linear(linears[name])
            if not isinstance(linears[name], torch.nn.Linear):
                q_weight = q_weight.t()  # a Conv1D's weight comes back as it stores it: (in, out)
            packed = pack(eng, spec, lin, q_weight, scale, zero, g_idx)
            full = f"{prefix}.{name}"
            found["errors"][full] = round(relative_error(lin.weight, packed, hessians.pop(name)), 6)
            found["fp32_bytes"] += lin.weight.numel() * 4 + (lin.bias.numel() * 4 if lin.bias is not None else 0)
            found["packed_bytes"] += quantized_bytes(packed)
            found["layers"][full] = [lin.in_features, lin.out_features, lin.bias is not None]
            packed.enable_weight_cache(True)  # dequantize once for the block's remaining passes
            set_module(block, name, packed)
            linears[name] = packed


def quantize_by_blocks(eng, qcfg, spec, settings, model, batches, device, bar) -> dict:
    """Quantize every stack's blocks in place; {"layers", "errors", "fp32_bytes", "packed_bytes", "tokens"}.

    On CUDA, GPTQModel's own path quantizes with TF32 off (full fp32 matmuls for the
    calibration forwards and Hessians); the walk does the same, so both paths compute alike.
    """
    try:
        from gptqmodel.utils.torch import tf32_high_precision_guard
    except ImportError:  # a GPTQModel without it: torch's defaults (TF32 off for matmuls)
        from contextlib import nullcontext as tf32_high_precision_guard
    with tf32_high_precision_guard():
        return _quantize_by_blocks(eng, qcfg, spec, settings, model, batches, device, bar)


def next_inputs(records: list, hidden: list) -> list:
    """The next block's recorded (args, kwargs) per batch, with this block's outputs as its hidden states."""
    return [_with_hidden(args, kwargs, h) for (args, kwargs), h in zip(records, hidden, strict=True)]


def _quantize_by_blocks(eng, qcfg, spec, settings, model, batches, device, bar) -> dict:
    found = {"layers": {}, "errors": {}, "fp32_bytes": 0, "packed_bytes": 0, "tokens": 0}
    all_stacks = stacks(model)
    bar.update(total=sum(len(blocks) for _, blocks in all_stacks))
    for number, (name, blocks) in enumerate(all_stacks):
        records, masks = capture_stack(model, blocks, batches, device, decoder_stack=number > 0)
        if number == 0:
            found["tokens"] = int(sum(m.sum() for m, _ in masks if m is not None))
        inputs = records[0]
        for index, block in enumerate(blocks):
            quantize_block(eng, qcfg, spec, settings, block, f"{name}.{index}", inputs, masks, found)
            hidden = run_block(block, inputs, masks)  # the quantized block's outputs: the next one's inputs
            for module in block.modules():
                if isinstance(module, eng.TorchLinear):
                    module.enable_weight_cache(False)  # drops the dequantized copy
            if index + 1 < len(blocks):
                inputs = next_inputs(records[index + 1], hidden)
            bar.advance()
    return found
