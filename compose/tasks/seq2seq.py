"""Text in, text out (encoder-decoders, e.g. T5): generated greedily, scored by exact match."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compose.errors import DataError
from compose.tasks.base import Records, Task


@dataclass(frozen=True)
class Generated:
    """What a seq2seq model generated for a batch (token ids), and the tokenizer to read it."""

    sequences: torch.Tensor
    tokenizer: Any


class Seq2SeqTask(Task):
    """Text in, text out. The target is ``targets[label]`` (a classification dataset as
    text-to-text, e.g. SST-2 -> "positive"/"negative") or the text of ``target_column``.
    Evaluation generates greedily; exact_match compares the stripped text."""

    kind = "seq2seq"

    def _target_source(self) -> str:
        return self.spec["target_column"] or self.spec["label_column"]

    def target(self, row: dict) -> str:
        value = row[self._target_source()]
        if self.spec["targets"] is None:
            return str(value).strip()
        return self.spec["targets"][str(value).strip()]

    def examples(self, split: str, tokenizer) -> list:
        targets = self.spec["targets"]
        if targets:
            limit = self.spec["max_target_length"]
            lengths = {text: len(tokenizer(text)["input_ids"]) for text in targets.values()}
            long = {text: n for text, n in lengths.items() if n > limit}
            if long:
                raise DataError(
                    f"task.max_target_length is {limit} tokens, but the target "
                    + ", ".join(f"'{t}' takes {n}" for t, n in long.items())
                    + f" (with the end-of-sequence token); set task.max_target_length to {max(long.values())} or more"
                )
        return self.rows(split)

    def texts(self, split: str) -> list[str]:
        rows = self.rows(split)
        return [self.spec["source_prefix"] + str(r[self.spec["text_column"]]) for r in rows] + [
            self.target(r) for r in rows
        ]

    def _sources(self, rows: list[dict]) -> list[str]:
        return [self.spec["source_prefix"] + str(r[self.spec["text_column"]]) for r in rows]

    def untruncated_lengths(self, split: str, tokenizer) -> list[int]:
        return [len(ids) for ids in tokenizer(self._sources(self.rows(split)), truncation=False)["input_ids"]]

    def example_lengths(self, split: str, tokenizer) -> list[int]:
        """The source's length (the encoder's input, most of a step's work)."""

        def measure(rows):
            encoded = tokenizer(self._sources(rows), truncation=True, max_length=self.spec["max_length"])
            return map(len, encoded["input_ids"])

        return self._cached_lengths(split, tokenizer, measure)

    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        sources = self._sources(rows)
        batch = dict(
            tokenizer(sources, truncation=True, max_length=self.spec["max_length"], padding=True, return_tensors="pt")
        )
        batch.pop("token_type_ids", None)
        if with_labels:
            targets = tokenizer(
                [self.target(r) for r in rows],
                truncation=True,
                max_length=self.spec["max_target_length"],
                padding=True,
                return_tensors="pt",
            )
            labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
            batch["labels"] = labels
        return batch

    def predict(self, model, inputs: dict, tokenizer) -> Generated:
        sequences = model.generate(
            **inputs,
            max_new_tokens=self.spec["max_target_length"],
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        return Generated(sequences, tokenizer)

    # -- metric ------------------------------------------------------------

    def example_records(self, outputs: Generated, batch, reference=None, keep_reference=0) -> Records:
        """Per example: whether the generated text is the target, and the generated text."""
        tokenizer = outputs.tokenizer
        predicted = [text.strip() for text in tokenizer.batch_decode(outputs.sequences, skip_special_tokens=True)]
        labels = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)
        expected = [text.strip() for text in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        return {"correct": torch.tensor([int(g == t) for g, t in zip(predicted, expected)]), "texts": predicted}

    def metric_from_records(self, records, name=None, index=None) -> torch.Tensor:
        name = name or self.metric_name
        if name != "exact_match":
            raise ValueError(f"unknown metric {name!r} for {self.kind}")
        correct = records["correct"].double()
        if index is not None:
            correct = correct[index]
        return correct.mean(-1) if correct.shape[-1] else torch.tensor(float("nan"))

    def agreement(self, reference, records) -> float | None:
        same = [a == b for a, b in zip(reference["texts"], records["texts"])]
        return sum(same) / len(same) if same else None
