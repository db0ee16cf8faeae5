"""recipe verify: check that a run folder's finished stages still hold the bytes they wrote."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compose import atomic
from compose.cli._common import CommandError, dump_json, stderr
from compose.exit_codes import EXIT_GATE_FAILED, EXIT_OK
from compose.run import integrity
from compose.run.resume import in_this_folder
from compose.run.run_folder import STAGE_RECORD, read_stage_record, stage_record_paths

HELP = "check a run folder's finished stages against the hashes recorded when they were written"
EXAMPLE = """\
example:
  recipe verify runs/minilm-sst2
  recipe verify runs/minilm-sst2 --json

Every finished stage records the sha256 of its artifact's files and of its evaluation
records (stages/NN-NAME/stage.json). This hashes them again, runs nothing and changes
nothing. `recipe apply` does the same check before it reuses a stage, and reruns a stage
whose bytes changed (with every stage after it).
Exit code 0 if every stage is intact, 1 if any file changed, went missing or appeared,
2 if the folder is not a run folder.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", type=Path, help="the run folder (output.dir or --output of `recipe apply`)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    p.set_defaults(handler=run)


def run(args) -> int:
    records = stage_record_paths(args.run) if args.run.is_dir() else []
    if not records:
        raise CommandError(f"{args.run} is not a run folder with finished stages (no stages/*/{STAGE_RECORD})")
    started = time.perf_counter()
    results, hashed = [], 0
    for path in records:
        folder = path.parent
        record = read_stage_record(folder)
        try:
            artifact = atomic.recover(in_this_folder(folder, Path(record["row"]["artifact"])))
        except (OSError, ValueError, KeyError, TypeError):
            results.append({"stage": folder.name, "ok": False, "problems": [f"{STAGE_RECORD} cannot be read"]})
            continue
        problems = integrity.stage_changes(folder, record, artifact)
        recorded = record.get("files", {})
        hashed += sum((folder / name).stat().st_size for name in recorded if (folder / name).is_file())
        results.append({"stage": folder.name, "ok": not problems, "problems": problems, "files": len(recorded)})
    seconds = time.perf_counter() - started
    ok = all(r["ok"] for r in results)
    if args.json:
        dump_json(
            {"run": str(args.run), "ok": ok, "stages": results, "bytes_hashed": hashed, "seconds": round(seconds, 3)}
        )
    for result in results:
        if result["ok"]:
            stderr.print(f"[green]ok[/]      {result['stage']} ({result['files']} files)")
        else:
            stderr.print(f"[red]changed[/] {result['stage']}: {'; '.join(result['problems'])}", markup=True)
    stderr.print(f"{len(results)} stage(s), {hashed / 1e6:.1f} MB hashed in {seconds:.2f} s")
    return EXIT_OK if ok else EXIT_GATE_FAILED
