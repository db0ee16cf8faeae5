"""What the tests of both pruning stages share: a batch, the masked reference, running a stage, reloading."""

import torch

from compose.api import load_artifact, save_artifact

#: A GPT-2 of 2 blocks, 4 heads of 8, FFN 4 x 32 = 128: fused attention and Conv1D weights.
TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64}


def built(cls_name, config, tokenizer_dir, kind="causal-lm"):
    """A tiny model of ``cls_name`` from ``config``, with the tokenizer in ``tokenizer_dir``."""
    from tests.conftest import _tiny_model

    return _tiny_model(cls_name, config, tokenizer_dir, kind)


def lowest(scores, n):
    """The positions of the ``n`` lowest scores (ties: the lower position), in order."""
    return sorted(sorted(range(len(scores)), key=lambda j: (scores[j], j))[:n])


def batch_of(ctx):
    """The first dev batch of 8 rows of the context's task."""
    return next(iter(ctx.task.batches("dev", ctx.tokenizer, 8)))


def unknown_architecture():
    """A tiny OPT: a transformers model whose type the architecture table does not know."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        ffn_dim=64,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    return OPTForCausalLM(config)


def prepared(make_context, stage_yaml, model, tokenizer, **context):
    """(context, its first dev batch, a copy of the model before the stage): what every test of a stage starts from."""
    import copy

    ctx = make_context(stage_yaml, model, tokenizer, **context)
    return ctx, batch_of(ctx), copy.deepcopy(model)


def masked_logits(masks_of, sites, model, batch, removed):
    """Logits with the ``removed`` units' masks set to 0: what removing those units must reproduce.

    ``masks_of(sites, device)`` is the stage's mask context (``head_masks``, ``neuron_masks``).
    """
    with torch.no_grad(), masks_of(sites, torch.device("cpu")) as masks:
        for mask, units in zip(masks, removed, strict=True):
            mask[units] = 0.0
        return model(**batch).logits


def run_stage(ctx):
    """Run the stage the context was made for, as the executor does."""
    return ctx.plugin_host.stage(ctx.plugin).run(ctx)


def reloads_identically(model, tokenizer, kind, batch, host, folder):
    """Save ``model`` as an artifact, reload it, and check the reloaded logits equal the model's; the reloaded model."""
    saved = save_artifact(model, tokenizer, folder, kind)
    reloaded, _ = load_artifact(saved, host)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
    return reloaded
