"""Removing attention heads: differentiable masks to score them, slicing to remove them, a width check.

Works on the sites of ``architectures.attention`` (any kind); T5's shared position bias is
kept consistent by ``pruning.heads.t5_position_bias``.
"""

from __future__ import annotations

from contextlib import contextmanager

from compose.plugins.pruning.heads.t5_position_bias import install_position_bias, select_heads


@contextmanager
def head_masks(sites, device):
    """Differentiable per-unit masks (ones) on the input of each site's output projection; yields them.

    A forward pre-hook on the output projection views its input, the heads' context
    vectors side by side, as (..., units, channels per unit) and multiplies it by
    the site's mask: setting mask[u] = 0 is exactly removing unit u.
    """
    import torch

    masks = [torch.ones(site.num_units, device=device, requires_grad=True) for site in sites]

    def mask_hook(site, mask):
        def hook(module, args):
            context, *rest = args
            shape = context.shape
            masked = (context.reshape(*shape[:-1], site.num_units, -1) * mask.to(context.dtype)[:, None]).reshape(shape)
            return (masked, *rest)

        return hook

    handles = [site.output.register_forward_pre_hook(mask_hook(site, mask)) for site, mask in zip(sites, masks)]
    try:
        yield masks
    finally:
        for handle in handles:
            handle.remove()


def apply_kept(model, sites, kept: list[list[int]]) -> None:
    """Keep ``kept[i]`` units of site i (all of them: untouched); T5's shared position bias follows."""
    for site, units in zip(sites, kept):
        if len(units) < site.num_units:
            if site.kind == "t5":
                select_heads(site, units)
            site.keep(units)
    t5 = [site for site in sites if site.kind == "t5"]
    if t5:
        install_position_bias(t5)


def check_widths(sites, units: list[int]) -> None:
    """Raise if a site's projections do not have the widths of ``units[i]`` units."""
    for site, n in zip(sites, units):
        q, kv = n * site.group * site.head_size, n * site.head_size
        if site.num_units != n or site.widths() != (q, kv, kv, q):
            raise RuntimeError(
                f"attention {site.label}: expected {n} head(s) after pruning, found "
                f"{site.num_units} and projection widths {site.widths()}"
            )


__all__ = ["apply_kept", "check_widths", "head_masks"]
