"""Fake quantization that reproduces, value for value, what the deployment's quantizer will do.

Each function returns the tensor rounded to the deployment's grid and back to float, built
on torch's own fake-quantize ops (``torch.fake_quantize_per_channel_affine`` and
``..._per_tensor_affine``): straight-through gradients, no hand-written rounding kernel.
The scales follow ONNX Runtime's quantizers exactly (checked against the exported graph's
initializers by the tests):

- int8 weights, per output channel (``per_channel: true``) or per matrix, symmetric:
  scale = max|w| / 127, codes in [-127, 127] (``quantize_dynamic``, QInt8, symmetric);
- activations of an int8 matmul, per tensor, asymmetric uint8, computed from each batch
  (``DynamicQuantizeLinear``): scale = (max(x, 0) - min(x, 0)) / 255, zero point
  round(-min / scale);
- 4-bit weights and embedding rows, in blocks along the reduced dimension, symmetric
  (``MatMulNBitsQuantizer``): the block's value of largest magnitude m maps to -8,
  scale = m / -8, codes in [-8, 7]. With a positive scale |m| / 8 that is the range [-8, 7]
  when m < 0, and [-7, 8] (zero point -1) when m > 0;
- activations of a 4-bit matmul at accuracy level 4 (int8 dot products), in blocks of the
  weight's block size along the reduced dimension, symmetric int8: scale = max|x| / 127.
"""

from __future__ import annotations

from functools import cache

import torch


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """A zero scale (an all-zero channel or block) as 1: its codes are 0 either way."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def int8_weight(weight: torch.Tensor, per_channel: bool = True, absmax: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` ([out, in], torch's Linear layout) on ONNX Runtime's symmetric int8 grid (per matrix: of
    ``absmax`` where given, the largest magnitude of the matrix it is stored in)."""
    if per_channel:
        scale = _safe(weight.detach().abs().amax(dim=1) / 127)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero, 0, -127, 127)
    largest = weight.detach().abs().amax() if absmax is None else absmax
    scale = _safe(largest.reshape(1) / 127)
    zero = torch.zeros(1, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_tensor_affine(weight, scale.float(), zero, -127, 127)


def uint8_activation(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``DynamicQuantizeLinear`` quantizes it: one asymmetric uint8 scale for the whole tensor."""
    low = torch.clamp(x.detach().amin(), max=0).float()
    high = torch.clamp(x.detach().amax(), min=0).float()
    scale = _safe(((high - low) / 255).reshape(1))
    zero = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def _blocks(t: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``t`` ([rows, n]) as [rows * blocks, block], zero-padded at the end; and the padding."""
    rows, n = t.shape
    pad = (-n) % block
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return t.reshape(rows * ((n + pad) // block), block), pad


def int4_blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """``t`` ([rows, n]: a Linear's weight, or an embedding table) on the symmetric 4-bit grid of
    ``MatMulNBitsQuantizer``: blocks of ``block`` consecutive values along ``n``."""
    rows, n = t.shape
    flat, pad = _blocks(t, block)
    detached = flat.detach()
    high, low = detached.amax(dim=1), detached.amin(dim=1)
    largest = torch.where(high.abs() > low.abs(), high, low)  # the value that maps to -8
    scale = _safe(largest.abs() / 8).float()
    zero = torch.where(largest > 0, -1, 0).to(torch.int32)
    quantized = torch.fake_quantize_per_channel_affine(flat, scale, zero, 0, -8, 7)
    quantized = quantized.reshape(rows, n + pad)
    return quantized[:, :n] if pad else quantized


def int8_activation_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` ([..., k]) quantized to symmetric int8 in blocks of ``block`` along ``k``, as MatMulNBits
    does at accuracy level 4 before its int8 dot products."""
    shape = x.shape
    flat, pad = _blocks(x.reshape(-1, shape[-1]), block)
    scale = _safe(flat.detach().abs().amax(dim=1) / 127).float()
    zero = torch.zeros(flat.shape[0], dtype=torch.int32, device=x.device)
    quantized = torch.fake_quantize_per_channel_affine(flat, scale, zero, 0, -127, 127)
    quantized = quantized.reshape(-1, shape[-1] + pad)
    return (quantized[:, : shape[-1]] if pad else quantized).reshape(shape)


@cache
def _gptqmodel_quantize():
    """GPTQModel's rounding function, imported on first use with its start-up chatter silenced."""
    from compose.plugins.shared.quantization.gptqmodel import engine

    engine()
    from gptqmodel.quantization.quantizer import quantize

    return quantize


def gptq_groups(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """``weight`` ([out, in]) on GPTQModel's round-to-nearest grid, rounded by GPTQModel's own
    ``quantize`` with the scales its ``Quantizer.find_params`` computes: groups of ``group_size``
    input columns (-1: a whole row), the range stretched to include 0; symmetric: scale =
    2 max|w| / (2^bits - 1) with the zero point in the middle; asymmetric: scale = (max - min) /
    (2^bits - 1), zero point round(-min / scale). Straight-through gradients.

    Not torch's fake-quantize op: GPTQModel divides by the scale where torch multiplies by its
    inverse, and on the symmetric grid the largest weight of every group sits exactly half a
    step from two levels, so the two round it differently. A gptq stage quantizes the trained
    float weights itself; this is the grid it starts from, which its ``method: rtn`` reproduces."""
    quantize = _gptqmodel_quantize()
    rows, cols = weight.shape
    group = cols if group_size == -1 else group_size
    flat, pad = _blocks(weight, group)
    detached = flat.detach()
    zeros = torch.zeros(flat.shape[0], device=flat.device, dtype=flat.dtype)
    low, high = torch.minimum(detached.amin(dim=1), zeros), torch.maximum(detached.amax(dim=1), zeros)
    top = 2**bits - 1
    if sym:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = (high - low) / top
    zero = torch.full_like(scale, (top + 1) / 2) if sym else torch.round(-low / scale)
    rounded = quantize(detached, scale.unsqueeze(1), zero.unsqueeze(1), torch.tensor(top), False)
    quantized = (rounded + (flat - detached)).reshape(rows, cols + pad)  # exactly rounded; gradient straight through
    return quantized[:, :cols] if pad else quantized
