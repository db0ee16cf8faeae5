"""`amp:` in any training stage's settings: bf16 or fp16 mixed precision through accelerate.

``amp: auto`` picks per machine: bf16 where the hardware runs it natively (a CPU with
AVX512-BF16 or AMX, an Arm CPU with BF16, a CUDA GPU with bf16), fp16 on CUDA GPUs
without bf16, otherwise fp32. A CPU without bf16 instructions emulates it, many times
slower than fp32 (bench/results/design-measurements.md), so bf16 there is never what a
user wants.
"""

from __future__ import annotations

from pathlib import Path

from compose import hookimpl
from compose.api import Check, TrainingExtension, TrainingSetup, load_schema_file

#: Where Linux lists the CPU's instruction-set flags (a second opinion next to torch's).
CPUINFO = Path("/proc/cpuinfo")
#: cpuinfo flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX, Arm's BF16 ("Features").
BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX", "bf16": "BF16"}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_device():
    """The device a run on this machine computes on (as the executor picks it)."""
    import torch

    return torch.device("cuda" if cuda_available() else "cpu")


def cpu_flags() -> set[str]:
    """The CPU flags /proc/cpuinfo lists (empty where there is no such file)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_bf16_instructions() -> list[str]:
    """The native bf16 instruction sets of this CPU, in words (empty: bf16 is emulated).

    torch's own probes (cpuinfo, on every OS) and /proc/cpuinfo's flags are both asked;
    either one seeing the instructions is enough.
    """
    import torch

    found = [words for flag, words in BF16_FLAGS.items() if flag in cpu_flags()]
    probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    for words, probe in probes.items():
        if words not in found and getattr(torch.cpu, probe, lambda: False)():
            found.append(words)
    return found


def cpu_capability() -> str:
    """The vector instruction set torch dispatches its CPU kernels to ("AVX2", "AVX512"...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cuda_bf16_native() -> bool:
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the keyword
        return torch.cuda.is_bf16_supported()


def resolve(value: str, device) -> tuple[str | None, str]:
    """The precision ``amp: value`` trains in on ``device``: ("bf16" | "fp16" | None for fp32, why)."""
    if value != "auto":
        return value, "set in the recipe"
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        if cuda_bf16_native():
            return "bf16", f"this GPU ({name}) runs bf16 natively"
        return "fp16", f"this GPU ({name}) has no native bf16; fp16 with loss scaling"
    if device.type == "cpu":
        native = cpu_bf16_instructions()
        if native:
            return "bf16", f"this CPU ({', '.join(native)}) runs bf16 natively"
        return None, f"this CPU ({cpu_capability()}) has no native bf16 (emulated bf16 is many times slower)"
    return None, f"no mixed precision chosen for device type '{device.type}'"


def explain(value: str, device) -> str:
    """``auto -> fp32: this CPU (AVX2) has no native bf16 ...`` (what recipe plan and the log show)."""
    precision, why = resolve(value, device)
    return f"{value} -> {precision or 'fp32'}: {why}"


def setup(training: TrainingSetup, value: str) -> None:
    precision, why = resolve(value, training.device)
    if precision is not None:
        training.accelerator_kwargs["mixed_precision"] = precision
    training.notes["amp"] = {"requested": value, "used": precision or "fp32", "why": why}
    if value == "auto":
        training.announce.append(f"amp: {explain(value, training.device)}")


def describe(value: str) -> str:
    return f"amp {explain(value, run_device())}" if value == "auto" else f"amp {value}"


def check(value: str, plan) -> list[Check]:
    if value not in ("bf16", "fp16"):
        return []  # auto and fp32 suit every machine (and need no torch to say so)
    device = run_device()
    if value == "fp16" and device.type != "cuda":
        return [
            Check(
                "amp: fp16 needs a CUDA GPU and this machine has none; use `amp: auto` (bf16 where "
                "the CPU has bf16 instructions, ~1.8x faster than fp32 there; fp32 elsewhere)"
            )
        ]
    if value == "bf16" and device.type == "cpu" and not cpu_bf16_instructions():
        return [
            Check(
                f"amp: bf16 on this CPU ({cpu_capability()}, no AVX512-BF16 or AMX) is emulated and much "
                "slower than fp32 (a matmul took ~56x as long on an AVX2 EPYC); use `amp: auto` "
                "(fp32 here, bf16 where the hardware has it)",
                "warning",
            )
        ]
    if value == "bf16" and device.type == "cuda" and not cuda_bf16_native():
        return [Check("amp: bf16 on this GPU is emulated and slow; use `amp: auto` (fp16 here)", "warning")]
    return []


@hookimpl
def compose_register_training_extensions(register):
    register(
        TrainingExtension(
            name="amp",
            schema=load_schema_file("compose.plugins.training", "amp.schema.json"),
            setup=setup,
            description="Mixed precision (bf16 or fp16, or auto: what the hardware runs natively) "
            "for training stages, through accelerate.",
            check=check,
            describe=describe,
        )
    )
