"""The model architectures the built-in stages know: one entry per architecture, in one table.

Every built-in stage that reaches inside a model (``distill``, ``prune-heads``,
``prune-ffn``, ``gptq``, ``parallel``) reads where things are from here, and
validation reads from here what each stage can do with each architecture. Adding an
architecture is one ``Architecture`` entry (and its tests: tests/plugins/shared/architectures/test_architectures.py
builds a tiny model of every entry and checks every path declared here).

This module is plain data: it imports neither torch nor transformers, so validation
can use it cheaply. ``architectures.modules`` resolves the paths on a real model.

Paths are module names as ``nn.Module.get_submodule`` takes them:

- a stack's ``path`` is relative to ``model.base_model`` (``bert``, ``model``,
  ``transformer``..., or the model itself for T5) and names an ``nn.ModuleList``;
- attention, FFN and tensor-parallel paths are relative to one layer of that list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: The stages and training settings whose support differs per architecture (the rows of docs/stages.md's table).
STAGES = (
    "train",
    "distill",
    "prune-heads",
    "prune-ffn",
    "prune-vocab",
    "qad",
    "gptq",
    "export",
    "amp",
    "checkpointing",
    "parallel",
)

#: Strategies of the `parallel` setting; tp and hybrid need the stack's ``tp_plan``.
PARALLEL_STRATEGIES = ("ddp", "fsdp", "tp", "hybrid")


@dataclass(frozen=True)
class Attention:
    """One attention block of a layer.

    kind:   how the module stores its head counts, which decides how heads are removed:
            ``bert`` (num_attention_heads, attention_head_size), ``projections``
            (separate q/k/v/o linears and ``head_dim``; grouped key/value heads allowed),
            ``fused`` (GPT-2: one Conv1D holds query | key | value), ``t5`` (T5Attention,
            with its shared relative position bias).
    module: the module holding the head counts.
    query, key, value, output: the projections (fused: query == key == value).
    label:  "" for a layer's only attention, else "self" / "cross" (site labels: ``decoder.3.cross``).
    """

    kind: str
    module: str
    query: str
    key: str
    value: str
    output: str
    label: str = ""

    @property
    def cross(self) -> bool:
        return self.label == "cross"


@dataclass(frozen=True)
class FFN:
    """The feed-forward block of a layer: projections into the intermediate width, one back out.

    inputs:       up (and gate) projections; ``gated_inputs`` is the alternative a config may
                  choose instead (T5 v1.1 / mT5: ``wi_0``, ``wi_1`` in place of ``wi``).
    module:       the module that may state the width (``intermediate_size``), "" for the layer.
    """

    inputs: tuple[str, ...]
    output: str
    module: str = ""
    gated_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stack:
    """One list of transformer layers: ``layers`` (encoders, decoders), or ``encoder`` / ``decoder``."""

    name: str
    path: str
    attention: tuple[Attention, ...]
    ffn: FFN
    #: Tensor-parallel plan of one layer (module -> "colwise" / "rowwise"); None: tp is refused.
    tp_plan: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Architecture:
    """Everything the built-in stages need to know about one architecture.

    config_keys: role -> the config keys holding it (all of them are written together;
        the first present one is read). Roles: layers, decoder_layers, hidden, heads,
        kv_heads, head_dim, intermediate. A role an architecture lacks is absent.
    config_defaults: role -> (other role, factor) when the config may leave it out
        (GPT-2's n_inner: 4 x n_embd; T5's num_decoder_layers: num_layers).
    conv1d: the layers are transformers ``Conv1D`` (weight stored (in, out)), not nn.Linear.
    refuses: stage (or ``parallel:tp`` / ``parallel:hybrid``) -> why it cannot run and what
        to do instead; validation rejects the recipe with that text.
    """

    name: str
    family: str
    stacks: tuple[Stack, ...]
    config_keys: Mapping[str, tuple[str, ...]]
    model_types: tuple[str, ...] = ()
    config_defaults: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    conv1d: bool = False
    refuses: Mapping[str, str] = field(default_factory=dict)

    @property
    def types(self) -> tuple[str, ...]:
        return (self.name, *self.model_types)

    def refusal(self, stage: str) -> str | None:
        return self.refuses.get(stage)

    def parallel_strategies(self) -> tuple[str, ...]:
        return tuple(s for s in PARALLEL_STRATEGIES if f"parallel:{s}" not in self.refuses)

    def config_value(self, config: Mapping, role: str):
        """The value of ``role`` in a config dict (an int), or None where the config does not say."""
        for key in self.config_keys.get(role, ()):
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        if role in self.config_defaults:
            other, factor = self.config_defaults[role]
            value = self.config_value(config, other)
            return None if value is None else value * factor
        return None

    def layer_counts(self, config: Mapping) -> dict[str, int] | None:
        """{stack name: layers} from a config dict, or None where it does not say."""
        counts = {}
        for stack in self.stacks:
            n = self.config_value(config, "decoder_layers" if stack.name == "decoder" else "layers")
            if n is None:
                return None
            counts[stack.name] = n
        return counts


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------

_BERT_LAYER = Stack(
    name="layers",
    path="encoder.layer",
    attention=(
        Attention(
            "bert",
            "attention.self",
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ),
    ),
    ffn=FFN(inputs=("intermediate.dense",), output="output.dense"),
    tp_plan={
        "attention.self.query": "colwise",
        "attention.self.key": "colwise",
        "attention.self.value": "colwise",
        "attention.output.dense": "rowwise",
        "intermediate.dense": "colwise",
        "output.dense": "rowwise",
    },
)
_BERT_KEYS = {
    "layers": ("num_hidden_layers",),
    "hidden": ("hidden_size",),
    "heads": ("num_attention_heads",),
    "intermediate": ("intermediate_size",),
}

_LLAMA_LAYER = Stack(
    name="layers",
    path="layers",
    attention=(
        Attention(
            "projections", "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"
        ),
    ),
    ffn=FFN(inputs=("mlp.gate_proj", "mlp.up_proj"), output="mlp.down_proj", module="mlp"),
    tp_plan={
        "self_attn.q_proj": "colwise",
        "self_attn.k_proj": "colwise",
        "self_attn.v_proj": "colwise",
        "self_attn.o_proj": "rowwise",
        "mlp.gate_proj": "colwise",
        "mlp.up_proj": "colwise",
        "mlp.down_proj": "rowwise",
    },
)
_LLAMA_KEYS = {
    "layers": ("num_hidden_layers",),
    "hidden": ("hidden_size",),
    "heads": ("num_attention_heads",),
    "kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "intermediate": ("intermediate_size",),
}

_T5_TP = (
    "T5 attention adds a relative position bias computed for every head, so a layer holding part of "
    "the heads cannot run unchanged; use ddp or fsdp"
)
_BART_TP = (
    "tensor parallelism has no plan for BART's encoder and decoder layers yet (self- and cross-attention); "
    "use ddp or fsdp"
)
_GPT2_TP = (
    "GPT-2's layers are transformers Conv1D, which torch's tensor parallelism cannot split (it splits "
    "nn.Linear), and c_attn fuses query, key and value; use ddp or fsdp"
)
_NO_EXPORT = (
    "export does not support encoder-decoder models yet: remove this stage; the last stage's model folder is the result"
)


def _t5_attention(block_layer: int, name: str, label: str) -> Attention:
    module = f"layer.{block_layer}.{name}"
    return Attention("t5", module, f"{module}.q", f"{module}.k", f"{module}.v", f"{module}.o", label)


def _t5_ffn(block_layer: int) -> FFN:
    module = f"layer.{block_layer}.DenseReluDense"
    return FFN(
        inputs=(f"{module}.wi",),
        output=f"{module}.wo",
        module=module,
        gated_inputs=(f"{module}.wi_0", f"{module}.wi_1"),
    )


def _bart_attention(name: str, label: str) -> Attention:
    return Attention(
        "projections", name, f"{name}.q_proj", f"{name}.k_proj", f"{name}.v_proj", f"{name}.out_proj", label
    )


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(name="bert", family="encoder", stacks=(_BERT_LAYER,), config_keys=_BERT_KEYS),
    Architecture(name="roberta", family="encoder", stacks=(_BERT_LAYER,), config_keys=_BERT_KEYS),
    Architecture(
        name="gpt2",
        family="decoder",
        stacks=(
            Stack(
                name="layers",
                path="h",
                attention=(Attention("fused", "attn", "attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj"),),
                ffn=FFN(inputs=("mlp.c_fc",), output="mlp.c_proj", module="mlp"),
            ),
        ),
        config_keys={"layers": ("n_layer",), "hidden": ("n_embd",), "heads": ("n_head",), "intermediate": ("n_inner",)},
        config_defaults={"intermediate": ("hidden", 4)},
        conv1d=True,
        refuses={"parallel:tp": _GPT2_TP, "parallel:hybrid": _GPT2_TP},
    ),
    Architecture(name="llama", family="decoder", stacks=(_LLAMA_LAYER,), config_keys=_LLAMA_KEYS),
    Architecture(name="qwen2", family="decoder", stacks=(_LLAMA_LAYER,), config_keys=_LLAMA_KEYS),
    Architecture(
        name="t5",
        family="encoder-decoder",
        model_types=("mt5",),
        stacks=(
            Stack(
                name="encoder", path="encoder.block", attention=(_t5_attention(0, "SelfAttention", ""),), ffn=_t5_ffn(1)
            ),
            Stack(
                name="decoder",
                path="decoder.block",
                attention=(_t5_attention(0, "SelfAttention", "self"), _t5_attention(1, "EncDecAttention", "cross")),
                ffn=_t5_ffn(2),
            ),
        ),
        config_keys={
            "layers": ("num_layers",),
            "decoder_layers": ("num_decoder_layers",),
            "hidden": ("d_model",),
            "heads": ("num_heads",),
            "head_dim": ("d_kv",),
            "intermediate": ("d_ff",),
        },
        config_defaults={"decoder_layers": ("layers", 1)},
        refuses={"export": _NO_EXPORT, "parallel:tp": _T5_TP, "parallel:hybrid": _T5_TP},
    ),
    Architecture(
        name="bart",
        family="encoder-decoder",
        stacks=(
            Stack(
                name="encoder",
                path="encoder.layers",
                attention=(_bart_attention("self_attn", ""),),
                ffn=FFN(inputs=("fc1",), output="fc2"),
            ),
            Stack(
                name="decoder",
                path="decoder.layers",
                attention=(_bart_attention("self_attn", "self"), _bart_attention("encoder_attn", "cross")),
                ffn=FFN(inputs=("fc1",), output="fc2"),
            ),
        ),
        config_keys={
            "layers": ("encoder_layers",),
            "decoder_layers": ("decoder_layers",),
            "hidden": ("d_model",),
            "heads": ("encoder_attention_heads", "decoder_attention_heads"),
            "intermediate": ("encoder_ffn_dim", "decoder_ffn_dim"),
        },
        refuses={"export": _NO_EXPORT, "parallel:tp": _BART_TP, "parallel:hybrid": _BART_TP},
    ),
)

_BY_TYPE = {model_type: arch for arch in ARCHITECTURES for model_type in arch.types}


def known_types() -> list[str]:
    return [arch.name for arch in ARCHITECTURES]


def lookup(model_type) -> Architecture | None:
    """The entry for a config's ``model_type`` (None if no built-in stage knows it)."""
    return _BY_TYPE.get(model_type)


def unknown_message(stage: str, model_type, fix: str = "remove the stage") -> str:
    return (
        f"{stage} does not know model type '{model_type}' (it knows: {', '.join(known_types())}); use a "
        f"model of a known type, {fix}, or add an entry for '{model_type}' to compose/plugins/shared/architectures/registry.py"
    )


def require(model_type, stage: str) -> Architecture:
    """The entry for ``model_type``, or ValueError saying which types ``stage`` knows."""
    arch = lookup(model_type)
    if arch is None:
        raise ValueError(unknown_message(stage, model_type))
    return arch


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Attention",
    "FFN",
    "PARALLEL_STRATEGIES",
    "STAGES",
    "Stack",
    "known_types",
    "lookup",
    "require",
    "unknown_message",
]
