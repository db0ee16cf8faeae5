"""A tokenizer over fewer pieces: the fast tokenizer's ``tokenizer.json`` rewritten.

TextPruner (Yang et al., 2022, "TextPruner: A Model Pruning Toolkit for Pre-Trained
Language Models") prunes a vocabulary by keeping the pieces a corpus uses and writing
a vocabulary file with only those; this does the same on the ``tokenizers`` library's
serialised form, which every model family here uses:

- WordPiece (BERT): the kept pieces, renumbered. A word is still split greedily into
  its longest kept prefix, then the longest kept continuation, and so on, so a word
  whose pieces were all kept splits exactly as before; a word that cannot be split
  into kept pieces becomes the unknown token.
- BPE (GPT-2, Llama-style, byte-level): the kept pieces, plus the pieces their merges
  are built from (so a kept piece can still be formed), and the merges among them.
- Unigram (T5, SentencePiece): the kept pieces with their scores; ``unk_id`` renumbered.

New ids follow the old order: old id ``kept[i]`` becomes ``i``. Every id the JSON holds
elsewhere (added tokens, the post-processor's special tokens, the padding id) is
renumbered the same way.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Files a tokenizer may be rebuilt from besides tokenizer.json. Removed, so that the
#: rewritten tokenizer.json is the only vocabulary the saved tokenizer has.
SLOW_VOCABULARY_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


class UnsupportedTokenizer(ValueError):
    """The tokenizer has no ``tokenizer.json`` form this module can rewrite."""


def tokenizer_json(tokenizer) -> dict:
    """The fast tokenizer's serialised form (raises UnsupportedTokenizer for a slow one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizer(
            f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; prune-vocab rewrites "
            "tokenizer.json. Load the model's fast tokenizer (a folder with tokenizer.json)"
        )
    data = json.loads(backend.to_str())
    kind = data["model"]["type"]
    if kind not in ("WordPiece", "BPE", "Unigram"):
        raise UnsupportedTokenizer(f"a {kind} tokenizer model: prune-vocab rewrites WordPiece, BPE and Unigram ones")
    return data


def model_pieces(data: dict) -> dict[str, int]:
    """piece -> id of the tokenizer model's own vocabulary (added tokens not included)."""
    model = data["model"]
    if model["type"] == "Unigram":
        return {piece: i for i, (piece, _score) in enumerate(model["vocab"])}
    return dict(model["vocab"])


def character_ids(data: dict) -> set[int]:
    """Ids of the pieces one character long (with the model's continuation prefix or word marker):
    from them every word can still be spelled, so an unseen word is split, not lost."""
    model = data["model"]
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    marker = "\u2581"  # SentencePiece's word-start mark

    def bare(piece: str) -> str:
        if prefix and piece.startswith(prefix) and piece != prefix:
            piece = piece[len(prefix) :]
        if suffix and piece.endswith(suffix) and piece != suffix:
            piece = piece[: -len(suffix)]
        if model["type"] == "Unigram" and piece.startswith(marker) and piece != marker:
            piece = piece[1:]
        return piece

    return {i for piece, i in model_pieces(data).items() if len(bare(piece)) <= 1}


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _merged(model: dict, left: str, right: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    if prefix and right.startswith(prefix):
        right = right[len(prefix) :]
    return left + right


def with_merge_parts(data: dict, keep: Iterable[int]) -> set[int]:
    """``keep`` plus, for a BPE model, every piece a kept piece's merges are built from."""
    keep = set(keep)
    model = data["model"]
    if model["type"] != "BPE":
        return keep
    pieces = model_pieces(data)
    built_from: dict[str, tuple[str, str]] = {}
    for left, right in _merge_pairs(model):
        built_from.setdefault(_merged(model, left, right), (left, right))
    names = {i: piece for piece, i in pieces.items()}
    todo = [names[i] for i in keep if i in names]
    while todo:
        for part in built_from.get(todo.pop(), ()):
            if part in pieces and pieces[part] not in keep:
                keep.add(pieces[part])
                todo.append(part)
    return keep


def _renumber(node, new_id: dict[int, int]):
    """Every id the post-processor (and padding) hold, renumbered (in place)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("ids",) and isinstance(value, list):
                node[key] = [new_id[i] for i in value]
            elif key in ("sep", "cls", "bos", "eos") and isinstance(value, list) and len(value) == 2:
                node[key] = [value[0], new_id[value[1]]]
            elif key == "pad_id" and isinstance(value, int):
                node[key] = new_id[value]
            else:
                _renumber(value, new_id)
    elif isinstance(node, list):
        for item in node:
            _renumber(item, new_id)


def pruned_json(data: dict, kept: Sequence[int]) -> dict:
    """``data`` with only the ids in ``kept`` (sorted), renumbered 0..len(kept)-1."""
    new_id = {old: new for new, old in enumerate(kept)}
    data = json.loads(json.dumps(data))  # a copy
    model = data["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in new_id]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        model["vocab"] = {piece: new_id[i] for piece, i in model["vocab"].items() if i in new_id}
    if model["type"] == "BPE":
        kept_pieces = set(model["vocab"])
        pairs = [
            (left, right)
            for left, right in _merge_pairs(model)
            if left in kept_pieces and right in kept_pieces and _merged(model, left, right) in kept_pieces
        ]
        as_strings = bool(model.get("merges")) and isinstance(model["merges"][0], str)
        model["merges"] = [f"{left} {right}" if as_strings else [left, right] for left, right in pairs]
    for token in data.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]
    _renumber(data.get("post_processor"), new_id)
    _renumber(data.get("padding"), new_id)
    return data


def pruned_tokenizer(tokenizer, data: dict, kept: Sequence[int]):
    """A tokenizer of the same class and settings whose vocabulary is ``kept`` (sorted old ids), renumbered
    (``data``: its ``tokenizer_json``)."""
    from transformers import AutoTokenizer

    data = pruned_json(data, kept)
    new_id = {old: new for new, old in enumerate(kept)}
    with tempfile.TemporaryDirectory(prefix="prune-vocab-") as folder:
        tokenizer.save_pretrained(folder)
        for name in SLOW_VOCABULARY_FILES:
            (Path(folder) / name).unlink(missing_ok=True)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        config_path = Path(folder) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {
                str(new_id[int(i)]): token for i, token in config["added_tokens_decoder"].items()
            }
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return AutoTokenizer.from_pretrained(folder)
