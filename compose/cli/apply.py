"""recipe apply: validate a recipe, then run its stages and report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from compose.cli._common import CommandError, dump_json, host_or_exit, print_problems, stderr
from compose.errors import RecipeError
from compose.evaluation.report import REPORT_FILE, Report, report_from_json
from compose.exit_codes import EXIT_INVALID, EXIT_STAGE_FAILED, help_text
from compose.recipe.load import load_recipe
from compose.run import interrupts
from compose.run.distributed import launched_world_size
from compose.run.run_folder import RunFolderError, owned, resolve

HELP = "validate a recipe, then run its stages in order and report each one"
EXAMPLE = f"""\
example:
  recipe apply recipes/minilm-sst2.yaml
  recipe apply recipes/minilm-sst2.yaml stages.finetune.with.max_steps=50 ~gates
  recipe apply recipes/minilm-sst2.yaml --output runs/try2 --json > report.json

Overrides: key.path=value sets a value (parsed as YAML), ~key.path deletes one;
stages are addressed by name or index (stages.gptq.with.bits=3, stages.0.with.epochs=2).

Writes into the run folder (output.dir, or --output): recipe.resolved.yaml,
report.json (rewritten after every stage) and stages/NN-NAME/model/ for each stage.

Several processes (data-parallel training over gloo on CPU, nccl on GPUs):
  recipe apply --nproc 2 recipes/minilm-sst2.yaml
  torchrun --nproc_per_node 2 -m compose.cli.main apply recipes/minilm-sst2.yaml
Only rank 0 writes artifacts and the report; every rank evaluates its share.

Resuming: a run folder remembers each finished stage with a fingerprint of all that
determined it (recipe up to that stage, model and data bytes, plugin versions,
seed). Applying again into the same folder reuses the stages whose fingerprints
match and reruns from the first that differs; --fresh reruns everything. A change to
evaluate: measures the reused stages again from their saved models, training nothing.

Progress goes to stderr: live bars on a terminal; elsewhere (CI, a pipe, nohup, a file)
a plain line at most every 30 s with the work, step/total, rate and ETA. Set
RECIPE_COMPOSE_PROGRESS_INTERVAL=SECONDS to change that interval (0: no lines);
--quiet shows neither.

exit codes:
{help_text()}
"""

#: Set in the processes that `recipe apply --nproc N` launches.
LAUNCHED_ENV = "RECIPE_COMPOSE_LAUNCHED"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "apply", help=HELP, description=HELP, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", help="the recipe file (YAML)")
    p.add_argument("overrides", nargs="*", help="key.path=value or ~key.path")
    p.add_argument("--output", "-o", type=Path, help="run folder (default: the recipe's output.dir)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout (progress goes to stderr)")
    p.add_argument("--quiet", "-q", action="store_true", help="no live progress view")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="rerun every stage, ignoring finished stages of an earlier run in the run folder",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="run on N processes on this machine (through torch.distributed.run)",
    )
    p.add_argument(
        "--use-output-folder",
        action="store_true",
        help="write into an existing folder that holds other files (never over one of them)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub to run, if the recipe also sets model.trust_remote_code",
    )
    p.set_defaults(handler=run)


def launch(args, recipe) -> Report | None:
    """Run this same command on ``args.nproc`` processes with torch.distributed.run; read the report."""
    run_dir = resolve(recipe.data, args.output)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "compose.cli.main",
        "apply",
        args.recipe,
        *args.overrides,
        "--output",
        str(run_dir),
    ]
    if args.quiet:
        command.append("--quiet")
    if args.trust_remote_code:
        command.append("--trust-remote-code")
    stale = run_dir / REPORT_FILE
    if stale.exists():
        stale.unlink()  # so that a report read afterwards is this run's
    env = {**os.environ, LAUNCHED_ENV: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.fresh:
        command.append("--fresh")
    child = subprocess.Popen(command, env=env)
    try:
        returncode = child.wait()
    except KeyboardInterrupt:  # pass the interruption on, and let the processes write their report
        child.terminate()  # torch.distributed.run passes SIGTERM on to every rank
        with interrupts.stopping():  # a second signal ends this process at once
            returncode = child.wait()
    try:
        data = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stderr.print(f"[red]error:[/] the {args.nproc} processes ended (exit {returncode}) without a report")
        return None
    report = report_from_json(data)
    if report.status == "running" and interrupts.received():  # the ranks were stopped before they could say so
        report.status = "interrupted"
        report.error = {
            "stage": None,
            "type": "Interrupted",
            "message": f"the run was interrupted ({interrupts.received()})",
        }
    elif report.status == "running":  # a rank died and the launcher stopped the others
        report.status = "stage_failed"
        report.error = {
            "stage": None,
            "type": "ProcessFailed",
            "message": f"a process failed (exit {returncode}); its error is shown above",
        }
    return report


def run(args) -> int:
    with interrupts.handling_signals():  # SIGINT and SIGTERM stop the run alike, and are never lost
        return _apply(args)


def _apply(args) -> int:
    from compose.progress import interval_from_env

    try:
        interval = interval_from_env()
    except ValueError as exc:
        raise CommandError(f"{exc}; nothing ran") from None
    host = host_or_exit()
    try:
        recipe = load_recipe(args.recipe, args.overrides, host)
    except RecipeError as exc:
        print_problems(exc.problems + exc.warnings)
        if args.json:
            dump_json(
                {
                    "passed": False,
                    "exit_code": EXIT_INVALID,
                    "status": "invalid",
                    "problems": [p.to_json() for p in exc.problems],
                }
            )
        stderr.print(f"[red]{len(exc.problems)} problem(s); nothing ran.[/]")
        return EXIT_INVALID
    print_problems(recipe.warnings)
    if recipe.data["model"].get("trust_remote_code") and not args.trust_remote_code:
        raise CommandError(
            f"{args.recipe}: the recipe sets model.trust_remote_code, which also needs --trust-remote-code "
            "on the command line; nothing ran"
        )
    run_dir = resolve(recipe.data, args.output)
    owner = not os.environ.get(LAUNCHED_ENV) and int(os.environ.get("RANK", "0")) == 0  # claims and locks
    with ExitStack() as stack:
        if owner:
            try:
                stack.enter_context(owned(run_dir, adopt=args.use_output_folder))
            except RunFolderError as exc:
                raise CommandError(str(exc)) from None
        return _run(args, recipe, host, run_dir, interval)


def _run(args, recipe, host, run_dir: Path, interval: float) -> int:
    from compose.evaluation.report import render_table
    from compose.progress import Progress
    from compose.run.executor import Executor, RunOptions

    if args.nproc > 1 and launched_world_size() == 1:
        report = launch(args, recipe)
        if report is None:
            return EXIT_STAGE_FAILED
    else:
        rank = int(os.environ.get("RANK", "0"))
        progress = Progress(console=Console(stderr=True), enabled=not args.quiet and rank == 0, interval=interval)
        options = RunOptions(
            output_dir=args.output, allow_remote_code=args.trust_remote_code, progress=progress, fresh=args.fresh
        )
        with progress:
            report = Executor(recipe, host, options).run()
        if rank != 0 or os.environ.get(LAUNCHED_ENV):
            return report.exit_code  # the launching process prints the report
    render_table(report, Console(stderr=args.json))
    if report.status == "interrupted":
        where = f" in stage '{report.error['stage']}'" if report.error.get("stage") else ""
        stderr.print(f"[yellow]interrupted{where}:[/] ", end="")
        stderr.print(report.error["message"], markup=False, soft_wrap=True)
        stderr.print("Earlier stages' artifacts and the report are kept.")
    elif report.error:
        stderr.print(f"[red]error:[/] stage '{report.error['stage']}' failed: ", end="")
        stderr.print(f"{report.error['type']}: {report.error['message']}", markup=False, soft_wrap=True)
        stderr.print("Earlier stages' artifacts and the report are kept.")
    if args.json:
        dump_json(report.to_json())
    return report.exit_code
