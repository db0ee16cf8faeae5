"""What a run says about its data and its baseline without failing: max_length (and what ``auto`` chose),
the share of each split it truncates, and a baseline close to a constant prediction. Each goes into the
report and, where it matters, to the terminal as a warning."""

from __future__ import annotations

from compose.run.modeling import load_tokenizer


def data_lengths(model_spec, task, progress) -> dict:
    """max_length resolved (``auto``) with the recipe's own tokenizer, and what it truncates in each split,
    said where it cuts more than a little."""
    from compose.tasks.lengths import truncation_warning

    written = task.spec.get("max_length")
    if task.kind == "causal-lm":
        return {"max_length": None, "lengths": {}}
    tokenizer = load_tokenizer(model_spec, task)
    chosen = task.resolve_max_length(tokenizer)
    if written == "auto":
        progress.log(f"max_length: auto -> {chosen} (99% of the training split's rows fit whole)")
    lengths = task.length_report(tokenizer)
    for split, stats in lengths.items():
        warning = truncation_warning(split, stats)
        if warning:
            progress.log(f"warning: {warning}")
    return {"max_length": chosen, "max_length_written": written, "lengths": lengths}


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
