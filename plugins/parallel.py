"""`parallel:` in any training stage's settings: ddp, fsdp, tensor or hybrid parallelism.

Built on torch.distributed (device meshes, DTensor tensor parallelism, FSDP2) and
accelerate (DDP, the process group, gloo on CPU and nccl on GPUs). The processes
come from the launcher: `recipe apply --nproc N`, torchrun or accelerate launch.
"""

from __future__ import annotations

import copy

from compose import hookimpl
from compose.api import Check, TrainingExtension, TrainingSetup, load_schema_file

#: Families whose blocks this plugin knows how to split for tensor parallelism. T5
#: (encoder-decoder) is left out: its attention reshapes to the config's full head
#: count and adds a relative position bias computed for every head, so a block
#: holding half the heads cannot run unchanged. ddp and fsdp work for every family.
TENSOR_PARALLEL_FAMILIES = ("encoder", "decoder")


def normalise(value) -> dict:
    if isinstance(value, str):
        return {"strategy": value, "tensor_parallel": None}
    return {"tensor_parallel": None, **value}


def check(value, plan) -> list[Check]:
    settings = normalise(value)
    found = []
    if settings["strategy"] in ("tp", "hybrid") and plan.family not in TENSOR_PARALLEL_FAMILIES:
        found.append(Check(f"parallel: {settings['strategy']} is not available for {plan.family} models yet "
                           f"(it is for: {', '.join(TENSOR_PARALLEL_FAMILIES)}); use ddp or fsdp"))  # fmt: skip
    if settings["strategy"] == "hybrid" and not settings["tensor_parallel"]:
        found.append(Check("parallel: hybrid needs `tensor_parallel:` (processes per tensor-parallel group)"))
    return found


def blocks_and_plan(model):
    """(transformer blocks, tensor-parallel plan of one block or None, (heads, kv heads, FFN width)).

    BERT-class encoders, Llama-style decoders (q/k/v/o_proj, gate/up/down_proj) and
    T5 (both stacks; no tensor-parallel plan, see TENSOR_PARALLEL_FAMILIES).
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    config = model.config
    base = getattr(model, model.base_model_prefix, model)
    if hasattr(getattr(base, "encoder", None), "layer"):  # BERT-class
        plan = {
            "attention.self.query": ColwiseParallel(),
            "attention.self.key": ColwiseParallel(),
            "attention.self.value": ColwiseParallel(),
            "attention.output.dense": RowwiseParallel(),
            "intermediate.dense": ColwiseParallel(),
            "output.dense": RowwiseParallel(),
        }
        heads = config.num_attention_heads
        return list(base.encoder.layer), plan, (heads, heads, config.intermediate_size)
    layers = getattr(base, "layers", None)
    if layers is not None and hasattr(layers[0], "self_attn") and hasattr(layers[0].self_attn, "q_proj"):
        plan = {
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(),
        }
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return list(layers), plan, (heads, kv_heads, config.intermediate_size)
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "encoder") and hasattr(model, "decoder"):
        blocks = list(getattr(model.encoder, "block", [])) + list(getattr(model.decoder, "block", []))
        if blocks:
            return blocks, None, None
    raise ValueError(
        f"parallel: cannot find the transformer blocks of {type(model).__name__} "
        "(it knows BERT-class encoders, Llama-style decoders and T5); use ddp"
    )


def clip_across_meshes(parameters, max_norm: float) -> None:
    """Gradient clipping for parameters sharded over different device meshes."""
    import torch
    from torch.distributed.tensor import DTensor

    groups: dict = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    norms = []
    for params in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        return
    total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]))
    for params in groups.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)


def gather_into(original):
    """on_train_end: the trained shards, gathered into an ordinary copy of the model."""
    from torch.distributed.tensor import DTensor

    def gather(model):
        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
        original.load_state_dict(state)
        return original

    return gather


def setup(training: TrainingSetup, value) -> None:
    import torch.distributed as dist

    settings = normalise(value)
    strategy = settings["strategy"]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    training.notes["parallel"] = {"strategy": strategy, "processes": world}
    if world == 1 or strategy == "ddp":
        return  # one process: nothing to split; ddp: accelerate wraps the model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    device = "cuda" if training.accelerator_kwargs.get("cpu") is False else "cpu"
    model = training.model
    blocks, plan, widths = blocks_and_plan(model)
    tp = world if strategy == "tp" else 1 if strategy == "fsdp" else settings["tensor_parallel"]
    if tp is None or world % tp:
        raise ValueError(f"parallel: tensor_parallel={tp} must divide the number of processes ({world})")
    if tp > 1 and plan is None:
        raise ValueError(f"parallel: {strategy} cannot split {type(model).__name__}; use ddp or fsdp")
    if tp > 1 and any(width % tp for width in widths):
        heads, kv_heads, ffn = widths
        raise ValueError(
            f"parallel: {heads} attention heads, {kv_heads} key/value heads and FFN size {ffn} must all be "
            f"divisible by tensor_parallel={tp}"
        )
    training.on_train_end.append(gather_into(copy.deepcopy(model)))
    mesh = init_device_mesh(device, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    if tp > 1:
        for block in blocks:
            parallelize_module(block, mesh["tp"], plan)
    if world // tp > 1:
        for block in blocks:
            fully_shard(block, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    training.notes["parallel"].update(
        mesh={"dp": world // tp, "tp": tp},
        sharded_parameters=sum(1 for p in model.parameters() if type(p).__name__ == "DTensor"),
    )
    training.prepare_model = False
    training.data_shard = (mesh["dp"].get_local_rank(), world // tp)
    training.clip_grad_norm = clip_across_meshes
    training.evaluate_between_epochs = False  # the model is split until training ends


@hookimpl
def compose_register_training_extensions(register):
    register(
        TrainingExtension(
            name="parallel",
            schema=load_schema_file("compose.schemas", "parallel.schema.json"),
            setup=setup,
            description="Data (ddp, fsdp), tensor (tp) or hybrid parallelism for training stages.",
            check=check,
        )
    )
