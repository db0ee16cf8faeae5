"""recipe compare: finished runs side by side, and a plot of every stage (PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from compose.cli._common import CommandError, dump_json
from compose.evaluation.report import (
    format_bytes,
    format_latency,
    format_number,
    format_percent,
    format_ratio,
    format_retained,
)
from compose.evaluation.run_comparison import CompareError, best_final, compare_runs, load_runs, plot
from compose.exit_codes import EXIT_OK

HELP = "compare finished runs side by side and plot retained against size and throughput"
EXAMPLE = """\
example:
  recipe compare runs/llama-small runs/llama-large-then-compress
  recipe compare a/report.json b/report.json --label small --label large --plot cmp.png
  recipe compare runs/a runs/b --json            # machine-readable

Each argument is a run folder (or its report.json) of the same task. The final
models are printed side by side (metric, retained, parameters, size on disk,
batch-1 latency, throughput, x faster and x smaller than each run's own
baseline, the thread count they were measured at, training steps, time), then
every stage of every run. Speeds measured at different thread counts or on
other machines do not compare. The plot draws each run from its baseline on: retained
(with its interval) vs size on disk and vs throughput. It is written to the first run's folder as compare.png unless
--plot says where; it needs matplotlib (pip install 'recipe-compose[plot]').
Exit code 0, or 2 if a report cannot be read or the runs measure different metrics.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("reports", nargs="+", metavar="RUN", help="run folders or report.json files")
    p.add_argument(
        "--label", action="append", metavar="NAME", help="a name per run, in order (default: recipe file name)"
    )
    p.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="where to draw the plot (default: FIRST_RUN/compare.png)"
    )
    p.add_argument("--no-plot", action="store_true", help="print the comparison only")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    p.set_defaults(handler=run)


def _measured_at(latency: dict | None) -> str:
    """ "2 threads, cpu, batch 64": what a row's speed depends on besides the model."""
    if not latency:
        return "-"
    return f"{latency['threads']} threads, {latency['device']}, batch {latency['batch_size']}"


def run(args) -> int:
    try:
        runs = load_runs(args.reports, args.label)
        target = None
        if not args.no_plot:
            target = plot(runs, args.plot or runs[0].path.parent / "compare.png")
    except CompareError as exc:
        raise CommandError(str(exc)) from None
    data = compare_runs(runs)
    data["plot"] = str(target) if target else None
    if args.json:
        dump_json(data)
        return EXIT_OK
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 170)
    metric = data["metric"]["name"]
    side = Table(
        title=f"final models ({metric}{'' if data['metric']['higher_is_better'] else ', lower is better'})",
        title_justify="left",
    )
    side.add_column("")
    for r in runs:
        side.add_column(r.label, justify="right")
    finals = [r.final for r in runs]
    side.add_row("final stage", *[f.name for f in finals])
    side.add_row(metric, *[format_number(f.value) for f in finals])
    for name in dict.fromkeys(k for f in finals for k in f.metrics if k != metric):
        side.add_row(name, *[format_number(f.metrics.get(name)) for f in finals])
    side.add_row("retained (own baseline, CI)", *[format_retained(f) for f in finals])
    side.add_row("agreement with baseline", *[format_percent(f.agreement) for f in finals])
    side.add_row("KL(baseline || final)", *[format_number(f.kl) for f in finals])
    side.add_row("baseline", *[r.report.baseline_stage or "-" for r in runs])
    side.add_row("params", *[f"{f.params / 1e6:.2f}M" for f in finals])
    side.add_row("size on disk", *[format_bytes(f.size_bytes) for f in finals])
    side.add_row(
        "b1 p50 / p95",
        *[
            f"{format_latency(f.latency, 'batch1_p50_ms')} / {format_latency(f.latency, 'batch1_p95_ms')}"
            for f in finals
        ],
    )
    side.add_row("throughput (ex/s)", *[format_latency(f.latency, "throughput_per_s") for f in finals])
    side.add_row("x faster (own baseline)", *[format_ratio(f.speedup) for f in finals])
    side.add_row("x smaller (own baseline)", *[format_ratio(f.size_ratio) for f in finals])
    side.add_row("measured at", *[_measured_at(f.latency) for f in finals])
    side.add_row("training steps", *[str(r.training_steps) for r in runs])
    side.add_row("run time", *[f"{r.report.seconds:.0f} s" for r in runs])
    side.add_row("status", *[r.report.status for r in runs])
    console.print(side)
    stages = Table(title="every stage", title_justify="left")
    for column in (
        "run",
        "stage",
        metric,
        "retained (CI)",
        "agree",
        "KL",
        "params",
        "size on disk",
        "b1 p50",
        "ex/s",
        "x faster",
        "x smaller",
    ):
        stages.add_column(column, justify="left" if column in ("run", "stage") else "right")
    for r in runs:
        for row in r.report.rows:
            stages.add_row(
                r.label,
                row.name,
                format_number(row.value),
                format_retained(row),
                format_percent(row.agreement),
                format_number(row.kl),
                f"{row.params / 1e6:.2f}M",
                format_bytes(row.size_bytes),
                format_latency(row.latency, "batch1_p50_ms"),
                format_latency(row.latency, "throughput_per_s"),
                format_ratio(row.speedup),
                format_ratio(row.size_ratio),
            )
    console.print(stages)
    best = best_final(runs)
    if best is not None:
        console.print(f"best final {metric}: {best.label} ({format_number(best.final.value)})")
    if target:
        console.print(f"plot: {target}")
    return EXIT_OK
