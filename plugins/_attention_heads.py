"""Where a model keeps its attention heads, and how to remove some of them: the `prune-heads` stage's surgery.

An *attention site* is one attention block: the projections that make the heads
(query, key, value) and the projection after them (output). The heads of a site
are pruned in *units*: one head, or, where several query heads share one
key/value head (grouped-query attention, GQA), the whole group (the key/value
head and its query heads) so that the grouping stays intact.

Architectures (``find_attention`` tries them in this order):

- ``bert``: BERT-class encoders (BERT, RoBERTa, ELECTRA, MiniLM...):
  ``encoder.layer[i].attention.self.{query,key,value}`` and ``attention.output.dense``.
- ``llama``: Llama-style decoders (Llama, Mistral, Qwen2/3...): any module with
  ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (``nn.Linear``) and ``head_dim``.
  Query head h uses key/value head h // (heads / key-value heads).
- ``gpt2``: GPT-2's ``transformer.h[i].attn``: one fused ``Conv1D`` ``c_attn``
  (query, key and value side by side in its output columns) and ``c_proj``.
- ``t5``: T5 / mT5: encoder self-attention, decoder self-attention and decoder
  cross-attention (``T5Attention`` q, k, v, o), labelled ``encoder.i``,
  ``decoder.i.self`` and ``decoder.i.cross``.

Head h owns channels h*d .. h*d+d-1 of the query/key/value outputs and of the
output projection's input (d: the head size), so removing heads is slicing rows of
the first three and columns of the last; the module's head-count attributes follow.

T5's relative position bias needs more than slicing. The first block of each
stack owns ``relative_attention_bias`` (an ``Embedding(buckets, heads)``) and the
bias it computes, (1, heads, q, k), is handed to every later block of the stack,
each adding column h to its head h. Once the layers keep different heads, each
pruned T5 attention selects its own heads' columns from that shared bias (a forward
pre-hook), and hands the *unsliced* bias on to the next block (a forward hook). The
embedding itself drops only the columns that no layer of its stack keeps (all of
them if every layer lost the same head). Cross-attention has no position bias (T5
adds zeros), so a pruned cross-attention makes its own zeros and passes none on.
The hooks are reinstalled by ``apply_kept`` when a saved artifact is rebuilt.
"""

from __future__ import annotations

import types
from contextlib import contextmanager


class AttentionSite:
    """One attention block. Subclasses know one architecture's module layout."""

    architecture = ""

    def __init__(self, label: str, module, query, key, value, output):
        self.label = label  # "3" (layer 3), or for T5 "encoder.3", "decoder.3.self", "decoder.3.cross"
        self.module = module
        self.query, self.key, self.value, self.output = query, key, value, output

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
        return [self.query.weight.reshape(n, -1), self.key.weight.reshape(n, -1), self.value.weight.reshape(n, -1),
                self.output.weight.t().reshape(n, -1)]  # fmt: skip

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
    architecture = "bert"

    @property
    def head_size(self) -> int:
        return self.module.attention_head_size

    @property
    def query_heads(self) -> int:
        return self.module.num_attention_heads

    def set_counts(self, units: int) -> None:
        self.module.num_attention_heads = units
        self.module.all_head_size = units * self.head_size


class LlamaSite(AttentionSite):
    architecture = "llama"

    @property
    def head_size(self) -> int:
        return self.module.head_dim

    @property
    def kv_heads(self) -> int:
        return self.key.out_features // self.head_size

    def set_counts(self, units: int) -> None:
        # Llama's forward reshapes with -1 and repeats key/value heads by num_key_value_groups,
        # which whole-group removal leaves unchanged; other Llama-style classes keep counts too.
        for name, value in (("num_heads", units * self.group), ("num_attention_heads", units * self.group),
                            ("num_key_value_heads", units)):  # fmt: skip
            if isinstance(getattr(self.module, name, None), int):
                setattr(self.module, name, value)


class GPT2Site(AttentionSite):
    """GPT-2: ``c_attn`` is a Conv1D (weight (in, 3 * width)) with query | key | value columns."""

    architecture = "gpt2"

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
        return [fused[i * split:(i + 1) * split].reshape(n, -1) for i in range(3)] + [
            self.output.weight.reshape(n, -1)]  # fmt: skip

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
    architecture = "t5"

    def __init__(self, label, module, stack: str, cross: bool):
        super().__init__(label, module, module.q, module.k, module.v, module.o)
        self.stack, self.cross = stack, cross

    @property
    def head_size(self) -> int:
        return self.module.key_value_proj_dim

    def set_counts(self, units: int) -> None:
        self.module.n_heads = units
        self.module.inner_dim = units * self.head_size


# -- finding the sites -----------------------------------------------------------


def _bert_sites(model) -> list:
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    sites = []
    for index, layer in enumerate(layers or ()):
        attention = getattr(layer, "attention", None)
        inner = getattr(attention, "self", None)
        dense = getattr(getattr(attention, "output", None), "dense", None)
        if inner is None or dense is None or not all(hasattr(inner, a) for a in ("query", "key", "value")):
            return []
        sites.append(BertSite(str(index), inner, inner.query, inner.key, inner.value, dense))
    return sites


def _llama_sites(model) -> list:
    import torch

    sites = []
    for module in model.modules():
        projections = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linear = all(isinstance(p, torch.nn.Linear) for p in projections)
        if linear and isinstance(getattr(module, "head_dim", None), int):
            label = getattr(module, "layer_idx", None)
            sites.append(LlamaSite(str(len(sites) if label is None else label), module, *projections))
    return sites


def _gpt2_sites(model) -> list:
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    sites = []
    for index, block in enumerate(blocks or ()):
        attn = getattr(block, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("c_attn", "c_proj", "split_size", "head_dim")):
            return []
        sites.append(GPT2Site(str(index), attn, attn.c_attn, attn.c_attn, attn.c_attn, attn.c_proj))
    return sites


#: Model types whose attention is transformers' T5Attention (its forward signature and shared position bias).
T5_TYPES = ("t5", "mt5")


def _t5_sites(model) -> list:
    def attention(block, position, name):
        layers = getattr(block, "layer", ())
        module = getattr(layers[position], name, None) if len(layers) > position else None
        if module is None or not all(hasattr(module, a) for a in ("q", "k", "v", "o", "n_heads", "key_value_proj_dim")):
            raise LookupError
        return module

    if getattr(getattr(model, "config", None), "model_type", None) not in T5_TYPES:
        return []
    sites = []
    try:
        for stack in ("encoder", "decoder"):
            for index, block in enumerate(getattr(getattr(model, stack, None), "block", None) or ()):
                if stack == "encoder":
                    sites.append(T5Site(f"encoder.{index}", attention(block, 0, "SelfAttention"), stack, False))
                else:
                    sites.append(T5Site(f"decoder.{index}.self", attention(block, 0, "SelfAttention"), stack, False))
                    sites.append(T5Site(f"decoder.{index}.cross", attention(block, 1, "EncDecAttention"), stack, True))
    except LookupError:
        return []
    return sites


SUPPORTED = "BERT-class encoders, Llama-style decoders (q_proj/k_proj/v_proj/o_proj), GPT-2, and T5/mT5"


def find_attention(model) -> list[AttentionSite]:
    """The model's prunable attention blocks, in forward order (the one place that knows the layouts)."""
    for finder in (_bert_sites, _llama_sites, _gpt2_sites, _t5_sites):
        sites = finder(model)
        if sites:
            return sites
    raise ValueError(f"prune-heads cannot find attention layers it knows in {type(model).__name__}; "
                     f"it supports {SUPPORTED}")  # fmt: skip


# -- gates (for scoring, and to check a removal) -----------------------------------


@contextmanager
def head_gates(sites, device):
    """Differentiable per-unit gates (ones) on the input of each site's output projection; yields them.

    A forward pre-hook on the output projection views its input, the heads' context
    vectors side by side, as (..., units, channels per unit) and multiplies it by
    the site's gate: setting gate[u] = 0 is exactly removing unit u.
    """
    import torch

    gates = [torch.ones(site.num_units, device=device, requires_grad=True) for site in sites]

    def gate_hook(site, gate):
        def hook(module, args):
            context, *rest = args
            shape = context.shape
            gated = (context.reshape(*shape[:-1], site.num_units, -1) * gate.to(context.dtype)[:, None]).reshape(shape)
            return (gated, *rest)

        return hook

    handles = [site.output.register_forward_pre_hook(gate_hook(site, gate)) for site, gate in zip(sites, gates)]
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


# -- removal ---------------------------------------------------------------------


def apply_kept(model, sites, kept: list[list[int]]) -> None:
    """Keep ``kept[i]`` units of site i (all of them: untouched); T5's shared position bias follows."""
    for site, units in zip(sites, kept):
        if len(units) < site.num_units:
            if isinstance(site, T5Site) and not site.cross:
                _set_bias_index(site.module, _bias_index(site.module).index_select(0, _long(units, site)))
            site.keep(units)
    t5 = [site for site in sites if isinstance(site, T5Site)]
    if t5:
        _t5_position_bias(t5)


def check_widths(sites, units: list[int]) -> None:
    """Raise if a site's projections do not have the widths of ``units[i]`` units."""
    for site, n in zip(sites, units):
        q, kv = n * site.group * site.head_size, n * site.head_size
        if site.num_units != n or site.widths() != (q, kv, kv, q):
            raise RuntimeError(f"attention {site.label}: expected {n} head(s) after pruning, found "
                               f"{site.num_units} and projection widths {site.widths()}")  # fmt: skip


def _long(values, site):
    import torch

    return torch.tensor(list(values), dtype=torch.long, device=site.query.weight.device)


# -- T5's shared relative position bias ---------------------------------------------

_INDEX = "compose_bias_index"  # non-persistent buffer: which columns of the stack's bias this attention uses
_STASH = "_compose_stack_bias"


def _bias_index(module):
    import torch

    index = getattr(module, _INDEX, None)
    if index is None:  # never pruned: head h uses column h
        index = torch.arange(module.n_heads, device=module.q.weight.device)
    return index


def _set_bias_index(module, index) -> None:
    if _INDEX in module._buffers:
        module._buffers[_INDEX] = index
    else:
        module.register_buffer(_INDEX, index, persistent=False)


def _t5_position_bias(sites) -> None:
    """Drop embedding columns no layer uses; (re)install the hooks on every pruned T5 attention."""
    for stack in {site.stack for site in sites}:
        own = [site for site in sites if site.stack == stack and not site.cross]
        owners = [site.module for site in own if getattr(site.module, "has_relative_attention_bias", False)]
        if len(owners) == 1:  # the stack's first block owns the embedding
            embedding = owners[0].relative_attention_bias
            used = sorted({int(c) for site in own for c in _bias_index(site.module)})
            if used != list(range(embedding.weight.shape[1])):
                import torch

                columns = _long(used, own[0])
                embedding.weight = torch.nn.Parameter(embedding.weight.data.index_select(1, columns).clone())
                embedding.embedding_dim = len(used)
                position = {c: i for i, c in enumerate(used)}
                for site in own:
                    _set_bias_index(site.module, _long([position[int(c)] for c in _bias_index(site.module)], site))
    for site in sites:
        module = site.module
        pruned = module.n_heads < module.config.num_heads or getattr(module, _INDEX, None) is not None
        installed = any(hook in (_select_bias_in, _no_bias_in) for hook in module._forward_pre_hooks.values())
        if not pruned or installed:  # the hooks read the index buffer: installing once is enough
            continue
        if site.cross:
            module.register_forward_pre_hook(_no_bias_in, with_kwargs=True)
            module.register_forward_hook(_no_bias_out)
            continue
        if getattr(module, _INDEX, None) is None:
            _set_bias_index(module, _bias_index(module))
        module.register_forward_pre_hook(_select_bias_in, with_kwargs=True)
        module.register_forward_hook(_stack_bias_out)
        if getattr(module, "has_relative_attention_bias", False):
            module.compute_bias = types.MethodType(_selected_compute_bias, module)


def _select_bias_in(module, args, kwargs):
    bias = kwargs.get("position_bias")
    module.__dict__[_STASH] = bias
    if bias is not None:
        kwargs["position_bias"] = bias.index_select(1, getattr(module, _INDEX))
    return args, kwargs


def _selected_compute_bias(module, *args, **kwargs):
    """The stack's whole bias (computed by the class's own method), stashed; this layer's columns returned."""
    bias = type(module).compute_bias(module, *args, **kwargs)
    module.__dict__[_STASH] = bias
    return bias.index_select(1, getattr(module, _INDEX))


def _stack_bias_out(module, args, output):
    attn_output, _, *rest = output
    return (attn_output, module.__dict__.pop(_STASH, None), *rest)


def _no_bias_in(module, args, kwargs):
    kwargs["position_bias"] = None  # T5Attention makes zeros of its own head count
    return args, kwargs


def _no_bias_out(module, args, output):
    attn_output, _, *rest = output
    return (attn_output, None, *rest)


__all__ = ["AttentionSite", "SUPPORTED", "apply_kept", "check_widths", "find_attention", "head_gates"]
