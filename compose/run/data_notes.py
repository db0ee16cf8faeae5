"""What a run says about its data and its baseline without failing: max_length (and what ``auto`` chose),
the share of each split it truncates, and a baseline close to a constant prediction. Each goes into the
report and, where it matters, to the terminal as a warning."""

from __future__ import annotations

from compose.run.modeling import load_tokenizer


def length_facts(task, tokenizer) -> tuple[dict, list[str]]:
    """({max_length in force, as written, each split's lengths}, the truncation warnings), with max_length
    resolved (``auto``) on ``task`` with ``tokenizer``; causal-lm cuts no rows (token blocks)."""
    from compose.tasks.lengths import truncation_warning

    if task.kind == "causal-lm":
        return {"max_length": None, "lengths": {}}, []
    written = task.spec.get("max_length")
    chosen = task.resolve_max_length(tokenizer)
    lengths = task.length_report(tokenizer)
    warnings = [found for split, stats in lengths.items() if (found := truncation_warning(split, stats))]
    return {"max_length": chosen, "max_length_written": written, "lengths": lengths}, warnings


def data_lengths(model_spec, task, progress) -> dict:
    """``length_facts`` with the recipe's own tokenizer, said where max_length cuts more than a little."""
    if task.kind == "causal-lm":
        return length_facts(task, None)[0]
    facts, warnings = length_facts(task, load_tokenizer(model_spec, task))
    if facts["max_length_written"] == "auto":
        progress.log(f"max_length: auto -> {facts['max_length']} (99% of the training split's rows fit whole)")
    for warning in warnings:
        progress.log(f"warning: {warning}")
    return facts


def check_baseline(report, task, split: str, baseline_name: str, progress) -> None:
    """Warn once where the baseline is close to a constant prediction (``compose.evaluation.weak_baseline``)."""
    from compose.evaluation.weak_baseline import warning

    if any(w.get("kind") == "weak_baseline" for w in report.warnings):
        return
    row = next((r for r in report.rows if r.name == baseline_name), None)
    found = warning(task, split, baseline_name, row.value if row else None)
    if found is not None:
        report.warnings.append(found)
        progress.log(f"warning: {found['message']}")
