"""Where a model keeps its feed-forward (FFN) neurons, and how to remove some of them: the `prune-ffn` stage's surgery.

An *FFN site* is the feed-forward block of one transformer block: the projection(s)
into the intermediate width (``inputs``: one, or two for gated FFNs) and the
projection back (``output``). Intermediate neuron j is row j of every input
projection (and its bias) and column j of the output projection, so removing
neurons is slicing those rows and columns; nothing else in the model depends on the
intermediate width.

Architectures (``find_ffn`` tries them in this order):

- ``bert``: BERT-class encoders (BERT, RoBERTa, ELECTRA, MiniLM...):
  ``encoder.layer[i].intermediate.dense`` (in) and ``encoder.layer[i].output.dense`` (out).
- ``llama``: Llama-style decoders (Llama, Mistral, Qwen2/3...): any module with
  ``gate_proj``, ``up_proj`` and ``down_proj`` (``nn.Linear``): down(act(gate(x)) * up(x)).
- ``gpt2``: GPT-2's ``transformer.h[i].mlp``: ``c_fc`` and ``c_proj`` are ``Conv1D``
  layers, whose weight is stored transposed, (in, out): neuron j is column j of
  ``c_fc`` and row j of ``c_proj``.
- ``t5``: T5 / mT5: the last layer of every encoder and decoder block
  (``T5LayerFF.DenseReluDense``): ``wi`` -> ``wo``, or the gated variant (T5 v1.1,
  mT5, Flan-T5) ``wi_0``, ``wi_1`` -> ``wo``. Labelled ``encoder.i`` and ``decoder.i``.

``neuron_gates`` multiplies the output projection's input, the intermediate
activations, by a differentiable vector of ones per site: setting gate[j] = 0 is
exactly removing neuron j, and dL/d gate[j] = sum over tokens of activation x gradient.
"""

from __future__ import annotations

from contextlib import contextmanager


class FFNSite:
    """One feed-forward block. ``inputs``: the projections into the intermediate width; ``output``: the one out."""

    architecture = ""

    def __init__(self, label: str, module, inputs: list, output):
        self.label = label  # "3" (block 3), or for T5 "encoder.3" / "decoder.3"
        self.module = module
        self.inputs, self.output = inputs, output

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
        """Update module attributes that state the width (none by default)."""


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


class BertSite(FFNSite):
    architecture = "bert"


class LlamaSite(FFNSite):
    architecture = "llama"

    def after_keep(self, width: int) -> None:
        if isinstance(getattr(self.module, "intermediate_size", None), int):
            self.module.intermediate_size = width


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


class GPT2Site(FFNSite):
    """GPT-2: ``c_fc`` (weight (hidden, intermediate)) and ``c_proj`` (weight (intermediate, hidden))."""

    architecture = "gpt2"

    def __init__(self, label, module):
        super().__init__(label, module, [_Conv1DView(module.c_fc)], _Conv1DView(module.c_proj))

    def keep(self, neurons: list[int]) -> None:
        import torch

        c_fc, c_proj = self.module.c_fc, self.module.c_proj
        index = torch.tensor(list(neurons), dtype=torch.long, device=c_fc.weight.device)
        c_fc.weight = torch.nn.Parameter(c_fc.weight.data.index_select(1, index).clone())
        c_fc.bias = torch.nn.Parameter(c_fc.bias.data.index_select(0, index).clone())
        c_fc.nf = len(index)
        c_proj.weight = torch.nn.Parameter(c_proj.weight.data.index_select(0, index).clone())
        c_proj.nx = len(index)

    @property
    def gate_module(self):
        return self.module.c_proj


class T5Site(FFNSite):
    architecture = "t5"


# -- finding the sites -----------------------------------------------------------


def _is_linear(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _bert_sites(model) -> list:
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    sites = []
    for index, layer in enumerate(layers or ()):
        up = getattr(getattr(layer, "intermediate", None), "dense", None)
        down = getattr(getattr(layer, "output", None), "dense", None)
        if not (_is_linear(up) and _is_linear(down)):
            return []
        sites.append(BertSite(str(index), layer, [up], down))
    return sites


def _llama_sites(model) -> list:
    sites = []
    for module in model.modules():
        projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
        if all(_is_linear(p) for p in projections):
            sites.append(LlamaSite(str(len(sites)), module, projections[:2], projections[2]))
    return sites


def _gpt2_sites(model) -> list:
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    sites = []
    for index, block in enumerate(blocks or ()):
        mlp = getattr(block, "mlp", None)
        c_fc, c_proj = getattr(mlp, "c_fc", None), getattr(mlp, "c_proj", None)
        if type(c_fc).__name__ != "Conv1D" or type(c_proj).__name__ != "Conv1D":
            return []
        sites.append(GPT2Site(str(index), mlp))
    return sites


def _t5_sites(model) -> list:
    if getattr(getattr(model, "config", None), "model_type", None) not in ("t5", "mt5"):
        return []
    sites = []
    for stack in ("encoder", "decoder"):
        for index, block in enumerate(getattr(getattr(model, stack, None), "block", None) or ()):
            layers = getattr(block, "layer", ())
            dense = getattr(layers[-1], "DenseReluDense", None) if len(layers) else None
            names = ("wi_0", "wi_1") if hasattr(dense, "wi_0") else ("wi",)
            inputs = [getattr(dense, name, None) for name in names]
            output = getattr(dense, "wo", None)
            if not (all(_is_linear(p) for p in inputs) and _is_linear(output)):
                return []
            sites.append(T5Site(f"{stack}.{index}", dense, inputs, output))
    return sites


SUPPORTED = ("BERT-class encoders (intermediate.dense/output.dense), Llama-style decoders "
             "(gate_proj/up_proj/down_proj), GPT-2 (mlp.c_fc/c_proj), and T5/mT5 (DenseReluDense wi or wi_0/wi_1, wo)")  # fmt: skip


def find_ffn(model) -> list[FFNSite]:
    """The model's prunable feed-forward blocks, in forward order (the one place that knows the layouts)."""
    for finder in (_bert_sites, _llama_sites, _gpt2_sites, _t5_sites):
        sites = finder(model)
        if sites:
            return sites
    raise ValueError(f"prune-ffn cannot find feed-forward layers it knows in {type(model).__name__}; "
                     f"it supports {SUPPORTED}")  # fmt: skip


def _gate_module(site):
    return getattr(site, "gate_module", site.output)


@contextmanager
def neuron_gates(sites, device):
    """Differentiable per-neuron gates (ones) on the input of each site's output projection; yields them.

    A forward pre-hook on the output projection multiplies its input (the
    intermediate activations, last dimension = neurons) by the site's gate: the
    forward is unchanged, and gate[j] = 0 is exactly removing neuron j.
    """
    import torch

    gates = [torch.ones(site.width, device=device, requires_grad=True) for site in sites]

    def gate_hook(gate):
        def hook(module, args):
            hidden, *rest = args
            return (hidden * gate.to(hidden.dtype), *rest)

        return hook

    handles = [_gate_module(site).register_forward_pre_hook(gate_hook(gate)) for site, gate in zip(sites, gates)]
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def check_widths(sites, widths: list[int]) -> None:
    """Raise if a site's projections do not all have ``widths[i]`` intermediate neurons."""
    for site, n in zip(sites, widths):
        if set(site.widths()) != {n}:
            raise RuntimeError(f"feed-forward {site.label}: expected {n} neurons after pruning, found projection "
                               f"widths {site.widths()}")  # fmt: skip


__all__ = ["FFNSite", "SUPPORTED", "check_widths", "find_ffn", "neuron_gates"]
