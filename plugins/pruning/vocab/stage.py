"""The `prune-vocab` stage: keep only the tokens the task's data uses.

A pretrained model's word table serves every text of its pretraining corpus; a task
uses a small part of it. MiniLM's 30,522 x 384 table is 11.7M of its 22.7M parameters,
and after 4-bit export about 60% of the exported folder's bytes. TextPruner (Yang et
al., 2022) keeps the tokens a corpus uses and cuts the rest; so does this stage:

1. count the token ids of the task's ``split`` as training sees them (``selection``);
2. keep those used ``min_count`` times, every special token and config token id,
   every one-character piece (``keep_characters``) and the first ``keep_first`` ids;
3. write a tokenizer over the kept pieces, renumbered in their old order (``tokenizer``);
4. cut the word table, tables sharing its weight (T5's) and a language-model head
   over the vocabulary (tied or untied) to the kept rows, and renumber the config's
   vocabulary size and token ids (``model``).

On text whose tokens were all kept the pruned model computes exactly what it computed
before. The config describes the new shapes, so saved artifacts reload with no
transform record; the tokenizer is saved with them and with the exported folder.
"""

from __future__ import annotations

import math
import time

from compose import hookimpl
from compose.api import Check, ComposeError, StageContext, StageResult, StageType, count_parameters, load_schema_file
from compose.plugins.pruning.vocab.selection import count_tokens, select_tokens
from compose.plugins.pruning.vocab.tokenizer import UnsupportedTokenizer, pruned_tokenizer, tokenizer_json

STAGE = "prune-vocab"


def _count(ctx: StageContext, split: str, tokenizer, label: str):
    batch_size = ctx.settings["batch_size"]
    total = math.ceil(len(ctx.task.examples(split, tokenizer)) / batch_size)
    with ctx.progress.track(label, total=total) as bar:
        return count_tokens(ctx.task, split, tokenizer, batch_size, bar)


def _refuse_unreadable(data: dict, settings) -> None:
    model = data["model"]
    if model["type"] == "BPE" and not model.get("unk_token") and not settings["keep_characters"]:
        raise ComposeError(
            "prune-vocab: this BPE tokenizer has no unknown token, so with keep_characters: false a piece it drops "
            "would vanish from the text; set keep_characters: true (its byte alphabet then spells any text)"
        )


def run(ctx: StageContext) -> StageResult:
    from compose.plugins.pruning.vocab.model import keep_rows  # torch: not imported to validate a recipe

    settings, model, tokenizer = ctx.settings, ctx.model, ctx.tokenizer
    t0 = time.perf_counter()
    try:
        data = tokenizer_json(tokenizer)
    except UnsupportedTokenizer as exc:
        raise ComposeError(f"prune-vocab: {exc}") from None
    _refuse_unreadable(data, settings)
    if settings["split"] not in ctx.task.splits:
        raise ComposeError(
            f"prune-vocab: split '{settings['split']}' is not in task.data (it has: {', '.join(ctx.task.splits)})"
        )
    rows = model.get_input_embeddings().weight.shape[0]
    counts = _count(ctx, settings["split"], tokenizer, f"counting tokens of {settings['split']}")
    selection = select_tokens(counts, tokenizer, data, model.config, rows, settings)
    new_id = {old: new for new, old in enumerate(selection.kept)}
    evaluation_split = (ctx.recipe.get("evaluate") or {}).get("split", "dev")
    unseen = None
    if evaluation_split in ctx.task.splits and evaluation_split != settings["split"]:
        seen = _count(ctx, evaluation_split, tokenizer, f"tokens of {evaluation_split} kept")
        total = sum(seen.values())
        unseen = sum(n for i, n in seen.items() if i not in new_id) / total if total else 0.0
    parameters_before = count_parameters(model)
    new_tokenizer = pruned_tokenizer(tokenizer, data, selection.kept)
    keep_rows(model, selection.kept)
    for name in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "eos_token_id"):
        old, new = getattr(tokenizer, name, None), getattr(new_tokenizer, name, None)
        if old is not None and new != new_id.get(old):
            raise ComposeError(f"prune-vocab: the pruned tokenizer's {name} is {new}, expected {new_id.get(old)}")
    ctx.log(
        f"kept {len(selection.kept):,} of {rows:,} tokens ("
        + ", ".join(f"{n:,} {reason}" for reason, n in selection.by_reason.items() if n)
        + ")"
        + (f"; {unseen:.2%} of {evaluation_split}'s tokens were dropped (re-spelled or unknown)" if unseen else "")
    )
    details = {
        "vocabulary_before": rows,
        "vocabulary_after": len(selection.kept),
        "kept_by_reason": selection.by_reason,
        "parameters_removed": parameters_before - count_parameters(model),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if unseen is not None:
        details[f"{evaluation_split}_tokens_dropped"] = round(unseen, 6)
    return StageResult(model=model, tokenizer=new_tokenizer, details=details)


def check(settings, plan):
    if plan.task_kind == "causal-lm":
        yield Check(
            "prune-vocab changes which tokens a text is split into, so a causal-lm task's perplexity after it "
            "would count other tokens than the baseline's and retained would mean nothing; remove the stage, or "
            "use it on a classification or seq2seq task",
            "error",
        )


def describe(settings) -> str:
    margin = []
    if settings["keep_characters"]:
        margin.append("every one-character piece")
    if settings["keep_first"]:
        margin.append(f"the first {settings['keep_first']:,} ids")
    used = "used" if settings["min_count"] == 1 else f"used at least {settings['min_count']} times"
    return (
        f"keep the tokens {settings['split']} {used}, the special tokens"
        + (f" and {' and '.join(margin)}" if margin else "")
        + "; cut the word table (and a vocabulary head) to them and write a tokenizer over them"
    )


@hookimpl
def compose_register_stages(register):
    register(
        StageType(
            name=STAGE,
            run=run,
            schema=load_schema_file("compose.plugins.pruning.vocab", "prune-vocab.schema.json"),
            description="Keep only the tokens the task's data uses (plus special tokens and a margin): a smaller word "
            "table and a tokenizer over the same pieces (TextPruner's vocabulary pruning).",
            needs={"quantized": False},
            leaves={"vocab_pruned": True},
            compresses=True,
            check=check,
            describe=describe,
        )
    )
