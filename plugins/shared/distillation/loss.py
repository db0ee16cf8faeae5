"""The distillation loss: soft targets, hard labels, hidden states and attentions, weighted.

``DistillationLoss`` is the ``loss_fn`` the distill stage trains its student with.
"""

from __future__ import annotations

from types import SimpleNamespace

#: Output fields of each stack: (hidden states, self-attentions).
STACK_OUTPUTS = {
    "layers": ("hidden_states", "attentions"),
    "encoder": ("encoder_hidden_states", "encoder_attentions"),
    "decoder": ("decoder_hidden_states", "decoder_attentions"),
}

TERMS = ("soft", "hard", "hidden", "attention")


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------


def _masked_mean(values, mask):
    """Mean of ``values`` (B, L) over positions where ``mask`` (B, L) is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def soft_target_kl(student_logits, teacher_logits, temperature: float, mask=None):
    """KL(teacher || student) of the temperature-softened distributions, x T^2.

    Logits (B, C): mean over the batch. Logits (B, L, V): the KL of each position,
    averaged over the positions where ``mask`` (B, L) is 1.
    """
    import torch.nn.functional as F

    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if mask is None:
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return _masked_mean(per_position, mask) * t * t


def hidden_mse(student_states, teacher_states, mask, projection=None):
    """MSE per token (mean over features) of one layer's states, averaged over real tokens."""
    s = student_states.float()
    if projection is not None:
        s = projection(s)
    return _masked_mean(((s - teacher_states.float()) ** 2).mean(-1), mask)


def attention_loss(student_att, teacher_att, mask, measure: str):
    """KL(teacher || student) or squared error of (B, H, Lq, Lk) attention rows, over real query tokens."""
    import torch

    s, t = student_att.float(), teacher_att.float()
    if measure == "kl":
        eps = torch.finfo(torch.float32).tiny
        per_row = (t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum(-1)
    else:
        per_row = ((s - t) ** 2).mean(-1)
    per_query = per_row.mean(1)  # over heads: (B, Lq)
    return _masked_mean(per_query, mask)


def _target_labels(batch):
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("distilling an encoder-decoder needs the batch's labels (the target tokens)")
    return labels


def _next_token_mask(batch, inputs, logits):
    """Causal LM: position t predicts token t+1, so it counts where token t+1 is a label."""
    import torch

    target = batch.get("labels")
    target = (target != -100) if target is not None else inputs.get("attention_mask")
    mask = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    if target is None:
        mask[:, :-1] = True
    else:
        mask[:, :-1] = target[:, 1:].bool()
    return mask


class DistillationLoss:
    """``loss_fn(model, batch)`` for ``train_model``: the weighted terms, with the teacher under no_grad.

    family:     "encoder", "decoder" or "encoder-decoder" (which positions the soft term averages over).
    layer_maps: {stack name: teacher layer of each student layer}, or None when nothing is matched
                (a plain list is the map of a one-stack model).
    """

    def __init__(
        self, teacher, settings: dict, layer_maps, projection=None, family: str = "encoder", teacher_cache=None
    ):
        self.teacher = teacher
        self.teacher_cache = teacher_cache  # a TeacherCache: the teacher's logits by example, or None
        self.soft_weight = settings["soft"]["weight"]
        self.temperature = settings["soft"]["temperature"]
        self.hard_weight = settings["hard"]["weight"]
        self.hidden_weight = settings["hidden"]["weight"]
        self.attention_weight = settings["attention"]["weight"]
        self.measure = settings["attention"]["measure"]
        self.layer_maps = {"layers": layer_maps} if isinstance(layer_maps, list) else layer_maps
        self.projection = projection
        self.family = family
        self.first: dict | None = None
        self.recent: list[dict] = []

    @property
    def weights(self) -> dict:
        return {
            "soft": self.soft_weight,
            "hard": self.hard_weight,
            "hidden": self.hidden_weight,
            "attention": self.attention_weight,
        }

    @property
    def terms(self) -> list[str]:
        return [name for name, weight in self.weights.items() if weight > 0]

    def _masks(self, batch, inputs, logits) -> dict:
        """{stack name: (B, L) mask of the positions that count}, and "soft" for the soft term."""
        import torch

        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(logits.shape[0], inputs["input_ids"].shape[1], device=logits.device)
        if self.family == "encoder-decoder":
            target = _target_labels(batch) != -100
            return {"soft": target, "encoder": mask, "decoder": target}
        if self.family == "decoder":
            return {"soft": _next_token_mask(batch, inputs, logits), "layers": mask}
        return {"soft": None if logits.dim() == 2 else mask, "layers": mask}

    def components(self, model, batch) -> dict:
        """Each active term's (unweighted) value on ``batch``, as tensors."""
        import torch

        want_hidden, want_attention = self.hidden_weight > 0, self.attention_weight > 0
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        device = next(iter(inputs.values())).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        if self.family == "encoder-decoder" and "decoder_input_ids" not in inputs:
            # teacher and student read the same decoder inputs: the targets shifted right
            labels = _target_labels(batch)
            inputs["decoder_input_ids"] = self.teacher.prepare_decoder_input_ids_from_labels(labels=labels)
        extra = {}
        if want_hidden:
            extra["output_hidden_states"] = True
        if want_attention:
            extra["output_attentions"] = True
        if self.family != "encoder":
            extra["use_cache"] = False  # no key/value cache: each batch is one forward pass
        teacher_out = None
        if self.teacher_cache is not None:  # only the logits are needed (see _distill_teacher_cache)
            keys = self.teacher_cache.keys(inputs)
            logits = self.teacher_cache.lookup(keys, inputs)
            if logits is None:
                with torch.no_grad():
                    logits = self.teacher(**inputs, **extra).logits
                self.teacher_cache.store(keys, logits, inputs)
            teacher_out = SimpleNamespace(logits=logits)
        elif self.soft_weight > 0 or want_hidden or want_attention:
            with torch.no_grad():
                teacher_out = self.teacher(**inputs, **extra)
        student_inputs = {**inputs, "labels": batch["labels"]} if self.hard_weight > 0 and "labels" in batch else inputs
        student_out = model(**student_inputs, **extra)
        masks = self._masks(batch, inputs, student_out.logits)
        terms = {}
        if self.soft_weight > 0:
            terms["soft"] = soft_target_kl(student_out.logits, teacher_out.logits, self.temperature, masks["soft"])
        if self.hard_weight > 0:
            if student_out.loss is None:
                raise ValueError("the batch has no labels for the hard-label loss; set loss.hard.weight: 0")
            terms["hard"] = student_out.loss
        if want_hidden:
            # hidden_states[0] is the embeddings' output; layer i's output is hidden_states[i + 1]
            losses = []
            for stack, layer_map in self.layer_maps.items():
                key = STACK_OUTPUTS[stack][0]
                s_states, t_states = getattr(student_out, key), getattr(teacher_out, key)
                losses += [
                    hidden_mse(s_states[i + 1], t_states[j + 1], masks[stack], self.projection)
                    for i, j in enumerate(layer_map)
                ]
            terms["hidden"] = torch.stack(losses).mean()
        if want_attention:
            terms["attention"] = self._attention_term(student_out, teacher_out, masks)
        return terms

    def _attention_term(self, student_out, teacher_out, masks):
        import torch

        losses = []
        for stack, layer_map in self.layer_maps.items():
            key = STACK_OUTPUTS[stack][1]
            s_att, t_att = getattr(student_out, key, None), getattr(teacher_out, key, None)
            if not s_att or not t_att:
                raise ValueError(
                    "the model returned no attention weights (its attention implementation cannot output them); "
                    "set loss.attention.weight: 0"
                )
            where = "" if stack == "layers" else f"{stack} "
            for i, j in enumerate(layer_map):
                s, t = s_att[i], t_att[j]
                if s.shape[1] != t.shape[1]:
                    raise ValueError(
                        f"attention matching needs the same number of heads, but student {where}layer {i} has "
                        f"{s.shape[1]} and teacher {where}layer {j} has {t.shape[1]}; set loss.attention.weight: 0 "
                        "or give the student the teacher's number of heads"
                    )
                losses.append(attention_loss(s, t, masks[stack], self.measure))
        return torch.stack(losses).mean()

    def total(self, terms: dict):
        return sum(self.weights[name] * value for name, value in terms.items())

    def __call__(self, model, batch):
        terms = self.components(model, batch)
        values = {name: round(value.detach().float().item(), 6) for name, value in terms.items()}
        if self.first is None:
            self.first = values
        self.recent = (self.recent + [values])[-50:]
        return self.total(terms)

    def summary(self) -> dict:
        n = len(self.recent)
        last = {name: round(sum(v[name] for v in self.recent) / n, 6) for name in self.terms} if n else {}
        return {"first_batch": self.first or {}, "last_50_batches": last}
