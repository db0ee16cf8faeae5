"""`parallel:` in any training stage's settings: ddp, fsdp, tensor or hybrid parallelism.

Built on torch.distributed (device meshes, DTensor tensor parallelism, FSDP2) and
accelerate (DDP, the process group, gloo on CPU and nccl on GPUs). The processes
come from the launcher: `recipe apply --nproc N`, torchrun or accelerate launch.
"""

from __future__ import annotations

import copy

from compose import hookimpl
from compose.api import Check, TrainingExtension, TrainingSetup, load_schema_file
from compose.plugins.shared.architectures.checks import architecture_problems
from compose.plugins.shared.architectures.modules import architecture, stacks


def normalise(value) -> dict:
    if isinstance(value, str):
        return {"strategy": value, "tensor_parallel": None}
    return {"tensor_parallel": None, **value}


def check(value, plan) -> list[Check]:
    settings = normalise(value)
    found = []
    if settings["strategy"] != "ddp":  # ddp wraps any model; the others split the table's layers
        found += architecture_problems("parallel", plan, what=f"parallel:{settings['strategy']}", fix="use ddp")
    if settings["strategy"] == "hybrid" and not settings["tensor_parallel"]:
        found.append(Check("parallel: hybrid needs `tensor_parallel:` (processes per tensor-parallel group)"))
    return found


def blocks_and_plan(model):
    """(transformer blocks, tensor-parallel plan per block or None, (heads, kv heads, FFN width)).

    The blocks are every stack's layers, where the architecture table (``architectures.registry``)
    puts them; the plan is the table's ``tp_plan`` of each stack (None where a stack has
    none: tp and hybrid are then refused at validation).
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    arch = architecture(model, "parallel")
    model_stacks = stacks(model, "parallel")
    blocks = [layer for stack in model_stacks for layer in stack.layers]
    plans = None
    if all(stack.spec.tp_plan is not None for stack in model_stacks):
        plans = [
            {path: styles[style]() for path, style in stack.spec.tp_plan.items()}
            for stack in model_stacks
            for _ in stack.layers
        ]
    config = model.config.to_dict()
    heads = arch.config_value(config, "heads")
    widths = (heads, arch.config_value(config, "kv_heads") or heads, arch.config_value(config, "intermediate"))
    return blocks, plans, widths


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
    if tp > 1 and any(width is None or width % tp for width in widths):
        heads, kv_heads, ffn = widths
        raise ValueError(
            f"parallel: {heads} attention heads, {kv_heads} key/value heads and FFN size {ffn} must all be "
            f"divisible by tensor_parallel={tp}"
        )
    training.on_train_end.append(gather_into(copy.deepcopy(model)))
    mesh = init_device_mesh(device, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    if tp > 1:
        for block, block_plan in zip(blocks, plan):
            parallelize_module(block, mesh["tp"], block_plan)
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
            schema=load_schema_file("compose.plugins.training", "parallel.schema.json"),
            setup=setup,
            description="Data (ddp, fsdp), tensor (tp) or hybrid parallelism for training stages.",
            check=check,
        )
    )
