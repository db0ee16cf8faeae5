#!/usr/bin/env bash
# One-command check of a machine with a GPU (or any machine): installs nothing.
#
#   bench/gpu_check.sh                      # everything; JSON into bench/results/gpu-check.json
#   bench/gpu_check.sh /tmp/check.json      # the JSON summary elsewhere
#   bench/gpu_check.sh --quick              # a smoke check of the script itself: two test files,
#                                           # every recipe run cut to a few steps on a few rows
#
# Runs, from the repository root, with the project's environment (.venv, or $PYTHON):
#   1. the whole test suite (pytest, a JUnit XML parsed for counts and the failures);
#   2. the default recipe (recipes/minilm-sst2.yaml) three times: amp fp16, bf16 and fp32,
#      on every training stage, each into its own run folder;
#   3. the decoder recipe (recipes/llama-wikitext2.yaml) as shipped (amp: auto).
# Then writes one JSON: the machine (GPU, torch, what `amp: auto` picks), the tests'
# pass/fail counts and failures, and for each run its exit code, status, stage times,
# metrics and the precision each training stage used. Logs and run folders stay under
# the work folder it prints ($GPU_CHECK_WORK, default a fresh folder in /tmp).
#
# Environment: PYTHON (interpreter), GPU_CHECK_WORK (work folder), SHARED_DATA (a folder
# with sst2/ and wikitext2/ when ../shared/data is not next to the repository).
# Exit code: 0 when every test passed and every run exited 0 or 1 (1: a gate failed), else 1.

set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
OUT=bench/results/gpu-check.json
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done

PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
RECIPE=("$PYTHON" -m compose.cli.main)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$WORK" "$(dirname "$OUT")"
echo "gpu_check: python $PYTHON, work folder $WORK, summary $OUT" >&2
export RECIPE_COMPOSE_PROGRESS_INTERVAL=${RECIPE_COMPOSE_PROGRESS_INTERVAL:-60}

# -- the machine -------------------------------------------------------------------------
"$PYTHON" - > "$WORK/machine.json" <<'EOF'
import json, os, platform, subprocess
import torch
from compose.plugins.training import amp
device = amp.run_device()
info = {
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count(),
    "cpu_capability": amp.cpu_capability(), "cpu_bf16_instructions": amp.cpu_bf16_instructions(),
    "amp_auto": amp.explain("auto", device),
}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_bf16_native"] = amp.cuda_bf16_native()
for name in ("transformers", "accelerate", "gptqmodel", "torch_pruning"):
    try:
        from importlib.metadata import version
        info[name] = version(name.replace("_", "-"))
    except Exception:
        info[name] = None
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
print(json.dumps(info))
EOF

# -- 1. the test suite --------------------------------------------------------------------
TESTS=(tests)
[ "$QUICK" = 1 ] && TESTS=(tests/plugins/training/test_amp.py tests/compose/test_progress.py)
start=$(date +%s)
"$PYTHON" -m pytest -q -p no:cacheprovider --junitxml="$WORK/junit.xml" "${TESTS[@]}" \
    > "$WORK/tests.log" 2>&1
echo "$? $(( $(date +%s) - start ))" > "$WORK/tests.status"
echo "gpu_check: tests done ($(tail -1 "$WORK/tests.log"))" >&2

# -- 2, 3. the recipes --------------------------------------------------------------------
if [ -n "${SHARED_DATA:-}" ]; then
    DATA_MINILM=("task.data.train.path=$SHARED_DATA/sst2/train.tsv" "task.data.dev.path=$SHARED_DATA/sst2/dev.tsv")
    DATA_LLAMA=("task.data.train.path=$SHARED_DATA/wikitext2/wiki.train.tokens"
                "task.data.test.path=$SHARED_DATA/wikitext2/wiki.test.tokens")
else
    DATA_MINILM=(); DATA_LLAMA=()
fi
CUT_MINILM=(); CUT_LLAMA=()
if [ "$QUICK" = 1 ]; then  # a few steps on a few rows: checks the plumbing, not the results
    CUT_MINILM=(task.data.train.limit=256 evaluate.limit=64 evaluate.latency_batches=1
                stages.finetune.with.max_steps=3 stages.distill.with.training.max_steps=3
                stages.prune.with.calibration_batches=1 stages.prune.with.recovery.max_steps=2
                stages.quantize.with.samples=16 '~gates')
    CUT_LLAMA=(evaluate.limit=8 evaluate.latency_batches=1 stages.pretrain.with.max_steps=3
               stages.distill.with.training.max_steps=3 stages.prune.with.calibration_batches=1
               stages.prune.with.recovery.max_steps=2 stages.quantize.with.samples=8 '~gates')
fi

run() {  # run NAME RECIPE OVERRIDES...
    local name=$1 recipe=$2; shift 2
    local start; start=$(date +%s)
    echo "gpu_check: $name: recipe apply $recipe $*" >&2
    "${RECIPE[@]}" apply "$recipe" "$@" --output "$WORK/runs/$name" --fresh --json \
        > "$WORK/$name.report.json" 2> "$WORK/$name.log"
    local code=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$(( $(date +%s) - start ))" "recipe apply $recipe $*" \
        >> "$WORK/runs.tsv"
    echo "gpu_check: $name: exit $code" >&2
}
: > "$WORK/runs.tsv"
CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
for precision in fp16 bf16 fp32; do
    value=$precision; [ "$precision" = fp32 ] && value=null
    if [ "$precision" = fp16 ] && [ "$CUDA" != 1 ]; then  # fp16 is a validation error without CUDA
        printf '%s\t%s\t%s\t%s\n' "minilm-sst2-fp16" "-" 0 "not run: fp16 needs CUDA" >> "$WORK/runs.tsv"
        continue
    fi
    run "minilm-sst2-$precision" recipes/minilm-sst2.yaml ${DATA_MINILM[@]+"${DATA_MINILM[@]}"} \
        ${CUT_MINILM[@]+"${CUT_MINILM[@]}"} "stages.finetune.with.amp=$value" \
        "stages.distill.with.training.amp=$value" "stages.prune.with.recovery.amp=$value"
done
run llama-wikitext2 recipes/llama-wikitext2.yaml ${DATA_LLAMA[@]+"${DATA_LLAMA[@]}"} \
    ${CUT_LLAMA[@]+"${CUT_LLAMA[@]}"}

# -- the summary ----------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$OUT" "$QUICK" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
work, out, quick = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"

code, seconds = (work / "tests.status").read_text().split()
tests = {"exit_code": int(code), "seconds": int(seconds), "log": str(work / "tests.log")}
try:
    root = ET.parse(work / "junit.xml").getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    count = lambda key: sum(int(s.get(key, 0)) for s in suites)
    tests.update(total=count("tests"), failed=count("failures"), errors=count("errors"), skipped=count("skipped"))
    tests["passed"] = tests["total"] - tests["failed"] - tests["errors"] - tests["skipped"]
    tests["failures"] = [
        {"test": f"{case.get('classname')}::{case.get('name')}",
         "message": (problem.get("message") or "")[:500]}
        for case in root.iter("testcase") for problem in case if problem.tag in ("failure", "error")
    ]
except (OSError, ET.ParseError) as exc:
    tests["junit_error"] = str(exc)

runs = []
for line in (work / "runs.tsv").read_text().splitlines():
    name, code, seconds, command = line.split("\t")
    if code == "-":
        runs.append({"name": name, "status": "not run", "why": command})
        continue
    entry = {"name": name, "command": command, "exit_code": int(code), "seconds": int(seconds),
             "log": str(work / f"{name}.log")}
    try:
        report = json.loads((work / f"{name}.report.json").read_text())
    except (OSError, ValueError):
        entry["status"] = "no report"
        entry["log_tail"] = (work / f"{name}.log").read_text(errors="replace")[-2000:]
        runs.append(entry)
        continue
    entry.update(status=report["status"], passed=report["passed"], error=report["error"],
                 metric=report["metric"]["name"], total_seconds=report["seconds"])
    entry["stages"] = []
    for stage in report["stages"]:
        training = (stage.get("details") or {}).get("training") or (stage.get("details") or {}).get("recovery") or {}
        entry["stages"].append({
            "name": stage["name"], "seconds": stage["seconds"], "value": stage["metric"]["value"],
            "params": stage["params"], "weights_bytes": stage["weights_bytes"],
            "latency_ms": stage.get("latency_ms"),
            "training_seconds": training.get("seconds"), "training_steps": training.get("steps"),
            "amp": (training.get("setup") or {}).get("amp"),
        })
    entry["gates"] = report["gates"]
    if report["error"]:
        entry["log_tail"] = (work / f"{name}.log").read_text(errors="replace")[-2000:]
    runs.append(entry)

ran = [r for r in runs if r["status"] != "not run"]
ok = tests.get("exit_code") == 0 and all(r["exit_code"] in (0, 1) and r["status"] != "no report" for r in ran)
summary = {"ok": ok, "quick": quick, "work": str(work),
           "machine": json.loads((work / "machine.json").read_text()), "tests": tests, "runs": runs}
out.write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({"ok": ok, "tests": {k: tests.get(k) for k in ("passed", "failed", "errors", "skipped")},
                  "runs": {r["name"]: [r.get("exit_code"), r["status"]] for r in runs}}))
sys.exit(0 if ok else 1)
EOF
