"""Single-text or text-pair classification: one label per example (encoders, e.g. BERT)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from compose.evaluation import metrics
from compose.tasks.base import Records, Task


def logits_of(outputs) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs


class SequenceClassificationTask(Task):
    """Single-text or text-pair classification over the classes in ``task.labels``.

    ``task.labels`` is a list of the label values as the data holds them (``[0, 1]``) or
    a mapping from each value to its class name (``{0: negative, 1: positive}``); class
    i is the i-th entry. A data row may hold a class's value or its name.

    Records per example: the label, the predicted class and the log-probabilities of
    every class (so agreement with, and KL from, the baseline need no second pass).
    """

    kind = "sequence-classification"

    @property
    def labels(self) -> list:
        """The label values as the data holds them, in class order."""
        return list(self.spec["labels"])

    @property
    def label_names(self) -> list[str]:
        """The class names a served model reports (config.id2label): task.labels' names, else its values as text."""
        labels = self.spec["labels"]
        if isinstance(labels, Mapping):
            return [str(name) for name in labels.values()]
        return [str(label) for label in labels]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _label_index(self) -> dict:
        # Files give labels as text ("1"); recipes may write them as integers (1). A row may
        # also hold the class name (recipe validation keeps names and values from colliding).
        index = {str(label): i for i, label in enumerate(self.labels)}
        for i, name in enumerate(self.label_names):
            index.setdefault(name, i)
        return index

    def _texts(self, rows: list[dict]) -> tuple[list[str], list[str] | None]:
        """(each row's text, each row's second text or None)."""
        pair_column = self.spec.get("text_pair_column")
        texts = [str(r[self.spec["text_column"]]) for r in rows]
        return texts, ([str(r[pair_column]) for r in rows] if pair_column else None)

    def _encode(self, rows: list[dict], tokenizer, **options):
        return tokenizer(*self._texts(rows), truncation=True, max_length=self.spec["max_length"], **options)

    def label_ids(self, split: str) -> list[int]:
        """Each row's class index (task.labels' order)."""
        index = self._label_index()
        return [index[str(r[self.spec["label_column"]]).strip()] for r in self.rows(split)]

    def untruncated_lengths(self, split: str, tokenizer) -> list[int]:
        return [len(ids) for ids in tokenizer(*self._texts(self.rows(split)), truncation=False)["input_ids"]]

    def example_lengths(self, split: str, tokenizer) -> list[int]:
        return self._cached_lengths(split, tokenizer, lambda rows: map(len, self._encode(rows, tokenizer)["input_ids"]))

    def collate(self, rows: list[dict], tokenizer, with_labels: bool = True) -> dict:
        batch = dict(self._encode(rows, tokenizer, padding=True, return_tensors="pt"))
        if with_labels:
            index = self._label_index()
            batch["labels"] = torch.tensor([index[str(r[self.spec["label_column"]]).strip()] for r in rows])
        return batch

    # -- metric ------------------------------------------------------------

    def example_records(self, outputs, batch, reference=None, keep_reference=False) -> Records:
        log_probs = torch.log_softmax(torch.as_tensor(logits_of(outputs)).float(), dim=-1).cpu()
        return {"labels": batch["labels"].cpu(), "predictions": log_probs.argmax(-1), "log_probs": log_probs}

    def metric_from_records(self, records, name=None, index=None) -> torch.Tensor:
        name = name or self.metric_name
        if name not in metrics.CLASSIFICATION:
            raise ValueError(f"unknown metric {name!r} for {self.kind}")
        predictions, labels = records["predictions"], records["labels"]
        if not len(labels):
            return torch.tensor(float("nan"))
        if index is not None:
            predictions, labels = predictions[index], labels[index]
        return metrics.CLASSIFICATION[name](predictions, labels, self.num_labels)

    def agreement(self, reference, records) -> float | None:
        return (reference["predictions"] == records["predictions"]).double().mean().item()

    def kl(self, reference, records) -> float | None:
        p_log = reference["log_probs"].double()
        return (p_log.exp() * (p_log - records["log_probs"].double())).sum(-1).mean().item()
