"""`amp:` mixed precision in training stages."""

import pytest
import torch

from compose.errors import RecipeError
from compose.recipe import load_recipe
from compose.training import train_model


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed where CUDA is available")
def test_fp16_on_cpu_is_a_validation_error_that_suggests_bf16(write_recipe, host):
    recipe = write_recipe("- {name: ft, uses: train, with: {amp: fp16}}")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, host=host)
    problem = info.value.problems[0]
    assert problem.path == "$.stages[0].with.amp" and "use `amp: bf16`" in problem.message


def test_amp_on_a_stage_that_does_not_train_is_an_unknown_key(write_recipe):
    from compose import hookimpl
    from compose.api import StageType
    from compose.plugin_host import PluginHost
    from compose.plugins import amp

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
    ctx = make_context("- {name: ft, uses: train, with: {max_steps: 2, amp: bf16}}", model, tokenizer,
                       overrides=(), family=family)  # fmt: skip
    dtypes = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trained, summary = train_model(ctx)
    handle.remove()
    assert set(dtypes) == {torch.bfloat16} and all(p.dtype == torch.float32 for p in trained.parameters())
    assert summary.steps == 2
