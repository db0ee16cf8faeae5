"""Row-wise quantization of embedding tables and linear weights, packed into plain tensors.

Each row of a [rows, cols] weight (one token's vector of an embedding table, one
output unit of a linear layer) is cut into groups of ``group_size`` columns, and
each group gets its own scale and, when asymmetric, its own integer zero point::

    w ~= scale * (code - zero)          code in 0 .. 2**bits - 1

- asymmetric: scale = (max - min) / (2**bits - 1), zero = round(-min / scale),
  stored per group;
- symmetric: zero fixed at 2**(bits-1), scale = max|w| / (2**(bits-1) - 1) (codes
  use 2**bits - 1 of the levels, so that +w and -w quantize alike).

Stored as plain tensors (safetensors keeps only those: torch's dynamic-int8 modules
do not serialize), all per row:

- ``qweight`` uint8 [rows, padded_cols * bits / 8]: 8 bits one code per byte; 4 bits
  two codes per byte, column 2j in the low nibble and 2j+1 in the high one;
- ``scales`` float16 [rows, groups];
- ``zeros`` uint8 [rows, groups], asymmetric only;
- ``bias`` (a linear layer's, if it has one) in its own dtype.

A row whose last group is partial is padded with zeros before packing and the padding
cut after unpacking. Scales are rounded to float16 before the codes are computed, so
the codes are the nearest levels of the scale that is stored.

Every module here implements ``dequantized()``: the equivalent float module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BITS = (4, 8)
_SMALLEST_SCALE = 2.0**-24  # float16's smallest subnormal: a scale must not round to 0


def layout(cols: int, bits: int, group_size: int) -> tuple[int, int]:
    """(group width, number of groups) of a row of ``cols`` values; -1 or a group wider than the row: one group."""
    if bits not in BITS:
        raise ValueError(f"row-wise quantization packs {' or '.join(map(str, BITS))} bits, not {bits}")
    group = cols if group_size == -1 or group_size >= cols else group_size
    groups = math.ceil(cols / group)
    if group * groups * bits % 8:
        raise ValueError(
            f"a row of {cols} values in groups of {group} does not fill whole bytes at {bits} bits; "
            "use 8 bits or an even group_size"
        )
    return group, groups


def quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool) -> dict:
    """{"qweight", "scales"[, "zeros"]} for a [rows, cols] float weight."""
    rows, cols = weight.shape
    group, groups = layout(cols, bits, group_size)
    w = weight.detach().float()
    if group * groups != cols:
        w = F.pad(w, (0, group * groups - cols))
    w = w.reshape(rows, groups, group)
    top = 2**bits - 1
    if sym:
        half = 2 ** (bits - 1)
        scales = (w.abs().amax(-1) / (half - 1)).clamp(min=_SMALLEST_SCALE).half()
        codes = (w / scales.float().unsqueeze(-1)).round().clamp(-(half - 1), half - 1) + half
        zeros = None
    else:
        low, high = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)  # 0 stays exactly representable
        scales = ((high - low) / top).clamp(min=_SMALLEST_SCALE).half()
        zeros = (-low / scales.float()).round().clamp(0, top)
        codes = ((w / scales.float().unsqueeze(-1)).round() + zeros.unsqueeze(-1)).clamp(0, top)
        zeros = zeros.to(torch.uint8)
    found = {"qweight": pack(codes.reshape(rows, -1).to(torch.uint8), bits), "scales": scales}
    if zeros is not None:
        found["zeros"] = zeros
    return found


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes.contiguous()
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return qweight
    codes = torch.empty(*qweight.shape[:-1], qweight.shape[-1] * 2, dtype=torch.uint8, device=qweight.device)
    torch.bitwise_and(qweight, 0x0F, out=codes[..., 0::2])
    torch.bitwise_right_shift(qweight, 4, out=codes[..., 1::2])
    return codes


def dequantize(qweight, scales, zeros, bits: int, cols: int, sym: bool) -> torch.Tensor:
    """float32 [..., cols] from packed rows of any leading shape (a table, or the rows a lookup picked)."""
    scale = scales.float().unsqueeze(-1)
    offset = scale * -(2 ** (bits - 1)) if sym else scale * -zeros.float().unsqueeze(-1)  # -zero * scale
    codes = unpack(qweight, bits).float().unflatten(-1, (scales.shape[-1], -1))
    return torch.addcmul(offset, codes, scale).flatten(-2)[..., :cols]  # one pass over the values


def _pick(rows: torch.Tensor, index) -> torch.Tensor:
    if index is None:
        return rows
    return rows.index_select(0, index.reshape(-1)).unflatten(0, index.shape)  # ~10x faster than rows[index] on CPU


class _PackedRows(torch.nn.Module):
    """Packed rows of a [rows, cols] weight, or a view of another module's packed rows (``tied_to``).

    A view holds no tensor of its own (nothing saved twice, one packed table feeding
    both an embedding lookup and a tied output projection); ``packed_parameters``, which
    ``compose.api.count_parameters`` reads, counts the logical weights once, on the owner.
    """

    def __init__(self, rows, cols, bits, group_size, sym, *, bias=False, dtype=torch.float32, tied_to=None):
        super().__init__()
        self.rows, self.cols, self.bits, self.sym = rows, cols, bits, sym
        self.group_size = group_size
        group, groups = layout(cols, bits, group_size)
        self.dtype = dtype  # what the forward returns: the dtype of the weight it replaces
        if tied_to is not None:
            if (tied_to.rows, tied_to.cols, tied_to.bits, tied_to.sym) != (rows, cols, bits, sym):
                raise ValueError("a tied view must have the shape and quantization of the packed rows it reads")
            self.__dict__["_owner"] = tied_to  # not a submodule: not in the state dict
        else:
            self.__dict__["_owner"] = None
            self.register_buffer("qweight", torch.zeros(rows, group * groups * bits // 8, dtype=torch.uint8))
            self.register_buffer("scales", torch.zeros(rows, groups, dtype=torch.float16))
            if not sym:
                self.register_buffer("zeros", torch.zeros(rows, groups, dtype=torch.uint8))
        if bias:
            self.register_buffer("bias", torch.zeros(rows, dtype=dtype))
        else:
            self.bias = None

    @property
    def owner(self) -> _PackedRows:
        return self._owner if self._owner is not None else self

    @property
    def tied_to(self):
        return self._owner

    @property
    def packed_parameters(self) -> int:
        """Logical parameters (rows x cols, + bias); 0 for the weights of a tied view."""
        own = 0 if self._owner is not None else self.rows * self.cols
        return own + (self.bias.numel() if self.bias is not None else 0)

    def load_weight(self, weight: torch.Tensor) -> _PackedRows:
        """Quantize ``weight`` [rows, cols] into this module's buffers."""
        if self._owner is not None:
            raise ValueError("a tied view reads its owner's packed rows; quantize the owner")
        for name, tensor in quantize(weight, self.bits, self.group_size, self.sym).items():
            getattr(self, name).copy_(tensor)
        return self

    def rows_of(self, index=None) -> torch.Tensor:
        """The dequantized rows (all, or those at ``index``) as ``self.dtype``."""
        src = self.owner
        zeros = _pick(src.zeros, index) if not self.sym else None
        codes, scales = _pick(src.qweight, index), _pick(src.scales, index)
        return dequantize(codes, scales, zeros, self.bits, self.cols, self.sym).to(self.dtype)

    def extra_repr(self) -> str:
        tied = ", tied" if self._owner is not None else ""
        return f"{self.rows}x{self.cols}, bits={self.bits}, group_size={self.group_size}, sym={self.sym}{tied}"


class QuantEmbedding(_PackedRows):
    """An ``nn.Embedding`` whose table is quantized row-wise (one row per token) and packed.

    The forward looks up the packed rows of the ids it is given and dequantizes only
    those (never the whole table). ``dequantized()`` returns the equivalent
    ``torch.nn.Embedding`` (same num_embeddings, embedding_dim and padding_idx; weight =
    the dequantized table, in the dtype of the weight this module replaced: float32 for
    the pipeline's models), for exporters that want plain float modules (ONNX).
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        bits,
        group_size,
        sym,
        *,
        padding_idx=None,
        dtype=torch.float32,
        tied_to=None,
    ):
        super().__init__(num_embeddings, embedding_dim, bits, group_size, sym, dtype=dtype, tied_to=tied_to)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.rows_of(input_ids)

    def dequantized(self) -> torch.nn.Embedding:
        module = torch.nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=self.padding_idx,
            device=self.owner.qweight.device,
            dtype=self.dtype,
        )
        with torch.no_grad():
            module.weight.copy_(self.rows_of())
        return module


class QuantLinear(_PackedRows):
    """An ``nn.Linear`` whose weight [out_features, in_features] is quantized row-wise and packed.

    Rows are output units (for a language model's head: one row per token, the same
    layout as the embedding table it may be tied to, in which case it reads that
    ``QuantEmbedding``'s packed rows). The forward dequantizes the weight and runs
    ``F.linear``. ``dequantized()`` returns the equivalent ``torch.nn.Linear`` (same
    in/out features and bias; weight = the dequantized values, in the dtype of the
    weight this module replaced: float32 for the pipeline's models); a tied view gets
    its own copy of the weight (untied), as ONNX export wants plain modules.
    """

    def __init__(
        self, in_features, out_features, bits, group_size, sym, *, bias=False, dtype=torch.float32, tied_to=None
    ):
        super().__init__(out_features, in_features, bits, group_size, sym, bias=bias, dtype=dtype, tied_to=tied_to)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rows_of().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def dequantized(self) -> torch.nn.Linear:
        device = self.owner.qweight.device
        module = torch.nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=device, dtype=self.dtype
        )
        with torch.no_grad():
            module.weight.copy_(self.rows_of())
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module
