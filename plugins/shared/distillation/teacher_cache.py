"""The teacher's logits, computed once per example and reused on every later pass.

Distillation without input augmentation shows the frozen teacher (eval mode, no dropout)
the same examples on every pass, so its outputs are the same every pass: running it once
per example instead of once per step is exact. Entries are keyed by the example's own
tokens (its input ids and token types where the attention mask is set, so padding to
different batch lengths gives the same key), hold that example's logits at those
positions, and live in memory on the training device up to a stated budget; examples
past it are recomputed each time (still exact, only slower).

Used where the teacher's logits are all the loss needs: soft targets of an encoder or
decoder. Hidden-state or attention matching needs the teacher's hidden states or
attentions, whose size per example is many times the logits', and encoder-decoders key
on their targets too: there the teacher runs every step (``reason`` says why).
"""

from __future__ import annotations

MEGABYTE = 1024 * 1024


def why_not_cached(settings: dict, family: str | None) -> str | None:
    """None if the teacher's logits can be cached for this stage's settings, else why not
    (``family`` None: whatever the model family)."""
    loss = settings["loss"]
    if not settings["teacher_cache"]["enabled"]:
        return "teacher_cache.enabled is false"
    if loss["soft"]["weight"] <= 0:
        return "the loss has no soft-target term"
    if loss["hidden"]["weight"] > 0 or loss["attention"]["weight"] > 0:
        return "layer matching needs the teacher's hidden states or attentions every step"
    if family == "encoder-decoder":
        return "encoder-decoder teachers are run every step (their outputs depend on the targets too)"
    return None


class TeacherCache:
    """Logits by example, up to ``max_megabytes``; ``hits``/``misses`` count examples."""

    def __init__(self, max_megabytes: float):
        self.max_bytes = int(max_megabytes * MEGABYTE)
        self.rows: dict[bytes, object] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.full = False

    @staticmethod
    def keys(inputs: dict) -> list[bytes]:
        """One key per example; the batch is copied off the device once, not once per example."""
        ids = inputs["input_ids"].cpu().numpy()
        mask = inputs["attention_mask"].cpu().numpy().astype(bool) if "attention_mask" in inputs else None
        types = inputs["token_type_ids"].cpu().numpy() if "token_type_ids" in inputs else None
        keys = []
        for i in range(ids.shape[0]):
            where = mask[i] if mask is not None else slice(None)
            key = ids[i][where].tobytes()
            if types is not None:
                key += b"|" + types[i][where].tobytes()
            keys.append(key)
        return keys

    def lookup(self, keys: list[bytes], inputs: dict):
        """The batch's teacher logits, shaped as the teacher would return them, or None if any example is missing."""
        import torch

        rows = [self.rows.get(key) for key in keys]
        if any(row is None for row in rows):
            return None
        self.hits += len(rows)
        if rows[0].dim() == 1:  # one vector per example (classification)
            return torch.stack(rows)
        mask = inputs.get("attention_mask")
        length = inputs["input_ids"].shape[1]
        logits = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        for i, row in enumerate(rows):  # back at the example's positions; padding stays 0 (masked out)
            if mask is None:
                logits[i] = row
            else:
                logits[i, mask[i].bool()] = row
        return logits

    def store(self, keys: list[bytes], logits, inputs: dict) -> None:
        self.misses += len(keys)
        if self.full:
            return
        mask = inputs.get("attention_mask")
        for i, key in enumerate(keys):
            if key in self.rows:
                continue
            row = logits[i] if logits.dim() == 2 or mask is None else logits[i][mask[i].bool()]
            size = row.numel() * row.element_size()
            if self.bytes + size > self.max_bytes:
                self.full = True
                return
            self.rows[key] = row.detach().clone()
            self.bytes += size

    def summary(self) -> dict:
        return {
            "used": True,
            "examples": len(self.rows),
            "megabytes": round(self.bytes / MEGABYTE, 3),
            "budget_megabytes": round(self.max_bytes / MEGABYTE, 3),
            "budget_reached": self.full,
            "teacher_runs_saved": self.hits,
            "teacher_runs": self.misses,
        }
