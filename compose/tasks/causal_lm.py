"""Next-token prediction over running text (decoders, e.g. GPT-2, Llama)."""

from __future__ import annotations

import torch

from compose.errors import DataError
from compose.tasks.base import Records, Task


class CausalLMTask(Task):
    """Next-token prediction over running text, in blocks of ``block_size`` tokens.

    Each non-blank row is tokenized and followed by the tokenizer's end-of-text
    token; the stream is cut into blocks (the last, partial block is dropped, so
    every example has the same length). Metrics: perplexity (exp of the mean
    next-token loss over every predicted token) and next_token_accuracy.

    Records per block: its summed loss, predicted tokens and correct predictions, and the
    predicted token at every position; the baseline also keeps its most likely tokens
    and their log-probabilities, against which a later model's KL is measured.
    """

    kind = "causal-lm"
    unit = "block"

    def __init__(self, spec, seed):
        super().__init__(spec, seed)
        self._blocks: dict[tuple, list] = {}

    def examples(self, split: str, tokenizer) -> list:
        key = (split, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
        if key not in self._blocks:
            size = self.spec["block_size"]
            eos = tokenizer.eos_token_id
            stream: list[int] = []
            lines = [t for t in self.texts(split) if t.strip()]
            for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []:
                stream.extend(ids)
                if eos is not None:
                    stream.append(eos)
            blocks = [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]
            if not blocks:
                raise DataError(
                    f"split '{split}' has {len(stream)} tokens, fewer than one block of task.block_size="
                    f"{size}; lower task.block_size or give more text"
                )
            self._blocks[key] = blocks
        return self._blocks[key]

    def collate(self, rows: list, tokenizer, with_labels: bool = True) -> dict:
        input_ids = torch.tensor(rows, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if with_labels:
            batch["labels"] = input_ids.clone()
        return batch

    # -- metric ------------------------------------------------------------

    def example_records(self, outputs, batch, reference=None, keep_reference=0) -> Records:
        logits = (outputs.logits if hasattr(outputs, "logits") else outputs)[:, :-1].float()
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        log_probs = torch.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        predicted = log_probs.argmax(-1)
        records = {
            "nll": (nll * keep).sum(1).double().cpu(),
            "tokens": keep.sum(1).cpu(),
            "correct": ((predicted == targets) & keep).sum(1).cpu(),
            "predicted": predicted.masked_fill(~keep, -1).int().cpu(),
        }
        if keep_reference:
            top = log_probs.topk(min(keep_reference, log_probs.shape[-1]), dim=-1)
            records["top_ids"] = top.indices.int().cpu()
            records["top_log_probs"] = top.values.cpu()
        if reference is not None and "top_ids" in reference:
            per_token = _coarse_kl(
                reference["top_log_probs"].to(log_probs.device),
                reference["top_ids"].to(log_probs.device).long(),
                log_probs,
            )
            records["kl_sum"] = (per_token * keep).sum(1).double().cpu()
        return records

    def metric_from_records(self, records, name=None, index=None) -> torch.Tensor:
        name = name or self.metric_name
        if name == "perplexity":
            top, bottom = records["nll"], records["tokens"]
        elif name == "next_token_accuracy":
            top, bottom = records["correct"], records["tokens"]
        else:
            raise ValueError(f"unknown metric {name!r} for {self.kind}")
        if index is not None:
            top, bottom = top[index], bottom[index]
        ratio = top.double().sum(-1) / bottom.double().sum(-1)  # nan when no token was predicted
        return torch.exp(ratio.clamp(max=700.0)) if name == "perplexity" else ratio

    def agreement(self, reference, records) -> float | None:
        kept = reference["predicted"] >= 0
        return (reference["predicted"] == records["predicted"])[kept].double().mean().item()

    def kl(self, reference, records) -> float | None:
        if "kl_sum" not in records:
            return None  # evaluated before the baseline: there was nothing to compare against
        return (records["kl_sum"].sum() / records["tokens"].sum()).item()


def _coarse_kl(reference_top: torch.Tensor, top_ids: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(baseline || model) per position, over the baseline's top-k tokens plus one bucket
    holding every other token: exact when the top-k hold all of the baseline's probability,
    and never above the full KL (merging outcomes cannot increase a divergence)."""
    model_top = log_probs.gather(-1, top_ids)
    reference_top = reference_top.double()
    model_top = model_top.double()
    p = reference_top.exp()
    kl = (p * (reference_top - model_top)).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp(min=0)
    log_p_rest = torch.log(p_rest.clamp(min=1e-300))
    log_q_rest = torch.log((-torch.expm1(torch.logsumexp(model_top, -1).clamp(max=-1e-12))).clamp(min=1e-300))
    return kl + torch.where(p_rest > 1e-12, p_rest * (log_p_rest - log_q_rest), torch.zeros_like(kl))
