"""`amp:` mixed precision in training stages."""

import pytest
import torch

from compose.cli.main import main
from compose.errors import RecipeError
from compose.plugins.training import amp
from compose.recipe.load import load_recipe
from compose.run.training import train_model

AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """cpu(cpuinfo_text, torch_sees_bf16=False, capability="AVX2"): fake this machine's CPU (and no GPU)."""

    def fake(cpuinfo: str | None, torch_sees_bf16: bool = False, capability: str = "AVX2"):
        path = tmp_path / "cpuinfo"
        if cpuinfo is None:
            path = tmp_path / "no-such-file"  # not Linux
        else:
            path.write_text(cpuinfo, encoding="utf-8")
        monkeypatch.setattr(amp, "CPUINFO", path)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: torch_sees_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: torch_sees_bf16)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(amp, "cuda_available", lambda: False)

    return fake


def activation_dtypes(make_context, tiny_bert, settings: str) -> tuple[list, object]:
    """dtypes of a transformer block's query projection outputs during training steps."""
    model, tokenizer = tiny_bert
    ctx = make_context(f"- {{name: ft, uses: train, with: {settings}}}", model, tokenizer, overrides=())
    dtypes = []
    query = model.bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trained, _ = train_model(ctx)
    handle.remove()
    return dtypes, trained


def test_bf16_computes_activations_in_bf16_and_keeps_fp32_weights(make_context, tiny_bert):
    dtypes, trained = activation_dtypes(make_context, tiny_bert, "{max_steps: 2, amp: bf16}")
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in trained.parameters())


def test_without_amp_activations_stay_fp32(make_context, tiny_bert):
    dtypes, _ = activation_dtypes(make_context, tiny_bert, "{max_steps: 1}")
    assert dtypes == [torch.float32]


def test_fp16_on_a_cpu_only_machine_is_a_validation_error_that_suggests_auto(write_recipe, host, monkeypatch):
    monkeypatch.setattr(amp, "cuda_available", lambda: False)
    recipe = write_recipe("- {name: ft, uses: train, with: {amp: fp16}}")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, host=host)
    problem = info.value.problems[0]
    assert problem.path == "$.stages[0].with.amp" and "use `amp: auto`" in problem.message


def test_amp_on_a_stage_that_does_not_train_is_an_unknown_key(write_recipe):
    from compose import hookimpl
    from compose.api import StageType
    from compose.plugin_host import PluginHost
    from compose.plugins.training import amp

    class Quantizer:
        @hookimpl
        def compose_register_stages(self, register):
            schema = {"type": "object", "additionalProperties": False, "properties": {"bits": {"default": 4}}}
            register(StageType("quantize", lambda ctx: None, schema, "does not train"))

    host = PluginHost()
    host.register(amp)
    host.register(Quantizer())
    with pytest.raises(RecipeError, match="unknown key 'amp'"):
        load_recipe(write_recipe("- {name: q, uses: quantize, with: {amp: bf16}}"), host=host)


def test_the_trained_model_runs_in_fp32_again_after_bf16_training(make_context, tiny_bert):
    _, trained = activation_dtypes(make_context, tiny_bert, "{max_steps: 1, amp: bf16}")
    seen = []
    query = trained.bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    trained(input_ids=torch.tensor([[2, 5, 6, 3]]))
    handle.remove()
    assert seen == [torch.float32]  # evaluation and later stages are not silently in bf16


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_bf16_on_decoders_and_t5(make_context, tiny_llama, tiny_t5, family):
    model, tokenizer = tiny_llama if family == "decoder" else tiny_t5
    ctx = make_context(
        "- {name: ft, uses: train, with: {max_steps: 2, amp: bf16}}", model, tokenizer, overrides=(), family=family
    )
    dtypes = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trained, summary = train_model(ctx)
    handle.remove()
    assert set(dtypes) == {torch.bfloat16} and all(p.dtype == torch.float32 for p in trained.parameters())
    assert summary.steps == 2


# -- amp: auto -----------------------------------------------------------------------


def test_auto_is_fp32_on_a_cpu_without_bf16_instructions_and_says_why(cpu):
    cpu(AVX2_CPUINFO)
    assert amp.cpu_bf16_instructions() == []
    precision, why = amp.resolve("auto", torch.device("cpu"))
    assert precision is None and "AVX2" in why and "no native bf16" in why
    assert amp.explain("auto", torch.device("cpu")).startswith("auto -> fp32: this CPU (AVX2) has no native bf16")


@pytest.mark.parametrize(
    "cpuinfo, torch_sees_bf16, native",
    [
        (AMX_CPUINFO, False, ["AVX512-BF16", "AMX"]),  # /proc/cpuinfo says so
        (None, True, ["AVX512-BF16", "AMX"]),  # no /proc/cpuinfo (macOS, Windows): torch's probes say so
        (GRAVITON3_CPUINFO, False, ["BF16"]),  # an Arm CPU with BF16
    ],
)
def test_auto_is_bf16_on_a_cpu_with_bf16_instructions(cpu, cpuinfo, torch_sees_bf16, native):
    cpu(cpuinfo, torch_sees_bf16, capability="AVX512")
    assert amp.cpu_bf16_instructions() == native
    precision, why = amp.resolve("auto", torch.device("cpu"))
    assert precision == "bf16" and why == f"this CPU ({', '.join(native)}) runs bf16 natively"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_cuda_gpu_is_bf16_where_it_is_native_else_fp16(monkeypatch, native, expected):
    monkeypatch.setattr(amp, "cuda_bf16_native", lambda: native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    precision, why = amp.resolve("auto", torch.device("cuda"))
    assert precision == expected and "Some GPU" in why


def test_an_explicit_precision_is_used_as_written(cpu):
    cpu(AVX2_CPUINFO)
    assert amp.resolve("bf16", torch.device("cpu")) == ("bf16", "set in the recipe")


@pytest.mark.parametrize("has_bf16, expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_auto_trains_in_what_it_picked_and_the_report_says_so(make_context, tiny_bert, cpu, has_bf16, expected):
    cpu(AMX_CPUINFO if has_bf16 else AVX2_CPUINFO)
    model, tokenizer = tiny_bert
    ctx = make_context("- {name: ft, uses: train, with: {max_steps: 1, amp: auto}}", model, tokenizer, overrides=())
    logged = []
    ctx.progress.log = logged.append
    dtypes = []
    query = model.bert.encoder.layer[0].attention.self.query
    handle = query.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trained, summary = train_model(ctx)
    handle.remove()
    assert dtypes == [expected] and all(p.dtype == torch.float32 for p in trained.parameters())
    used = "bf16" if has_bf16 else "fp32"
    assert summary.to_json()["setup"]["amp"]["requested"] == "auto"
    assert summary.to_json()["setup"]["amp"]["used"] == used
    assert [line for line in logged if "amp: auto -> " + used in line], logged


def test_explicit_bf16_on_a_cpu_without_bf16_instructions_is_a_warning_that_suggests_auto(write_recipe, host, cpu):
    cpu(AVX2_CPUINFO)
    recipe = load_recipe(write_recipe("- {name: ft, uses: train, with: {amp: bf16}}"), host=host)  # still valid
    [warning] = recipe.warnings
    assert warning.severity == "warning" and warning.path == "$.stages[0].with.amp"
    assert "much slower" in warning.message and "use `amp: auto`" in warning.message


def test_explicit_bf16_on_a_cpu_with_bf16_instructions_is_not_a_warning(write_recipe, host, cpu):
    cpu(AMX_CPUINFO, capability="AVX512")
    assert load_recipe(write_recipe("- {name: ft, uses: train, with: {amp: bf16}}"), host=host).warnings == []


@pytest.mark.parametrize(
    "cpuinfo, shown",
    [
        (AVX2_CPUINFO, "amp auto -> fp32: this CPU (AVX2) has no native bf16"),
        (AMX_CPUINFO, "amp auto -> bf16: this CPU (AVX512-BF16, AMX)"),
    ],
)
def test_recipe_plan_says_what_auto_picks_here(write_recipe, cpu, capsys, cpuinfo, shown):
    cpu(cpuinfo)
    assert main(["plan", str(write_recipe("- {name: ft, uses: train, with: {amp: auto}}"))]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "ft [train]" in line)
    assert shown in line
