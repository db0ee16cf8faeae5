"""Where a model keeps its feed-forward (FFN) neurons, and how to remove some of them: the `prune-ffn` stage's surgery.

An *FFN site* is the feed-forward block of one transformer block: the projection(s)
into the intermediate width (``inputs``: one, or two for gated FFNs) and the
projection back (``output``). Intermediate neuron j is row j of every input
projection (and its bias) and column j of the output projection, so removing
neurons is slicing those rows and columns; nothing else in the model depends on the
intermediate width.

Where the FFN blocks are comes from the architecture table (``architectures.registry``): per
stack, the input projection(s) and the output projection of a layer, e.g. BERT and
RoBERTa ``intermediate.dense`` -> ``output.dense``, Llama and Qwen2 ``mlp.gate_proj``,
``mlp.up_proj`` -> ``mlp.down_proj`` (down(act(gate(x)) * up(x))), BART ``fc1`` ->
``fc2``, T5 ``DenseReluDense.wi`` (or the gated ``wi_0``, ``wi_1`` of T5 v1.1, mT5,
Flan-T5) -> ``wo``. GPT-2's ``mlp.c_fc`` -> ``mlp.c_proj`` are ``Conv1D`` layers, whose
weight is stored transposed, (in, out): neuron j is column j of ``c_fc`` and row j of
``c_proj``. Labels: ``i`` for block i of a one-stack model, ``encoder.i`` /
``decoder.i`` for an encoder-decoder.

``neuron_masks`` multiplies the output projection's input, the intermediate
activations, by a differentiable vector of ones per site: setting mask[j] = 0 is
exactly removing neuron j, and dL/d mask[j] = sum over tokens of activation x gradient.
"""

from __future__ import annotations

from contextlib import contextmanager

from compose.plugins.shared.architectures.modules import architecture, stacks, submodule


class FFNSite:
    """One feed-forward block. ``inputs``: the projections into the intermediate width; ``output``: the one out."""

    def __init__(self, label: str, module, inputs: list, output, architecture: str = ""):
        self.label = label  # "3" (block 3), or for encoder-decoders "encoder.3" / "decoder.3"
        self.module = module  # the module that may state the width (``intermediate_size``)
        self.inputs, self.output = inputs, output
        self.architecture = architecture  # the registry entry's name

    @property
    def width(self) -> int:
        """Intermediate neurons (the output projection's in_features)."""
        return self.output.in_features

    def widths(self) -> list[int]:
        """Every projection's intermediate-side width (they must all equal ``width``)."""
        return [linear.out_features for linear in self.inputs] + [self.output.in_features]

    def neuron_norms(self):
        """Per neuron: the L2 norm of its input-projection rows and output-projection column (weights only)."""
        total = sum(linear.weight.detach().float().pow(2).sum(1) for linear in self.inputs)
        return (total + self.output.weight.detach().float().pow(2).sum(0)).sqrt()

    def keep(self, neurons: list[int]) -> None:
        """Keep only ``neurons`` (indices into the current ones), in that order; slice the weights."""
        import torch

        index = torch.tensor(list(neurons), dtype=torch.long, device=self.output.weight.device)
        for linear in self.inputs:
            _keep_rows(linear, index)
        _keep_columns(self.output, index)
        self.after_keep(len(neurons))

    def after_keep(self, width: int) -> None:
        """Update the module attribute that states the width, where it has one (Llama's mlp)."""
        if isinstance(getattr(self.module, "intermediate_size", None), int):
            self.module.intermediate_size = width


def _keep_rows(linear, index) -> None:
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data.index_select(0, index).clone())
    linear.out_features = len(index)


def _keep_columns(linear, index) -> None:
    import torch

    linear.weight = torch.nn.Parameter(linear.weight.data.index_select(1, index).clone())
    linear.in_features = len(index)


class _Conv1DView:
    """A GPT-2 ``Conv1D`` seen as an nn.Linear: ``weight`` is (in, out) there, (out, in) here."""

    def __init__(self, conv):
        self.conv = conv

    @property
    def in_features(self) -> int:
        return self.conv.weight.shape[0]

    @property
    def out_features(self) -> int:
        return self.conv.weight.shape[1]

    @property
    def weight(self):
        return self.conv.weight.t()

    @property
    def bias(self):
        return self.conv.bias


class Conv1DSite(FFNSite):
    """GPT-2: ``c_fc`` (weight (hidden, intermediate)) and ``c_proj`` (weight (intermediate, hidden))."""

    def __init__(self, label, module, c_fc, c_proj, architecture: str = ""):
        super().__init__(label, module, [_Conv1DView(c_fc)], _Conv1DView(c_proj), architecture)
        self.c_fc, self.c_proj = c_fc, c_proj

    def keep(self, neurons: list[int]) -> None:
        import torch

        c_fc, c_proj = self.c_fc, self.c_proj
        index = torch.tensor(list(neurons), dtype=torch.long, device=c_fc.weight.device)
        c_fc.weight = torch.nn.Parameter(c_fc.weight.data.index_select(1, index).clone())
        c_fc.bias = torch.nn.Parameter(c_fc.bias.data.index_select(0, index).clone())
        c_fc.nf = len(index)
        c_proj.weight = torch.nn.Parameter(c_proj.weight.data.index_select(0, index).clone())
        c_proj.nx = len(index)

    @property
    def gate_module(self):
        return self.c_proj


# -- finding the sites -----------------------------------------------------------

STAGE = "prune-ffn"


def _projections(layer, names):
    modules = [submodule(layer, name) for name in names]
    return modules if modules and all(m is not None for m in modules) else None


def find_ffn(model, stage: str = STAGE) -> list[FFNSite]:
    """The model's prunable feed-forward blocks, in forward order, where the architecture table puts them."""
    arch = architecture(model, stage)
    sites = []
    for stack in stacks(model, stage):
        spec = stack.spec.ffn
        for index, layer in enumerate(stack.layers):
            label = str(index) if stack.name == "layers" else f"{stack.name}.{index}"
            inputs = _projections(layer, spec.inputs) or _projections(layer, spec.gated_inputs)
            output = submodule(layer, spec.output)
            if inputs is None or output is None:
                raise ValueError(
                    f"{stage}: layer {stack.prefix}.{index} of {type(model).__name__} has no "
                    f"{' / '.join(spec.inputs + (spec.output,))}, where the architecture table puts "
                    "its feed-forward block"
                )
            module = submodule(layer, spec.module) if spec.module else layer
            if arch.conv1d:
                sites.append(Conv1DSite(label, module, inputs[0], output, arch.name))
            else:
                sites.append(FFNSite(label, module, inputs, output, arch.name))
    return sites


def _mask_module(site):
    return getattr(site, "gate_module", site.output)


@contextmanager
def neuron_masks(sites, device):
    """Differentiable per-neuron masks (ones) on the input of each site's output projection; yields them.

    A forward pre-hook on the output projection multiplies its input (the
    intermediate activations, last dimension = neurons) by the site's mask: the
    forward is unchanged, and mask[j] = 0 is exactly removing neuron j.
    """
    import torch

    masks = [torch.ones(site.width, device=device, requires_grad=True) for site in sites]

    def mask_hook(mask):
        def hook(module, args):
            hidden, *rest = args
            return (hidden * mask.to(hidden.dtype), *rest)

        return hook

    handles = [_mask_module(site).register_forward_pre_hook(mask_hook(mask)) for site, mask in zip(sites, masks)]
    try:
        yield masks
    finally:
        for handle in handles:
            handle.remove()


def check_widths(sites, widths: list[int]) -> None:
    """Raise if a site's projections do not all have ``widths[i]`` intermediate neurons."""
    for site, n in zip(sites, widths):
        if set(site.widths()) != {n}:
            raise RuntimeError(
                f"feed-forward {site.label}: expected {n} neurons after pruning, found projection "
                f"widths {site.widths()}"
            )


__all__ = ["FFNSite", "check_widths", "find_ffn", "neuron_masks"]
