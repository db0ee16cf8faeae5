"""Stress test of SIGINT and SIGTERM at every named point of a run (run on purpose, not in the tests).

A three-stage recipe over a tiny BERT is stopped at every point of its progress that
compose.run.interrupts names (each stage's start, training steps, evaluation, latency
measurement, saving with the artifact not yet in place, the report, the final result),
once with SIGINT and once with SIGTERM. Each case must end with exit 130 and
``status: interrupted``, leave no ``*.partial`` file, and resume (``recipe apply`` again)
to exactly the uninterrupted run's report rows and weights. The runs pause at each point
(compose.testing.PausedRun), so nothing depends on this machine's speed.

    .venv/bin/python bench/interrupts.py            # every point: ~60 runs, writes bench/results/interrupts.json
    .venv/bin/python bench/interrupts.py --points 'b/*'   # only the points matching a pattern
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file
from transformers import BertTokenizer

from compose.testing import PausedRun, recipe_command

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "interrupts.json"
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "a", "plot", "very", "not"]
STAGES = ["a", "b", "c"]
POINTS = (
    ["input/evaluating", "input/latency", "input/saving", "input/report"]
    + [
        f"{s}/{what}"
        for s in STAGES
        for what in ("start", "step 1", "step 10", "evaluating", "latency", "saving", "report")
    ]
    + ["run/result"]
)


def write_recipe(folder: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder / "tokenizer")
    rng = random.Random(0)
    for split, n in (("train", 256), ("dev", 64)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.sample(WORDS[:3] if label else WORDS[3:6], 1) + rng.sample(WORDS[6:], 3)
            rng.shuffle(words)
            rows.append(f"{' '.join(words)}\t{label}")
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    stages = "\n".join(
        f"  - {{name: {s}, uses: train, with: {{max_steps: 20, batch_size: 16, learning_rate: {lr}, "
        "eval_every_epoch: false}}"
        for s, lr in zip(STAGES, ("3.0e-3", "1.0e-3", "5.0e-4"))
    )
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        "model:\n"
        f"  config: {{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        f"intermediate_size: 64, max_position_embeddings: 64, vocab_size: {len(vocab)}}}\n"
        f"  tokenizer: {{path: {folder / 'tokenizer'}}}\n"
        "task:\n  kind: sequence-classification\n  max_length: 16\n"
        f"  data:\n    train: {{path: {folder / 'train.tsv'}}}\n    dev: {{path: {folder / 'dev.tsv'}}}\n"
        "evaluate: {batch_size: 32, latency: {batch1_samples: 5, throughput_batches: 2}}\n"
        f"seed: 0\nstages:\n{stages}\n",
        encoding="utf-8",
    )
    return recipe


def apply(recipe: Path, run: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*recipe_command(), "apply", str(recipe), "--output", str(run), "-q"], capture_output=True, text=True
    )


def rows(run: Path) -> list:
    report = json.loads((run / "report.json").read_text())
    return [(s["name"], s["metric"]["value"], s["params"], s["weights_bytes"]) for s in report["stages"]]


def same_weights(run: Path, reference: Path) -> bool:
    for stage in STAGES:
        got = load_file(run / "stages" / f"{STAGES.index(stage) + 1:02d}-{stage}" / "model" / "model.safetensors")
        want = load_file(
            reference / "stages" / f"{STAGES.index(stage) + 1:02d}-{stage}" / "model" / "model.safetensors"
        )
        if got.keys() != want.keys() or not all((got[k] == want[k]).all() for k in want):
            return False
    return True


def one_case(recipe: Path, reference: Path, folder: Path, point: str, how: signal.Signals) -> dict:
    run = folder / "run"
    started = time.perf_counter()
    paused = PausedRun([str(recipe), "--output", str(run), "-q"], at=[point], folder=folder)
    reached = paused.wait_paused()
    paused.send(how)
    code = paused.wait()
    report = json.loads((run / "report.json").read_text())
    partial = [str(p.relative_to(run)) for p in run.rglob("*.partial")]
    finished = [s["name"] for s in report["stages"]]
    resumed = apply(recipe, run)
    again = json.loads((run / "report.json").read_text())
    case = {
        "point": point,
        "signal": how.name,
        "paused_at": reached,
        "exit_code": code,
        "status": report["status"],
        "partial_files": partial,
        "finished_before": finished,
        "resume_exit_code": resumed.returncode,
        "reused_on_resume": again.get("reused_stages"),
        "resumed_rows_equal": resumed.returncode == 0 and rows(run) == rows(reference),
        "resumed_weights_equal": resumed.returncode == 0 and same_weights(run, reference),
        "seconds": round(time.perf_counter() - started, 1),
    }
    case["ok"] = (
        reached == point
        and code == 130
        and report["status"] == "interrupted"
        and not partial
        and case["resumed_rows_equal"]
        and case["resumed_weights_equal"]
        and set(finished) <= set(again.get("reused_stages") or [])
    )
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="*", help="only the points matching this fnmatch pattern")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    points = [p for p in POINTS if fnmatch.fnmatchcase(p, args.points)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = write_recipe(root)
        reference = root / "reference"
        done = apply(recipe, reference)
        if done.returncode != 0:
            raise SystemExit(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
        cases = []
        for point in points:
            for how in (signal.SIGINT, signal.SIGTERM):
                case = one_case(recipe, reference, root / f"case{len(cases)}", point, how)
                cases.append(case)
                print(
                    f"{'ok  ' if case['ok'] else 'FAIL'} {how.name:7} at {point:18} exit {case['exit_code']}, "
                    f"resumed {'=' if case['resumed_rows_equal'] else '!='} reference ({case['seconds']} s)",
                    flush=True,
                )
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "points": len(points),
        "cases": len(cases),
        "passed": sum(c["ok"] for c in cases),
        "seconds": round(time.perf_counter() - started, 1),
        "results": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['passed']} passed, {len(cases) - result['passed']} failed ({result['seconds']} s); {args.output}")
    return 0 if result["passed"] == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
