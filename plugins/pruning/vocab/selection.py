"""Which tokens stay: those the task's data uses, the special ones, and the stated margin."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from compose.plugins.pruning.vocab.tokenizer import character_ids, with_merge_parts

#: Config entries that hold a token id, renumbered with the vocabulary.
TOKEN_ID_SETTINGS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
    "decoder_start_token_id",
)


def count_tokens(task, split: str, tokenizer, batch_size: int, bar=None) -> Counter:
    """How often each token id occurs in ``split`` as the model sees it (padding not counted; a
    seq2seq task's target tokens counted too: the model must still be able to write them)."""
    counts: Counter = Counter()
    for batch in task.batches(split, tokenizer, batch_size):
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        counts.update((ids[mask.bool()] if mask is not None else ids.flatten()).tolist())
        if task.kind == "seq2seq" and "labels" in batch:
            labels = batch["labels"]
            counts.update(labels[labels >= 0].tolist())
        if bar is not None:
            bar.advance()
    return counts


def config_token_ids(config) -> set[int]:
    """The token ids a model config names (padding, start, end...)."""
    found = set()
    for name in TOKEN_ID_SETTINGS:
        value = getattr(config, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        found.update(v for v in values if isinstance(v, int) and v >= 0)
    return found


@dataclass
class Selection:
    """The ids that stay (sorted) and why each group stayed, for the report."""

    kept: list[int]
    by_reason: dict[str, int] = field(default_factory=dict)


def select_tokens(counts: Mapping[int, int], tokenizer, data: dict, config, rows: int, settings) -> Selection:
    """The ids to keep of a vocabulary of ``rows`` embedding rows (``data``: the tokenizer's ``tokenizer_json``).

    Kept: ids used at least ``min_count`` times; every special and added token and every
    id the config names; with ``keep_characters`` every one-character piece; the first
    ``keep_first`` ids; for a BPE tokenizer, the pieces a kept piece's merges need.
    """
    groups = {
        "used": {i for i, n in counts.items() if n >= settings["min_count"]},
        "special": set(tokenizer.all_special_ids)
        | {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        | config_token_ids(config),
        "characters": character_ids(data) if settings["keep_characters"] else set(),
        "first": set(range(settings["keep_first"])),
    }
    kept: set[int] = set()
    by_reason = {}
    for reason, ids in groups.items():
        new = {i for i in ids if 0 <= i < rows} - kept
        by_reason[reason] = len(new)
        kept |= new
    closed = {i for i in with_merge_parts(data, kept) if i < rows}
    by_reason["merge parts"] = len(closed - kept)
    return Selection(sorted(closed), by_reason)
