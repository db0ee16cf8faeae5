"""T5's shared relative position bias, once the layers of a stack keep different heads.

The first block of each T5 stack owns ``relative_attention_bias`` (an
``Embedding(buckets, heads)``) and the bias it computes, (1, heads, q, k), is handed
to every later block of the stack, each adding column h to its head h. Once the
layers keep different heads, each pruned T5 attention selects its own heads' columns
from that shared bias (a forward pre-hook), and hands the *unsliced* bias on to the
next block (a forward hook). The embedding itself drops only the columns that no
layer of its stack keeps (all of them if every layer lost the same head).
Cross-attention has no position bias (T5 adds zeros), so a pruned cross-attention
makes its own zeros and passes none on. ``pruning.heads.removal.apply_kept`` (re)installs the
hooks, also when a saved artifact is rebuilt.
"""

from __future__ import annotations

import types

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


def install_position_bias(sites) -> None:
    """Drop embedding columns no layer uses; (re)install the hooks on every pruned T5 attention."""
    for stack in {site.stack for site in sites}:
        own = [site for site in sites if site.stack == stack and not site.cross]
        owners = [site.module for site in own if getattr(site.module, "has_relative_attention_bias", False)]
        if len(owners) == 1:  # the stack's first block owns the embedding
            embedding = owners[0].relative_attention_bias
            used = sorted({int(c) for site in own for c in _bias_index(site.module)})
            if used != list(range(embedding.weight.shape[1])):
                import torch

                columns = long_index(used, own[0])
                embedding.weight = torch.nn.Parameter(embedding.weight.data.index_select(1, columns).clone())
                embedding.embedding_dim = len(used)
                position = {c: i for i, c in enumerate(used)}
                for site in own:
                    _set_bias_index(site.module, long_index([position[int(c)] for c in _bias_index(site.module)], site))
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


def long_index(values, site):
    import torch

    return torch.tensor(list(values), dtype=torch.long, device=site.query.weight.device)


def select_heads(site, units) -> None:
    """Before ``site.keep(units)``: the site's columns of the shared bias follow its kept heads."""
    if not site.cross:
        _set_bias_index(site.module, _bias_index(site.module).index_select(0, long_index(units, site)))


__all__ = ["install_position_bias", "select_heads"]
