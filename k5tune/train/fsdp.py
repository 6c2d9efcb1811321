"""FSDP2 (`fsdp_enable`): the transformer sharded over the processes, for models too big for one GPU.

Each transformer block is one `fully_shard` unit: its weights live split across the ranks and are
gathered just before the block computes (forward, and again for backward), then freed when
`fsdp_reshard_after_forward` is on. The layers diffusers keeps in fp32 (modulation, time embeddings)
are units of their own that are gathered without a cast, so the sharded model computes what the
unsharded one does; everything else, LoRA included, is gathered in the compute dtype (bf16 on a GPU),
which is what autocast would cast it to anyway. Gradients are reduce-scattered in fp32. FSDP2
averages them over the ranks while each rank's loss is already its share of the global-batch mean
(the data-parallel path sums): the trainer scales the loss by the world size to match.

Checkpoints hold full (unsharded) tensors: the LoRA file is the same single file as on one GPU, and
the optimizer state is keyed by parameter name, so a run can resume with another number of GPUs.

CREPA's projection head (train/crepa.py) stays whole on every process, outside FSDP2: it is a few MB,
and it computes on the aligned block's output, which is an ordinary tensor under FSDP2. Its gradients are
averaged across processes as FSDP2 averages the LoRA's; gradient clipping combines the norm of the
sharded LoRA and of the head; the optimizer state names the head's parameters `crepa_head.*` beside the
transformer's (`transformer.*`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def _fp32_module_names(transformer) -> set[str]:
    return set(getattr(transformer, "_keep_in_fp32_modules", None) or [])


def shard_transformer(transformer, compute_dtype: torch.dtype, reshard_after_forward: bool) -> None:
    """`fully_shard` the fp32 layers, every block, then the rest (the root) over all processes."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    # cast_forward_inputs=False: the blocks get the fp32 time embedding and RoPE as unsharded (and the
    # checkpoint recomputation, which skips FSDP's pre-forward, sees the same dtypes as the forward)
    keep_fp32 = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32, cast_forward_inputs=False)
    compute = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    fp32_names = _fp32_module_names(transformer)
    for name, module in list(transformer.named_modules()):
        if name and name.rsplit(".", 1)[-1] in fp32_names and any(True for _ in module.parameters()):
            fully_shard(module, mesh=mesh, mp_policy=keep_fp32, reshard_after_forward=reshard_after_forward)
    for block in [*transformer.text_transformer_blocks, *transformer.visual_transformer_blocks]:
        fully_shard(block, mesh=mesh, mp_policy=compute, reshard_after_forward=reshard_after_forward)
    # the root's own layers are needed again at once in backward: keep them gathered
    fully_shard(transformer, mesh=mesh, mp_policy=compute, reshard_after_forward=False)


def local_weight_gib(transformer: nn.Module) -> float:
    """GiB of weights this process holds (its shards)."""
    total = 0
    for p in transformer.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total / 2**30


def set_gradient_sync(transformer: nn.Module, enabled: bool) -> None:
    """Reduce-scatter only after the last micro-batch of an accumulation group."""
    transformer.set_requires_gradient_sync(enabled)


def optimized_modules(transformer: nn.Module, crepa_head: nn.Module | None) -> nn.Module:
    """The module whose parameters the optimizer holds: the transformer, or it and CREPA's head."""
    return transformer if crepa_head is None else nn.ModuleDict({"transformer": transformer, "crepa_head": crepa_head})


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """The optimizer state, unsharded and keyed by parameter name (collective; rank 0 gets it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Every rank reads the same full state from disk and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """clip_grad_norm_ over sharded (DTensor) and whole parameters together; the total norm (every rank)."""
    groups = [[p for p in params if p.grad is not None and isinstance(p, DTensor) == sharded] for sharded in (True, False)]
    norms = []
    for group in groups:
        if group:
            norm = torch.nn.utils.get_total_norm([p.grad for p in group])
            norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float().cpu())
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    if torch.isfinite(total) and math.isfinite(max_norm):
        coefficient = min(1.0, max_norm / (total.item() + 1e-6))
        for group in groups:
            for p in group:
                p.grad.mul_(coefficient)
    return total.item()


def load_full_lora(transformer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Saved LoRA weights (our file layout: `transformer.<module>.lora_A.weight`) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = {name.replace(".default.", "."): name for name, _ in transformer.named_parameters() if ".lora_" in name}
    model_state = {}
    for key, value in state.items():
        name = names.get(key.removeprefix("transformer."))
        if name is None:
            raise ValueError(f"checkpoint LoRA key {key} does not match the model")
        model_state[name] = value
    missing = set(names.values()) - set(model_state)
    if missing:
        raise ValueError(f"checkpoint lacks LoRA weights for {sorted(missing)[:3]}")
    set_model_state_dict(transformer, model_state, options=StateDictOptions(full_state_dict=True, strict=False))
