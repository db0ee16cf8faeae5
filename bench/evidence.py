"""The project's evidence: five experiments that test the claims recipe-compose is built on,
the way the claims were made (pretrained models, then compressed), with seeds and intervals.

    python bench/evidence.py all                 # every experiment (about 70 minutes on 2 CPU cores)
    python bench/evidence.py encoder --seeds 1 2 3
    python bench/evidence.py decoder | heads | bits | depth
    python bench/evidence.py all --quick         # a smoke run on tiny subsets (minutes; numbers meaningless)
    python bench/evidence.py all --report-only   # rewrite the results from the runs' kept reports

Every run is a committed recipe in recipes/experiments/, applied with `recipe apply`; this
script only chooses seeds and folders and reads the reports (report.json) and evaluation
records (stages/*/evaluation.pt) the runs write. Results: bench/results/evidence-*.json,
.md and .png (with --quick: under runs/evidence-quick/results only).

1. encoder: SST-2, arms (a) the 3-layer shape from random weights ((a-emb): random blocks
   on the pretrained embeddings), (b) the fine-tuned
   6-layer MiniLM distilled into 3 of its layers, (c) those layers fine-tuned without the
   teacher, (d) (b) plus intermediate-layer matching; 3 seeds; mean and 95% t-interval
   over seeds, and each run's paired-bootstrap interval of retained.
2. decoder: WikiText-2 (train split), a 4 x 128 Llama trained then distilled into 2 x 64,
   against 2 x 64 trained directly at equal tokens and at equal FLOPs; test perplexity
   with a bootstrap interval over blocks.
3. heads: 0-70% of MiniLM's heads removed, without and with a 100-step recovery;
   retained (interval) and speed at 1 thread.
4. bits: GPTQ vs round to nearest at 8/4/3/2 bits, whole-artifact size.
5. depth: one compression (40% heads + 3-bit GPTQ) on the 6-layer and on a 3-layer
   fine-tuned model: which retains more.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPES = ROOT / "recipes" / "experiments"
RESULTS = ROOT / "bench" / "results"
ARMS = {
    "a": ("sst2-arm-a-small-from-scratch", "3 layers from random weights"),
    "a-emb": ("sst2-arm-a-pretrained-embeddings", "3 random layers on the pretrained embeddings"),
    "b": ("sst2-arm-b-distill", "teacher layers, distilled (soft + hard)"),
    "c": ("sst2-arm-c-teacher-layers", "teacher layers, fine-tuned (no teacher)"),
    "d": ("sst2-arm-d-distill-hidden", "teacher layers, distilled + hidden-state matching"),
}
#: Labels short enough for the plot's axis.
SHORT = {
    "a": "random\nweights",
    "a-emb": "random blocks,\npretrained\nembeddings",
    "b": "teacher layers,\ndistilled",
    "c": "teacher layers,\nfine-tuned",
    "d": "distilled +\nhidden states",
}
HEAD_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
BITS = (8, 4, 3, 2)
#: t quantiles (two-sided 95%) for the interval of a mean over n seeds: index n - 1 degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}

#: --quick: tiny subsets, to check the script end to end (the numbers mean nothing).
QUICK_ENCODER = ["task.data.train.limit=96", "evaluate.limit=64", "stages.finetune.with.epochs=1"]
QUICK_STEPS = 4


class Runner:
    def __init__(self, quick: bool, report_only: bool = False):
        self.quick = quick
        self.report_only = report_only
        self.base = ROOT / ("runs/evidence-quick" if quick else "runs/evidence")
        self.results = self.base / "results" if quick else RESULTS
        self.results.mkdir(parents=True, exist_ok=True)
        self.log = self.base / "evidence.log"
        self.base.mkdir(parents=True, exist_ok=True)

    def apply(self, recipe: str, run_dir: Path, overrides: list[str], snapshot: str) -> dict:
        """`recipe apply` one committed recipe; keep its report and evaluation records under ``snapshot``
        (--report-only: read what an earlier run kept there)."""
        keep = self.base / "snapshots" / snapshot
        if self.report_only:
            if not (keep / "report.json").is_file():
                raise SystemExit(f"--report-only: no {keep / 'report.json'}; run the experiment first")
            report = json.loads((keep / "report.json").read_text())
            report["_snapshot"] = str(keep)
            return report
        command = [
            str(Path(sys.executable).parent / "recipe"),
            "apply",
            str(RECIPES / f"{recipe}.yaml"),
            *overrides,
            "--output",
            str(run_dir),
            "-q",
        ]
        started = time.time()
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        print(
            f"  {recipe} {' '.join(o for o in overrides if 'limit' not in o)}: exit {code}, "
            f"{time.time() - started:.0f} s",
            flush=True,
        )
        if code not in (0, 1):  # 1: a gate failed, which an experiment may well show
            raise SystemExit(f"{recipe} failed (exit {code}); see {self.log}")
        if keep.exists():
            shutil.rmtree(keep)
        keep.mkdir(parents=True)
        shutil.copy(run_dir / "report.json", keep / "report.json")
        report = json.loads((keep / "report.json").read_text())
        for index, stage in enumerate(report["stages"]):  # this run's stages only: the folder holds other runs' too
            found = run_dir / "stages" / f"{index:02d}-{stage['name']}" / "evaluation.pt"
            if found.is_file():
                shutil.copy(found, keep / f"{index:02d}-{stage['name']}.pt")
        report["_snapshot"] = str(keep)
        return report

    def steps(self, *names: str) -> list[str]:
        """--quick: every named training setting shortened."""
        return [f"{name}={QUICK_STEPS}" for name in names] if self.quick else []


# -- statistics ----------------------------------------------------------------


def mean_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval over seeds (None for the interval with one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci": None, "n": n, "values": values}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "ci": [mean - half, mean + half], "sd": sd, "n": n, "values": values}


def row(report: dict, name: str) -> dict:
    return next(r for r in report["stages"] if r["name"] == name)


def records(report: dict, stage: str):
    """The evaluation records of the run's stage named ``stage`` (None if the run kept none)."""
    import torch

    index = next(i for i, r in enumerate(report["stages"]) if r["name"] == stage)
    found = Path(report["_snapshot"]) / f"{index:02d}-{stage}.pt"
    return torch.load(found, weights_only=True) if found.is_file() else None


def task_of(kind: str, spec: dict | None = None):
    from compose.tasks import build_task

    base = (
        {"kind": kind, "metric": None, "labels": [0, 1]}
        if kind == "sequence-classification"
        else {"kind": kind, "metric": None}
    )
    return build_task(dict(base, **(spec or {})), 0)


def paired(task, metric: str, higher: bool, reference, own, samples: int = 1000):
    from compose.evaluation.paired import compare_with_baseline

    found = compare_with_baseline(
        task, metric, higher, reference, own, {"bootstrap_samples": samples, "confidence": 0.95}, seed=0
    )
    return found


def metric_interval(task, metric: str, own, samples: int = 1000) -> list[float] | None:
    """Percentile bootstrap interval of the metric itself (resampling the evaluation's units)."""
    import torch

    units = len(own["ids"])
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, units, (samples, units), generator=generator)
    values = task.metric_from_records(own, metric, index).double()
    low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()
    return [low, high]


def fmt(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def ci_pct(ci) -> str:
    return "-" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%"


def ci_num(ci, digits=4) -> str:
    return "-" if not ci else f"{ci[0]:.{digits}f}-{ci[1]:.{digits}f}"


def write(runner: Runner, name: str, data: dict, markdown: str) -> None:
    (runner.results / f"evidence-{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (runner.results / f"evidence-{name}.md").write_text(markdown, encoding="utf-8")
    print(f"  wrote {runner.results / f'evidence-{name}.md'}", flush=True)


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- 1. encoder arms -------------------------------------------------------------


def encoder(runner: Runner, seeds: list[int]) -> dict:
    quick = QUICK_ENCODER if runner.quick else []
    depth_quick = ["stages.quantize-3bit.with.samples=16"] if runner.quick else []
    runs = {}
    for seed in seeds:
        folder = runner.base / f"sst2-s{seed}"
        common = [f"seed={seed}", *quick]
        teacher = runner.apply("sst2-teacher", folder, common, f"encoder/teacher-s{seed}")
        runs[("teacher", seed)] = teacher
        for arm, (recipe, _) in ARMS.items():
            report = runner.apply(
                recipe,
                folder,
                [*common, *runner.steps(f"stages.arm-{arm}.with.training.max_steps")],
                f"encoder/arm-{arm}-s{seed}",
            )
            runs[(arm, seed)] = report
            if arm == "c":  # experiment 5's 3-layer model is arm (c)'s: compress it while it is in the folder
                runs[("depth-3", seed)] = runner.apply(
                    "sst2-depth-3-layers",
                    folder,
                    [
                        *common,
                        *depth_quick,
                        *runner.steps(
                            "stages.arm-c.with.training.max_steps", "stages.prune-40.with.recovery.max_steps"
                        ),
                    ],
                    f"depth/3-layers-s{seed}",
                )
        runs[("depth-6", seed)] = runner.apply(
            "sst2-depth",
            folder,
            [*common, *depth_quick, *runner.steps("stages.prune-40.with.recovery.max_steps")],
            f"depth/6-layers-s{seed}",
        )
    return runs


def encoder_results(runner: Runner, runs: dict, seeds: list[int]) -> None:
    data = {"seeds": seeds, "teacher": {}, "arms": {}}
    teacher_acc = [row(runs[("teacher", s)], "finetune")["metric"]["value"] for s in seeds]
    data["teacher"] = mean_interval(teacher_acc)
    lines = [
        "# Experiment 1: train large then compress vs train small (encoder, SST-2)",
        "",
        "Produced by `python bench/evidence.py encoder` from recipes/experiments/sst2-*.yaml. Teacher:",
        "the pretrained all-MiniLM-L6-v2 (6 layers, 22.7M parameters) fine-tuned for one epoch on 6,000",
        "random SST-2 training rows (the seed draws them). Every arm ends in the same 3-layer shape (MiniLM's",
        "width, 12 heads, vocabulary) and trains 300 steps of 32 on the same rows.",
        "Accuracy on all 872 dev sentences. Mean over seeds with a 95% t-interval (n = 3); per run,",
        "retained (vs that seed's teacher) with its paired-bootstrap 95% interval over the dev sentences.",
        "",
        f"Teacher (6 layers): accuracy {fmt(data['teacher']['mean'])} "
        f"(95% CI {ci_num(data['teacher']['ci'])}; seeds: {', '.join(fmt(v) for v in teacher_acc)})",
        "",
        "| arm | what | params | accuracy, mean (95% CI over seeds) | retained, mean | agreement with teacher | KL(teacher ‖ arm) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, (recipe, what) in ARMS.items():
        rows = [row(runs[(arm, s)], f"arm-{arm}") for s in seeds]
        accuracy = mean_interval([r["metric"]["value"] for r in rows])
        retained = mean_interval([r["retained"] for r in rows])
        agreement = mean_interval([r["agreement"] for r in rows])
        kl = mean_interval([r["kl"] for r in rows])
        data["arms"][arm] = {
            "recipe": f"recipes/experiments/{recipe}.yaml",
            "what": what,
            "accuracy": accuracy,
            "retained": retained,
            "agreement": agreement,
            "kl": kl,
            "per_seed": [
                {
                    "seed": s,
                    "accuracy": r["metric"]["value"],
                    "retained": r["retained"],
                    "retained_ci": r["retained_ci"],
                    "agreement": r["agreement"],
                    "kl": r["kl"],
                    "params": r["params"],
                }
                for s, r in zip(seeds, rows)
            ],
        }
        lines.append(
            f"| ({arm}) | {what} | {rows[0]['params'] / 1e6:.1f}M | {fmt(accuracy['mean'])} ({ci_num(accuracy['ci'])}) | "
            f"{pct(retained['mean'])} | {pct(agreement['mean'])} | {fmt(kl['mean'])} |"
        )
    lines += [
        "",
        "Every run:",
        "",
        "| arm | seed | accuracy | retained (paired 95% CI) | agreement | KL |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm in ARMS:
        for entry in data["arms"][arm]["per_seed"]:
            lines.append(
                f"| ({arm}) | {entry['seed']} | {fmt(entry['accuracy'])} | {pct(entry['retained'])} "
                f"({ci_pct(entry['retained_ci'])}) | {pct(entry['agreement'])} | {fmt(entry['kl'])} |"
            )
    means = {arm: data["arms"][arm]["accuracy"] for arm in ARMS}
    lines += ["", verdict_encoder(data), ""]
    data["verdict"] = lines[-2]
    write(runner, "encoder", data, "\n".join(lines))
    plt = figure()
    fig, axis = plt.subplots(figsize=(8.5, 4.6))
    for i, arm in enumerate(ARMS):
        values = means[arm]["values"]
        axis.scatter([i] * len(values), values, color="0.6", zorder=2, s=18)
        low, high = means[arm]["ci"] or (means[arm]["mean"],) * 2
        axis.errorbar(
            [i],
            [means[arm]["mean"]],
            yerr=[[means[arm]["mean"] - low], [high - means[arm]["mean"]]],
            fmt="o",
            color="C0",
            capsize=6,
            zorder=3,
        )
    axis.axhline(data["teacher"]["mean"], color="C3", linestyle="--", label="teacher (6 layers), mean")
    axis.set_xticks(range(len(ARMS)), [f"({a})\n{SHORT[a]}" for a in ARMS], fontsize=8)
    axis.set_ylabel("SST-2 dev accuracy")
    axis.set_title(f"3-layer students, {len(seeds)} seeds: mean and 95% CI (grey: each seed)", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(runner.results / "evidence-encoder.png", dpi=120)
    plt.close(fig)


def verdict_encoder(data: dict) -> str:
    """Each claim as a paired difference: per seed the two arms share the teacher and the rows,
    so the interval is over the seeds' differences (t, n - 1 degrees of freedom)."""
    parts = []
    for better, worse, claim in (
        ("b", "a", "compressing a pretrained, fine-tuned model beats training the small shape from random weights"),
        ("b", "a-emb", "it beats random blocks on the pretrained embeddings"),
        ("b", "c", "distillation beats fine-tuning the teacher's layers alone"),
        ("d", "b", "adding intermediate-layer matching beats output-only distillation"),
    ):
        diffs = [
            x["accuracy"] - y["accuracy"]
            for x, y in zip(data["arms"][better]["per_seed"], data["arms"][worse]["per_seed"])
        ]
        found = mean_interval(diffs)
        ci = found["ci"]
        word = "holds" if found["mean"] > 0 else "does not hold"
        if ci and ci[0] > 0:
            sure = "the interval excludes no difference"
        elif ci and ci[1] < 0:
            sure = "the interval shows the opposite"
        else:
            sure = "the interval includes no difference, so these runs cannot tell"
        interval = f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}" if ci else "-"
        parts.append(
            f"({better}) vs ({worse}), '{claim}': {word} on the mean, {100 * found['mean']:+.1f} points "
            f"(95% CI of the paired difference over seeds {interval}); {sure}."
        )
        data.setdefault("claims", []).append({"better": better, "worse": worse, "claim": claim, "difference": found})
    return " ".join(parts)


# -- 2. decoder -------------------------------------------------------------------


DECODER_ARMS = {
    "large-then-compress": "llama-large-then-compress",
    "small, equal tokens": "llama-small-equal-tokens",
    "small, equal FLOPs": "llama-small-equal-flops",
}


def decoder(runner: Runner) -> None:
    quick = (
        [
            f"task.data.train.path={ROOT.parent / 'shared/data/wikitext2/wiki.valid.tokens'}",
            "evaluate.limit=16",
            "model.tokenizer.train.vocab_size=512",
        ]
        if runner.quick
        else []
    )
    reports = {}
    for label, recipe in DECODER_ARMS.items():
        steps = runner.steps(
            *(
                ["stages.pretrain.with.max_steps", "stages.distill.with.training.max_steps"]
                if "large" in label
                else ["stages.train.with.max_steps"]
            )
        )
        reports[label] = runner.apply(recipe, runner.base / recipe, [*quick, *steps], f"decoder/{recipe}")
    task = task_of("causal-lm")
    reference = records(reports["large-then-compress"], "distill")
    data = {"arms": {}}
    lines = [
        "# Experiment 2: train large then compress vs train small (decoder, WikiText-2)",
        "",
        "Produced by `python bench/evidence.py decoder` from recipes/experiments/llama-*.yaml. Trained on",
        "WikiText-2's train split (2.09M words; byte-level BPE of 4,096 tokens learned from it), batches of",
        "16 x 128 tokens; evaluated on the first 128 blocks of 128 tokens of the test split. Intervals:",
        "percentile bootstrap over the 128 blocks (1,000 resamples); the ratio is paired (same resamples).",
        "Training FLOPs: 6 x parameters x tokens per step, plus 2 x the teacher's parameters x tokens per",
        "distillation step (its forward pass).",
        "",
        "| arm | final shape | training steps | tokens | training FLOPs | test perplexity (95% CI) | "
        "perplexity / large-then-compress's (95% CI) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, report in reports.items():
        final = report["stages"][-1]
        own = records(report, final["name"])
        interval = metric_interval(task, "perplexity", own) if own else None
        ratio = paired(task, "perplexity", True, reference, own) if own and reference else None
        steps = sum(_steps(r) for r in report["stages"])
        flops = _flops(report)
        data["arms"][label] = {
            "recipe": f"recipes/experiments/{DECODER_ARMS[label]}.yaml",
            "perplexity": final["metric"]["value"],
            "perplexity_ci": interval,
            "ratio_to_large_then_compress_ci": list(ratio.retained_ci) if ratio and ratio.retained_ci else None,
            "params": final["params"],
            "steps": steps,
            "flops": flops,
            "stages": [
                {"name": r["name"], "perplexity": r["metric"]["value"], "params": r["params"], "seconds": r["seconds"]}
                for r in report["stages"]
            ],
        }
        lines.append(
            f"| {label} | {final['params'] / 1e6:.2f}M params | {steps} | {steps * 16 * 128 / 1e6:.2f}M | "
            f"{flops:.2e} | {fmt(final['metric']['value'], 2)} ({ci_num(interval, 2)}) | "
            f"{ci_num(data['arms'][label]['ratio_to_large_then_compress_ci'], 3)} |"
        )
    large = data["arms"]["large-then-compress"]
    lines += [
        "",
        "Every stage:",
        "",
        "| arm | stage | perplexity | params | seconds |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for label, arm in data["arms"].items():
        for stage in arm["stages"]:
            lines.append(
                f"| {label} | {stage['name']} | {fmt(stage['perplexity'], 2)} | {stage['params'] / 1e6:.2f}M | "
                f"{stage['seconds']:.0f} |"
            )
    verdicts = []
    for label in ("small, equal tokens", "small, equal FLOPs"):
        arm = data["arms"][label]
        ci = arm["ratio_to_large_then_compress_ci"]  # this arm's perplexity / large-then-compress's
        if ci is None:
            continue
        if ci[1] < 1:
            word = "the small model trained directly is better (its perplexity is lower, interval excludes equality)"
        elif ci[0] > 1:
            word = "large-then-compress is better (interval excludes equality)"
        else:
            word = "the interval includes equality: no difference shown"
        verdicts.append(
            f"Against {label}: {word}; large-then-compress perplexity {fmt(large['perplexity'], 2)}, "
            f"{label} {fmt(arm['perplexity'], 2)}."
        )
    lines += ["", " ".join(verdicts), ""]
    data["verdict"] = " ".join(verdicts)
    write(runner, "decoder", data, "\n".join(lines))
    plt = figure()
    fig, axis = plt.subplots(figsize=(7, 4.2))
    labels = list(data["arms"])
    values = [data["arms"][label]["perplexity"] for label in labels]
    intervals = [data["arms"][label]["perplexity_ci"] or (v, v) for label, v in zip(labels, values)]
    axis.bar(range(len(labels)), values, color=["C3", "C0", "C0"], alpha=0.7)
    axis.errorbar(
        range(len(labels)),
        values,
        yerr=[[v - c[0] for v, c in zip(values, intervals)], [c[1] - v for v, c in zip(values, intervals)]],
        fmt="none",
        color="k",
        capsize=6,
    )
    axis.set_xticks(
        range(len(labels)), [f"{label}\n{data['arms'][label]['flops']:.1e} FLOPs" for label in labels], fontsize=8
    )
    axis.set(
        ylabel="test perplexity (95% CI over blocks; lower is better)",
        title="WikiText-2: the same 2 x 64 Llama, three ways to train it",
    )
    axis.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(runner.results / "evidence-decoder.png", dpi=120)
    plt.close(fig)


def _steps(stage_row: dict) -> int:
    from compose.evaluation.run_comparison import training_steps

    return training_steps(stage_row.get("details") or {})


def _flops(report: dict) -> float:
    """6 x params x tokens for each training step; plus 2 x the teacher's params x tokens per distillation step."""
    tokens_per_step = 16 * 128
    total = 0.0
    previous = report["stages"][0]["params"]
    for stage in report["stages"][1:]:
        steps = _steps(stage)
        total += 6 * stage["params"] * tokens_per_step * steps
        if stage["plugin"] == "distill":
            total += 2 * previous * tokens_per_step * steps
        previous = stage["params"]
    return total


# -- 3. heads -------------------------------------------------------------------


def heads(runner: Runner) -> None:
    quick = QUICK_ENCODER if runner.quick else []
    folder = runner.base / "heads"
    reports = {}
    for ratio in HEAD_RATIOS:
        reports[ratio] = runner.apply(
            "sst2-heads",
            folder,
            ["seed=1", *quick, f"stages.prune.with.ratio={ratio}", *runner.steps("stages.recover.with.max_steps")],
            f"heads/ratio-{ratio}",
        )
    first = reports[HEAD_RATIOS[0]]
    base = row(first, "finetune")
    data = {"baseline": {"accuracy": base["metric"]["value"], "latency": base["latency"]}, "ratios": []}
    points = [
        {
            "ratio": 0.0,
            "accuracy": base["metric"]["value"],
            "retained": 1.0,
            "retained_ci": [1.0, 1.0],
            "recovered": base["metric"]["value"],
            "recovered_retained": 1.0,
            "recovered_ci": [1.0, 1.0],
            "batch1_p50_ms": base["latency"]["batch1_p50_ms"],
            "throughput": base["latency"]["throughput_per_s"],
            "speedup": 1.0,
            "params": base["params"],
        }
    ]
    for ratio, report in reports.items():
        pruned, recovered = row(report, "prune"), row(report, "recover")
        points.append(
            {
                "ratio": ratio,
                "accuracy": pruned["metric"]["value"],
                "retained": pruned["retained"],
                "retained_ci": pruned["retained_ci"],
                "agreement": pruned["agreement"],
                "recovered": recovered["metric"]["value"],
                "recovered_retained": recovered["retained"],
                "recovered_ci": recovered["retained_ci"],
                "batch1_p50_ms": recovered["latency"]["batch1_p50_ms"],
                "throughput": recovered["latency"]["throughput_per_s"],
                "speedup": recovered["speedup"],
                "params": recovered["params"],
            }
        )
    data["ratios"] = points
    lines = [
        "# Experiment 3: attention-head redundancy (survey 2.4), MiniLM on SST-2",
        "",
        "Produced by `python bench/evidence.py heads` from recipes/experiments/sst2-heads.yaml (seed 1): the",
        "fine-tuned 6-layer MiniLM (72 heads), a share of its heads removed by Taylor importance, evaluated",
        "as pruned and after a 100-step recovery fine-tune. Retained vs the fine-tuned model, with paired",
        "bootstrap 95% intervals over the 872 dev sentences. Speed of the recovered model at 1 thread (batch",
        "1 median latency of 50 sentences; batch 64 throughput over 3 batches): single measurements,",
        "noisy to about +-10%.",
        "",
        "| heads removed | accuracy | retained (95% CI) | after recovery | retained (95% CI) | b1 p50 | b64 ex/s | x faster |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lines.append(
            f"| {100 * p['ratio']:.0f}% | {fmt(p['accuracy'])} | {pct(p['retained'])} ({ci_pct(p['retained_ci'])}) | "
            f"{fmt(p['recovered'])} | {pct(p['recovered_retained'])} ({ci_pct(p['recovered_ci'])}) | "
            f"{p['batch1_p50_ms']:.1f} ms | {p['throughput']:.0f} | {p['speedup']:.2f}x |"
        )
    within = [p["ratio"] for p in points if p["retained"] is not None and p["retained"] >= 0.99]
    within_recovered = [
        p["ratio"] for p in points if p["recovered_retained"] is not None and p["recovered_retained"] >= 0.99
    ]
    at40 = next(p for p in points if abs(p["ratio"] - 0.4) < 1e-9)

    def largest(ratios):
        removed = [r for r in ratios if r > 0]
        return f"{100 * max(removed):.0f}%" if removed else "none of the shares tried"

    verdict = (
        f"Largest share removed with < 1% loss (retained >= 99% on the point estimate): "
        f"{largest(within)} without recovery, {largest(within_recovered)} with it. "
        f"At 40%: retained {pct(at40['retained'])} ({ci_pct(at40['retained_ci'])}) without recovery, "
        f"{pct(at40['recovered_retained'])} ({ci_pct(at40['recovered_ci'])}) with it, "
        f"{at40['speedup']:.2f}x the throughput."
    )
    lines += ["", verdict, ""]
    data["verdict"] = verdict
    write(runner, "heads", data, "\n".join(lines))
    plt = figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ci_key, label in (
        ("retained", "retained_ci", "no recovery"),
        ("recovered_retained", "recovered_ci", "100-step recovery"),
    ):
        xs = [100 * p["ratio"] for p in points]
        ys = [p[key] for p in points]
        lows = [y - (p[ci_key] or (y, y))[0] for y, p in zip(ys, points)]
        highs = [(p[ci_key] or (y, y))[1] - y for y, p in zip(ys, points)]
        left.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=label)
    left.axhline(0.99, color="0.5", linestyle=":", label="99% retained")
    left.set(xlabel="heads removed (%)", ylabel="retained accuracy (95% CI)", title="accuracy")
    right.plot([100 * p["ratio"] for p in points], [p["throughput"] for p in points], marker="o", label="b64 ex/s")
    right.set(xlabel="heads removed (%)", ylabel="examples/s at batch 64, 1 thread", title="speed")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(runner.results / "evidence-heads.png", dpi=120)
    plt.close(fig)


# -- 4. bits --------------------------------------------------------------------


def bits(runner: Runner) -> None:
    quick = QUICK_ENCODER + ["stages.quantize.with.samples=16"] if runner.quick else []
    folder = runner.base / "sst2-s1"
    points = []
    base = None
    for method in ("gptq", "rtn"):
        for b in BITS:
            report = runner.apply(
                "sst2-bits",
                folder,
                ["seed=1", *quick, f"stages.quantize.with.bits={b}", f"stages.quantize.with.method={method}"],
                f"bits/{method}-{b}",
            )
            base = row(report, "finetune")
            q = row(report, "quantize")
            points.append(
                {
                    "method": method,
                    "bits": b,
                    "_records": records(report, "quantize"),
                    "accuracy": q["metric"]["value"],
                    "retained": q["retained"],
                    "retained_ci": q["retained_ci"],
                    "agreement": q["agreement"],
                    "kl": q["kl"],
                    "size_bytes": q["size_bytes"],
                    "size_ratio": q["size_ratio"],
                    "seconds": q["seconds"],
                }
            )
    task = task_of("sequence-classification")
    by = {(p["method"], p["bits"]): p for p in points}
    for b in BITS:  # RTN's accuracy over GPTQ's on the same sentences: a paired interval of the difference
        found = paired(task, "accuracy", True, by[("gptq", b)].pop("_records"), by[("rtn", b)].pop("_records"))
        by[("rtn", b)]["rtn_over_gptq_ci"] = list(found.retained_ci) if found and found.retained_ci else None
    data = {"baseline": {"accuracy": base["metric"]["value"], "size_bytes": base["size_bytes"]}, "points": points}
    lines = [
        "# Experiment 4: bits (survey 2.2), GPTQ vs round to nearest, MiniLM on SST-2",
        "",
        "Produced by `python bench/evidence.py bits` from recipes/experiments/sst2-bits.yaml (seed 1): the",
        "fine-tuned 6-layer MiniLM, every linear layer of its blocks quantized in groups of 128 by GPTQ",
        "(128 calibration sentences) or round to nearest (RTN); embedding tables row-wise at 8 bits in",
        "both. Size: the whole saved artifact (weights, config, tokenizer). Retained with its paired",
        f"bootstrap 95% interval over the 872 dev sentences. Fine-tuned fp32: accuracy "
        f"{fmt(base['metric']['value'])}, {base['size_bytes'] / 1e6:.1f} MB.",
        "",
        "| method | bits | accuracy | retained (95% CI) | agreement | KL(fp32 ‖ q) | whole artifact | x smaller |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lines.append(
            f"| {p['method']} | {p['bits']} | {fmt(p['accuracy'])} | {pct(p['retained'])} "
            f"({ci_pct(p['retained_ci'])}) | {pct(p['agreement'])} | {fmt(p['kl'])} | "
            f"{p['size_bytes'] / 1e6:.1f} MB | {p['size_ratio']:.2f}x |"
        )
    parts = []
    for b in BITS:
        g, r = by[("gptq", b)], by[("rtn", b)]
        ci = r["rtn_over_gptq_ci"]
        shown = (
            "GPTQ better (interval below 1)"
            if ci and ci[1] < 1
            else "RTN better (interval above 1)"
            if ci and ci[0] > 1
            else "no difference shown"
        )
        parts.append(
            f"{b}-bit: GPTQ {pct(g['retained'])} vs RTN {pct(r['retained'])}, RTN/GPTQ accuracy "
            f"{ci_num(ci, 3)} ({shown})"
        )
    verdict = (
        "Retained, GPTQ vs RTN, with the paired 95% interval of RTN's accuracy over GPTQ's: " + "; ".join(parts) + "."
    )
    lines += ["", verdict, ""]
    data["verdict"] = verdict
    write(runner, "bits", data, "\n".join(lines))
    plt = figure()
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for method in ("gptq", "rtn"):
        ps = [p for p in points if p["method"] == method]
        ys = [p["retained"] for p in ps]
        axis.errorbar(
            [p["size_bytes"] / 1e6 for p in ps],
            ys,
            yerr=[
                [y - (p["retained_ci"] or (y, y))[0] for y, p in zip(ys, ps)],
                [(p["retained_ci"] or (y, y))[1] - y for y, p in zip(ys, ps)],
            ],
            marker="o",
            capsize=3,
            label=method,
        )
        for p in ps:
            axis.annotate(
                f"{p['bits']}b",
                (p["size_bytes"] / 1e6, p["retained"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    axis.set(xlabel="whole artifact (MB)", ylabel="retained accuracy (95% CI)", title="GPTQ vs round to nearest")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(runner.results / "evidence-bits.png", dpi=120)
    plt.close(fig)


# -- 5. depth -------------------------------------------------------------------


def depth_results(runner: Runner, runs: dict, seeds: list[int]) -> None:
    task = task_of("sequence-classification")
    data = {"seeds": seeds, "per_seed": []}
    six, three = [], []
    for seed in seeds:
        big = runs[("depth-6", seed)]
        small = runs[("depth-3", seed)]
        big_final = row(big, "quantize-3bit")
        # the 3-layer model's own baseline is arm (c)'s fine-tuned output, not the 6-layer teacher
        reference, own = records(small, "arm-c"), records(small, "quantize-3bit")
        compared = paired(task, "accuracy", True, reference, own)
        small_base = row(small, "arm-c")["metric"]["value"]
        small_final = row(small, "quantize-3bit")["metric"]["value"]
        entry = {
            "seed": seed,
            "six_layers": {
                "baseline": row(big, "finetune")["metric"]["value"],
                "compressed": big_final["metric"]["value"],
                "retained": big_final["retained"],
                "retained_ci": big_final["retained_ci"],
                "size_ratio": big_final["size_ratio"],
            },
            "three_layers": {
                "baseline": small_base,
                "compressed": small_final,
                "retained": small_final / small_base,
                "retained_ci": list(compared.retained_ci) if compared and compared.retained_ci else None,
            },
        }
        data["per_seed"].append(entry)
        six.append(entry["six_layers"]["retained"])
        three.append(entry["three_layers"]["retained"])
    data["six_layers"] = mean_interval(six)
    data["three_layers"] = mean_interval(three)
    diffs = mean_interval([a - b for a, b in zip(six, three)])
    data["difference"] = diffs
    lines = [
        "# Experiment 5: are larger models more amenable to compression? (MiniLM 6 vs 3 layers, SST-2)",
        "",
        "Produced by `python bench/evidence.py depth` (with the encoder experiment's runs) from",
        "recipes/experiments/sst2-depth.yaml and sst2-depth-3-layers.yaml. The same compression, 40% of the",
        "attention heads removed (Taylor importance, 100-step recovery) then 3-bit GPTQ (groups of 128,",
        "embeddings 8-bit), on the fine-tuned 6-layer MiniLM and on a fine-tuned 3-layer model (arm (c) of",
        "experiment 1: the teacher's layers 0, 2, 4 fine-tuned). Each retains relative to its own",
        "uncompressed accuracy; per-run intervals are paired bootstraps over the 872 dev sentences.",
        "",
        "| seed | 6 layers: before -> after | retained (95% CI) | 3 layers: before -> after | retained (95% CI) |",
        "| ---: | --- | ---: | --- | ---: |",
    ]
    for e in data["per_seed"]:
        s, t = e["six_layers"], e["three_layers"]
        lines.append(
            f"| {e['seed']} | {fmt(s['baseline'])} -> {fmt(s['compressed'])} | {pct(s['retained'])} "
            f"({ci_pct(s['retained_ci'])}) | {fmt(t['baseline'])} -> {fmt(t['compressed'])} | "
            f"{pct(t['retained'])} ({ci_pct(t['retained_ci'])}) |"
        )
    span = f"{100 * diffs['ci'][0]:+.1f} to {100 * diffs['ci'][1]:+.1f}" if diffs["ci"] else "-"
    verdict = (
        f"Mean retained: 6 layers {pct(data['six_layers']['mean'])}, 3 layers {pct(data['three_layers']['mean'])}; "
        f"difference {100 * diffs['mean']:+.1f} points (95% CI over seeds {span} points). "
        + (
            "The larger model retains more, and the interval excludes no difference."
            if diffs["ci"] and diffs["ci"][0] > 0
            else "The smaller model retains more, and the interval excludes no difference."
            if diffs["ci"] and diffs["ci"][1] < 0
            else "The interval includes no difference: these runs do not show that the larger model is more "
            "amenable to compression."
        )
    )
    lines += ["", verdict, ""]
    data["verdict"] = verdict
    write(runner, "depth", data, "\n".join(lines))
    plt = figure()
    fig, axis = plt.subplots(figsize=(7, 4.2))
    for offset, key, label in (
        (-0.1, "six_layers", "6 layers (fine-tuned MiniLM)"),
        (0.1, "three_layers", "3 layers (arm (c))"),
    ):
        xs = [e["seed"] + offset for e in data["per_seed"]]
        ys = [e[key]["retained"] for e in data["per_seed"]]
        cis = [e[key]["retained_ci"] or (y, y) for e, y in zip(data["per_seed"], ys)]
        axis.errorbar(
            xs,
            ys,
            yerr=[[y - c[0] for y, c in zip(ys, cis)], [c[1] - y for y, c in zip(ys, cis)]],
            fmt="o",
            capsize=4,
            label=label,
        )
    axis.axhline(1.0, color="0.5", linestyle=":")
    axis.set_xticks([e["seed"] for e in data["per_seed"]], [f"seed {e['seed']}" for e in data["per_seed"]])
    axis.set(
        ylabel="retained accuracy vs own baseline (95% CI)",
        title="40% heads + 3-bit GPTQ on a 6-layer and a 3-layer model",
    )
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(runner.results / "evidence-depth.png", dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["all", "encoder", "decoder", "heads", "bits", "depth"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, to test the script (numbers meaningless)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite the results from the reports and records earlier runs kept",
    )
    args = parser.parse_args(argv)
    runner = Runner(args.quick, args.report_only)
    started = time.time()
    todo = ["encoder", "bits", "heads", "decoder"] if args.experiment == "all" else [args.experiment]
    if "depth" in todo:
        todo[todo.index("depth")] = "encoder"  # experiment 5 runs inside experiment 1's folders
    for experiment in dict.fromkeys(todo):
        print(f"experiment: {experiment}", flush=True)
        if experiment == "encoder":
            runs = encoder(runner, args.seeds)
            encoder_results(runner, runs, args.seeds)
            depth_results(runner, runs, args.seeds)
        elif experiment == "decoder":
            decoder(runner)
        elif experiment == "heads":
            heads(runner)
        elif experiment == "bits":
            bits(runner)
    print(f"done in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
