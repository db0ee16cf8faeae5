"""The study at a glance: retained against size and against throughput, every trial, the front marked.

One point per trial that reached its final stage, with its retained metric's paired
interval as an error bar; trials on the front are filled and joined by a line, the others
hollow, infeasible ones grey; the floor is a dashed line. Only the front's points are
labelled (with their trial numbers), so labels do not pile up. A hand-written recipe's
run (``reference``: its report) is drawn as a black star to compare with. Needs matplotlib
(the ``plot`` extra); without it the study runs and says that no plot was drawn.
"""

from __future__ import annotations

from pathlib import Path

from compose import atomic

PLOT_FILE = "tune.png"


def plot_study(records: list[dict], front: list[int], floor: float, target: Path, reference=None) -> Path | None:
    """Draw ``target``; None when matplotlib is not installed. ``front``: the trial numbers on the front."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return None
    finished = [r for r in records if r.get("retained") is not None and r.get("size_bytes")]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = (("size_bytes", "whole artifact (MB)", 1e-6), ("throughput_per_s", "throughput (examples/s)", 1))
    for axis, (field, label, scale) in zip(axes, panels):
        groups = (
            ("front", [r for r in finished if r["number"] in front], {"color": "tab:red", "fillstyle": "full"}),
            (
                "feasible",
                [r for r in finished if r["number"] not in front and r.get("feasible")],
                {"color": "tab:blue", "fillstyle": "none"},
            ),
            ("infeasible", [r for r in finished if not r.get("feasible")], {"color": "0.6", "fillstyle": "none"}),
        )
        for name, group, style in groups:
            group = [r for r in group if r.get(field)]
            if not group:
                continue
            xs = [r[field] * scale for r in group]
            ys = [r["retained"] for r in group]
            errors = _error_bars(group)
            axis.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=name, **style)
            if name == "front":
                ordered = sorted(zip(xs, ys))
                axis.plot([x for x, _ in ordered], [y for _, y in ordered], color="tab:red", alpha=0.5)
                for x, y, record in zip(xs, ys, group):
                    axis.annotate(f"#{record['number']}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if reference is not None and reference.get(field):
            axis.plot(reference[field] * scale, reference["retained"], "k*", markersize=12, label=reference["label"])
        axis.axhline(floor, color="0.3", linestyle="--", linewidth=1, label=f"floor {floor:.1%}")
        xs = [r[field] * scale for r in finished if r.get(field)]
        wide = xs and min(xs) > 0 and max(xs) / min(xs) > 10  # a log axis only where values span decades
        axis.set(xlabel=label, xscale="log" if wide else "linear")
        if wide:  # plain numbers (4, 6, 10, 20 MB), not matplotlib's 4x10^0 on a log axis
            axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            axis.xaxis.set_minor_formatter(  # 2, 5, 20, 50 between the decades; the other minor ticks unlabelled
                ticker.FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")
            )
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("retained (final stage, 95% interval)")
    retained = [r["retained"] for r in finished] + [floor]
    retained += [end for r in finished for end in (r.get("retained_ci") or [])]
    low, high = min(retained), max(retained)
    pad = max(0.005, (high - low) * 0.15)
    axes[0].set_ylim(low - pad, high + pad)  # the trials' range and intervals, not the untrained model's
    figure.suptitle(f"recipe tune: {len(finished)} trial(s) that reached their final stage; front in red")
    figure.tight_layout()
    with atomic.writing_file(target) as handle:
        figure.savefig(handle, dpi=120, format="png")
    plt.close(figure)
    return target


def _error_bars(group: list[dict]):
    """Asymmetric bars from each trial's retained interval (zero where it has none)."""
    below, above = [], []
    for record in group:
        ci = record.get("retained_ci")
        below.append(max(0.0, record["retained"] - ci[0]) if ci else 0.0)
        above.append(max(0.0, ci[1] - record["retained"]) if ci else 0.0)
    return [below, above]
