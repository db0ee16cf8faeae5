"""Row-wise packing of embedding tables and linear weights (``gptq.row_quant``), checked against
an independent reading of the stored layout and against the float modules it replaces."""

from __future__ import annotations

import pytest
import torch

from compose.plugins.gptq.row_quant import QuantEmbedding, QuantLinear, layout, quantize


def _read_back(stored: dict, bits: int, cols: int, group: int, sym: bool) -> torch.Tensor:
    """The weights the stored tensors mean, decoded element by element from the documented layout."""
    qweight = stored["qweight"].long()
    if bits == 4:
        codes = torch.empty(qweight.shape[0], qweight.shape[1] * 2, dtype=torch.long)
        codes[:, 0::2], codes[:, 1::2] = qweight % 16, qweight // 16  # low nibble first
    else:
        codes = qweight
    column_group = torch.arange(codes.shape[1]) // group
    scales = stored["scales"].float()[:, column_group]
    zeros = 2 ** (bits - 1) if sym else stored["zeros"].float()[:, column_group]
    return ((codes - zeros) * scales)[:, :cols]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("cols, group_size", [(48, 16), (40, 16), (48, -1), (24, 64)])
def test_codes_are_the_nearest_levels_of_the_stored_scales(bits, sym, cols, group_size):
    torch.manual_seed(0)
    weight = torch.randn(7, cols) * torch.linspace(0.01, 2.0, 7).unsqueeze(1) + 0.3  # skewed rows
    weight[2] = 0  # a padding row
    group, groups = layout(cols, bits, group_size)
    stored = quantize(weight, bits, group_size, sym)
    assert stored["qweight"].dtype == torch.uint8 and stored["qweight"].shape == (7, group * groups * bits // 8)
    assert stored["scales"].dtype == torch.float16 and stored["scales"].shape == (7, groups)
    assert ("zeros" in stored) is not sym
    decoded = _read_back(stored, bits, cols, group, sym)
    step = stored["scales"].float()[:, torch.arange(cols) // group]
    assert torch.all((decoded - weight).abs() <= step / 2 * (1 + 1e-5) + 1e-7)  # nothing clipped, nearest level
    assert torch.equal(decoded[2], torch.zeros(cols))  # 0 is a level: a zero row stays zero


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_looks_up_packed_rows_as_its_dequantized_float_module(bits):
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 32, padding_idx=0)
    module = QuantEmbedding(50, 32, bits, 16, False, padding_idx=0).load_weight(table.weight)
    ids = torch.randint(0, 50, (3, 9))
    out = module(ids)
    float_module = module.dequantized()
    assert type(float_module) is torch.nn.Embedding and float_module.padding_idx == 0
    assert float_module.weight.shape == (50, 32) and float_module.weight.dtype == torch.float32
    assert torch.equal(out, float_module(ids))  # the lookup dequantizes the same values as the whole table
    assert torch.equal(out, module.rows_of()[ids])
    error = (float_module.weight - table.weight).norm() / table.weight.norm()
    assert error < (0.01 if bits == 8 else 0.15)
    assert module.packed_parameters == 50 * 32
    assert sum(t.numel() * t.element_size() for t in module.state_dict().values()) == 50 * 32 * bits // 8 + 50 * 2 * 3


def test_linear_and_a_tied_view_share_one_packed_table():
    torch.manual_seed(0)
    table = torch.nn.Embedding(40, 32)
    owner = QuantEmbedding(40, 32, 4, 32, True).load_weight(table.weight)
    head = QuantLinear(32, 40, 4, 32, True, tied_to=owner)
    assert head.state_dict() == {} and head.packed_parameters == 0 and head.tied_to is owner
    x = torch.randn(5, 32)
    assert torch.equal(head(x), torch.nn.functional.linear(x, owner.rows_of()))
    plain = head.dequantized()
    assert type(plain) is torch.nn.Linear and plain.weight.shape == (40, 32) and plain.bias is None
    assert torch.allclose(plain(x), head(x), atol=1e-6)

    linear = torch.nn.Linear(32, 6)
    packed = QuantLinear(32, 6, 8, -1, False, bias=True).load_weight(linear.weight)
    packed.bias.copy_(linear.bias)
    assert packed.packed_parameters == 32 * 6 + 6
    assert torch.allclose(packed(x), linear(x), atol=2e-2)
    assert torch.equal(packed.dequantized().bias, linear.bias.detach())
    with pytest.raises(ValueError, match="a tied view must have the shape and quantization"):
        QuantLinear(32, 40, 8, 32, True, tied_to=owner)


def test_unsupported_layouts_say_what_works():
    with pytest.raises(ValueError, match="packs 4 or 8 bits, not 3"):
        layout(32, 3, 16)
    with pytest.raises(ValueError, match="does not fill whole bytes at 4 bits; use 8 bits or an even group_size"):
        layout(33, 4, -1)
    assert layout(33, 8, -1) == (33, 1) and layout(100, 4, 16) == (16, 7) and layout(24, 4, 64) == (24, 1)
