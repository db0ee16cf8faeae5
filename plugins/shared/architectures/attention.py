"""Where a model keeps its attention heads: the attention *sites* the `prune-heads` stage scores and prunes.

An *attention site* is one attention block: the projections that make the heads
(query, key, value) and the projection after them (output). The heads of a site
are pruned in *units*: one head, or, where several query heads share one
key/value head (grouped-query attention, GQA), the whole group (the key/value
head and its query heads) so that the grouping stays intact.

Where the sites are comes from the architecture table (``architectures.registry``): each
entry names, per stack, the attention modules of a layer and their ``kind``, which
picks the site class here:

- ``bert``: BERT, RoBERTa: ``attention.self.{query,key,value}`` and ``attention.output.dense``.
- ``projections``: Llama, Qwen2 (``self_attn.{q,k,v,o}_proj``) and BART
  (``self_attn`` / ``encoder_attn``: ``{q,k,v,out}_proj``): separate linears and
  ``head_dim``; query head h uses key/value head h // (heads / key-value heads).
- ``fused``: GPT-2's ``attn``: one ``Conv1D`` ``c_attn`` (query, key and value side by
  side in its output columns) and ``c_proj``.
- ``t5``: T5 / mT5 ``T5Attention`` (q, k, v, o): encoder self-attention, decoder self-
  and cross-attention, with the shared relative position bias (``pruning.heads.t5_position_bias``).

Labels: ``i`` for layer i of a one-stack model; ``encoder.i``, ``decoder.i.self`` and
``decoder.i.cross`` for an encoder-decoder.

Head h owns channels h*d .. h*d+d-1 of the query/key/value outputs and of the
output projection's input (d: the head size), so removing heads is slicing rows of
the first three and columns of the last; the module's head-count attributes follow.
"""

from __future__ import annotations

from compose.plugins.shared.architectures.modules import architecture, stacks, submodule


class AttentionSite:
    """One attention block. Subclasses know one way of storing heads (``kind``, as the registry names it)."""

    kind = ""

    def __init__(
        self,
        label: str,
        module,
        query,
        key,
        value,
        output,
        *,
        architecture: str = "",
        stack: str = "layers",
        cross: bool = False,
    ):
        self.label = label  # "3" (layer 3), or for encoder-decoders "encoder.3", "decoder.3.self", "decoder.3.cross"
        self.module = module
        self.query, self.key, self.value, self.output = query, key, value, output
        self.architecture = architecture  # the registry entry's name ("bert", "qwen2"...)
        self.stack, self.cross = stack, cross

    # -- shape ----------------------------------------------------------------

    @property
    def head_size(self) -> int:
        raise NotImplementedError

    @property
    def query_heads(self) -> int:
        return self.output_width // self.head_size

    @property
    def kv_heads(self) -> int:
        return self.query_heads

    @property
    def group(self) -> int:
        """Query heads per unit (1 unless key/value heads are shared)."""
        return self.query_heads // self.kv_heads

    @property
    def num_units(self) -> int:
        return self.kv_heads

    @property
    def output_width(self) -> int:
        return self.output.in_features

    def query_channels(self, units) -> list[int]:
        width = self.group * self.head_size
        return [c for u in sorted(units) for c in range(u * width, (u + 1) * width)]

    def kv_channels(self, units) -> list[int]:
        d = self.head_size
        return [c for u in sorted(units) for c in range(u * d, (u + 1) * d)]

    def widths(self) -> tuple[int, int, int, int]:
        """Output widths of query, key, value and the input width of the output projection."""
        return self.query.out_features, self.key.out_features, self.value.out_features, self.output.in_features

    # -- weights ----------------------------------------------------------------

    def unit_weights(self) -> list:
        """Each projection's weights as (units, -1): row u holds everything unit u owns."""
        n = self.num_units
        return [
            self.query.weight.reshape(n, -1),
            self.key.weight.reshape(n, -1),
            self.value.weight.reshape(n, -1),
            self.output.weight.t().reshape(n, -1),
        ]

    def keep(self, units: list[int]) -> None:
        """Keep only ``units`` (indices into the current units); slice the weights, update the attributes."""
        import torch

        device = self.query.weight.device
        q = torch.tensor(self.query_channels(units), dtype=torch.long, device=device)
        kv = torch.tensor(self.kv_channels(units), dtype=torch.long, device=device)
        _keep_linear(self.query, q, 0)
        _keep_linear(self.key, kv, 0)
        _keep_linear(self.value, kv, 0)
        _keep_linear(self.output, q, 1)
        self.set_counts(len(units))

    def set_counts(self, units: int) -> None:
        raise NotImplementedError


def _keep_linear(linear, index, dim: int) -> None:
    """Keep rows (dim 0: output channels) or columns (dim 1: input channels) of an nn.Linear."""
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(dim, index).clone())
    if dim == 0:
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.data.index_select(0, index).clone())
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


class BertSite(AttentionSite):
    kind = "bert"

    @property
    def head_size(self) -> int:
        return self.module.attention_head_size

    @property
    def query_heads(self) -> int:
        return self.module.num_attention_heads

    def set_counts(self, units: int) -> None:
        self.module.num_attention_heads = units
        self.module.all_head_size = units * self.head_size


class ProjectionSite(AttentionSite):
    """Separate query/key/value/output linears and ``head_dim`` (Llama, Qwen2, BART); key/value heads may be shared."""

    kind = "projections"

    @property
    def head_size(self) -> int:
        return self.module.head_dim

    @property
    def kv_heads(self) -> int:
        return self.key.out_features // self.head_size

    def set_counts(self, units: int) -> None:
        # Llama's (and BART's) forward reshapes with -1 and repeats key/value heads by
        # num_key_value_groups, which whole-group removal leaves unchanged; counts kept where stated.
        for name, value in (
            ("num_heads", units * self.group),
            ("num_attention_heads", units * self.group),
            ("num_key_value_heads", units),
        ):
            if isinstance(getattr(self.module, name, None), int):
                setattr(self.module, name, value)


class FusedSite(AttentionSite):
    """GPT-2: ``c_attn`` is a Conv1D (weight (in, 3 * width)) with query | key | value columns."""

    kind = "fused"

    @property
    def head_size(self) -> int:
        return self.module.head_dim

    @property
    def output_width(self) -> int:
        return self.output.weight.shape[0]  # Conv1D weight: (in, out)

    def widths(self):
        fused = self.query.weight.shape[1]
        return fused // 3, fused // 3, fused // 3, self.output_width

    def unit_weights(self) -> list:
        n, split = self.num_units, self.module.split_size
        fused = self.query.weight.t()  # (3 * width, in)
        return [fused[i * split : (i + 1) * split].reshape(n, -1) for i in range(3)] + [
            self.output.weight.reshape(n, -1)
        ]

    def keep(self, units: list[int]) -> None:
        import torch

        split = self.module.split_size
        channels = self.query_channels(units)
        device = self.query.weight.device
        fused = torch.tensor([c + i * split for i in range(3) for c in channels], dtype=torch.long, device=device)
        rows = torch.tensor(channels, dtype=torch.long, device=device)
        c_attn, c_proj = self.query, self.output
        c_attn.weight = torch.nn.Parameter(c_attn.weight.data.index_select(1, fused).clone())
        c_attn.bias = torch.nn.Parameter(c_attn.bias.data.index_select(0, fused).clone())
        c_attn.nf = len(fused)
        c_proj.weight = torch.nn.Parameter(c_proj.weight.data.index_select(0, rows).clone())
        if hasattr(c_proj, "nx"):
            c_proj.nx = len(rows)
        self.set_counts(len(units))

    def set_counts(self, units: int) -> None:
        self.module.num_heads = units
        self.module.split_size = units * self.head_size


class T5Site(AttentionSite):
    """T5Attention: ``n_heads`` heads of ``key_value_proj_dim``; its position bias is shared (``pruning.heads.t5_position_bias``)."""

    kind = "t5"

    @property
    def head_size(self) -> int:
        return self.module.key_value_proj_dim

    def set_counts(self, units: int) -> None:
        self.module.n_heads = units
        self.module.inner_dim = units * self.head_size


SITE_CLASSES = {cls.kind: cls for cls in (BertSite, ProjectionSite, FusedSite, T5Site)}
STAGE = "prune-heads"


def find_attention(model, stage: str = STAGE) -> list[AttentionSite]:
    """The model's prunable attention blocks, in forward order, where the architecture table puts them."""
    name = architecture(model, stage).name
    sites = []
    for stack in stacks(model, stage):
        for index, layer in enumerate(stack.layers):
            for spec in stack.spec.attention:
                label = str(index) if stack.name == "layers" else f"{stack.name}.{index}"
                if spec.label:
                    label += f".{spec.label}"
                parts = [
                    submodule(layer, path) for path in (spec.module, spec.query, spec.key, spec.value, spec.output)
                ]
                if any(part is None for part in parts):
                    missing = [
                        p
                        for p, m in zip((spec.module, spec.query, spec.key, spec.value, spec.output), parts)
                        if m is None
                    ]
                    raise ValueError(
                        f"{stage}: layer {stack.prefix}.{index} of {type(model).__name__} has no "
                        f"{', '.join(missing)}, where the architecture table puts its attention"
                    )
                cls = SITE_CLASSES[spec.kind]
                sites.append(cls(label, *parts, architecture=name, stack=stack.name, cross=spec.cross))
    return sites


__all__ = ["AttentionSite", "BertSite", "FusedSite", "ProjectionSite", "T5Site", "find_attention"]
