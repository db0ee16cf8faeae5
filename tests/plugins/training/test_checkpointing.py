"""`checkpointing:` gradient checkpointing in training stages."""

import copy

import pytest
import torch

from compose.run.training import train_model


def grads_after_one_step(make_context, model, tokenizer, checkpointing: bool):
    settings = (
        f"{{max_steps: 1, checkpointing: {str(checkpointing).lower()}, max_grad_norm: null, learning_rate: 1.0e-9}}"
    )
    ctx = make_context(f"- {{name: ft, uses: train, with: {settings}}}", model, tokenizer, overrides=())
    grads = {}
    used = []

    def loss_fn(m, batch):
        used.append(m.is_gradient_checkpointing)
        return m(**batch).loss

    # capture gradients before the optimizer zeroes them: hook every parameter
    handles = [p.register_hook(lambda g, n=n: grads.__setitem__(n, g.clone())) for n, p in model.named_parameters()]
    trained, _ = train_model(ctx, loss_fn=loss_fn)
    for h in handles:
        h.remove()
    return grads, used, trained


def test_checkpointing_gives_the_same_gradients(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain, used_plain, _ = grads_after_one_step(make_context, copy.deepcopy(model), tokenizer, False)
    ckpt, used_ckpt, trained = grads_after_one_step(make_context, copy.deepcopy(model), tokenizer, True)
    assert used_plain == [False] and used_ckpt == [True]
    assert not trained.is_gradient_checkpointing  # turned off again after training
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_without_checkpointing_support_gets_a_clear_error(make_context, tiny_bert):
    model, tokenizer = tiny_bert
    ctx = make_context(
        "- {name: ft, uses: train, with: {max_steps: 1, checkpointing: true}}", model, tokenizer, overrides=()
    )
    type(model).supports_gradient_checkpointing = False
    try:
        with pytest.raises(ValueError, match="does not support gradient checkpointing"):
            train_model(ctx)
    finally:
        del type(model).supports_gradient_checkpointing


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_checkpointing_gives_the_same_gradients_on_decoders_and_t5(make_context, tiny_llama, tiny_t5, family):
    model, tokenizer = tiny_llama if family == "decoder" else tiny_t5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):  # T5 attention: functional dropout
            module.dropout = 0.0

    def grads(checkpointing):
        settings = (
            f"{{max_steps: 1, checkpointing: {str(checkpointing).lower()}, max_grad_norm: null, learning_rate: 1.0e-9}}"
        )
        copy_ = copy.deepcopy(model)
        ctx = make_context(
            f"- {{name: ft, uses: train, with: {settings}}}", copy_, tokenizer, overrides=(), family=family
        )
        found, used = {}, []

        def loss_fn(m, batch):
            used.append(m.is_gradient_checkpointing)
            return m(**batch).loss

        handles = [p.register_hook(lambda g, n=n: found.__setitem__(n, g.clone())) for n, p in copy_.named_parameters()]
        train_model(ctx, loss_fn=loss_fn)
        for h in handles:
            h.remove()
        return found, used

    plain, used_plain = grads(False)
    ckpt, used_ckpt = grads(True)
    assert used_plain == [False] and used_ckpt == [True]
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
