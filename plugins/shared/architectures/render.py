"""The table in docs/stages.md of what each stage does per architecture, rendered from the architecture table.

tests/plugins/shared/architectures/test_architectures.py checks that docs/stages.md contains exactly this text,
so the docs cannot claim what the table does not say.
"""

from __future__ import annotations

from compose.plugins.shared.architectures.registry import ARCHITECTURES, STAGES


def cell(arch, stage: str) -> str:
    if stage == "parallel":
        return ", ".join(arch.parallel_strategies())
    return "no (refused at validation)" if arch.refusal(stage) else "yes"


def render_support_matrix() -> str:
    """Markdown: one row per stage, one column per architecture."""
    names = [" / ".join(arch.types) for arch in ARCHITECTURES]
    lines = [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        "| family | " + " | ".join(arch.family for arch in ARCHITECTURES) + " |",
    ]
    for stage in STAGES:
        lines.append(f"| `{stage}` | " + " | ".join(cell(arch, stage) for arch in ARCHITECTURES) + " |")
    return "\n".join(lines) + "\n"


def render_refusals() -> str:
    """Markdown: every refusal, with the reason validation gives."""
    reasons: dict[str, tuple[list[str], list[str]]] = {}
    for arch in ARCHITECTURES:
        for what, why in arch.refuses.items():
            whats, names = reasons.setdefault(why, ([], []))
            whats.extend([what.replace(":", ": ")] if what.replace(":", ": ") not in whats else [])
            names.extend([arch.name] if arch.name not in names else [])
    return "".join(
        f"- {' and '.join(f'`{w}`' for w in whats)} on {', '.join(names)}: {why}\n"
        for why, (whats, names) in reasons.items()
    )


__all__ = ["render_refusals", "render_support_matrix"]
