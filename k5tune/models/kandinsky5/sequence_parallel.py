"""Sequence parallelism (`sequence_parallel_size`): each clip's visual tokens split across a group of
processes, Ulysses-style.

In training, the transformer's visual token stream is cut into equal contiguous chunks after the
stock token order is set (NABLA's 8x8-patch order included), one chunk per process of the sequence
group; everything a block does token by token (modulation, norms, feed-forward, cross-attention to
the whole text, which every process holds) runs on the chunk. Visual self-attention needs every
token: its queries, keys and values go through an all-to-all that trades the sequence split for a
head split (each process then holds every token of heads/P heads), attention runs as on one process,
NABLA's block mask included (it is built per head from the whole sequence, so it is the one-process
mask), and a second all-to-all trades back. After the last block the chunks are gathered and the
output layer runs on the whole clip. The exchanges are all-to-alls of PyTorch's autograd collectives
(torch.distributed.nn.functional: the backward of an all-to-all is the reverse all-to-all) over the
"sequence" dimension of a DeviceMesh (data x sequence): plain tensors, the same API on every torch
k5tune supports, on NCCL and on gloo sub-groups (the CPU tests). Blocks run eagerly under
it (the collectives are not traced into a compiled block); the fused element-wise kernels still compile.

The heads must divide by the group size (Lite: 28 heads, Pro: 32) and each clip's token count too.
Every process of a group trains the same samples and computes the same loss; the trainer weights it
by 1/P, so the gradient sum over all processes (data-parallel or FSDP2) is the one-process gradient.
Only the training forward is split (the model in train mode): validation, the eval loss and rollout
forwards run whole on each process, as without it.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as collectives


class SequenceGroup:
    """The processes that share each clip's tokens: their group, size and this process's place."""

    def __init__(self, group, size: int, rank: int):
        self.group, self.size, self.rank = group, size, rank

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """This process's chunk of dimension 1 (the tokens). (train/sequence.py checks every bucket first.)"""
        tokens = x.shape[1]
        if tokens % self.size:
            raise ValueError(f"sequence_parallel_size {self.size} does not divide this clip's {tokens} tokens")
        chunk = tokens // self.size
        # a copy: a view would keep the whole sequence alive as long as the chunk (checkpointed inputs, RoPE)
        return x[:, self.rank * chunk : (self.rank + 1) * chunk].clone()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The chunks of dimension 1 put back together, on every process. (An all-to-all of the chunk sent
        to each: its backward hands each process every process's gradient of its chunk, which the
        expand's backward sums: a reduce-scatter, on every backend; gloo has no reduce-scatter of its
        own, and all_gather's emulated one fails on a sub-group.)"""
        parts = x.unsqueeze(0).expand(self.size, *x.shape).contiguous()
        got = collectives.all_to_all_single(torch.empty_like(parts), parts, group=self.group)  # (P: sender, ...)
        return got.movedim(0, 1).flatten(1, 2)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S/P, H, D) -> (B, S, H/P, D): every token of this process's heads."""
        batch, chunk, heads, dim = x.shape
        if heads % self.size:
            raise ValueError(f"sequence_parallel_size {self.size} must divide the attention heads ({heads})")
        parts = x.reshape(batch, chunk, self.size, heads // self.size, dim).permute(2, 0, 1, 3, 4).contiguous()
        got = collectives.all_to_all_single(torch.empty_like(parts), parts, group=self.group)  # (P: sender, ...)
        return got.permute(1, 0, 2, 3, 4).reshape(batch, chunk * self.size, heads // self.size, dim)

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H/P, D) -> (B, S/P, H, D): the inverse of to_heads."""
        batch, tokens, heads, dim = x.shape
        chunk = tokens // self.size
        parts = x.reshape(batch, self.size, chunk, heads, dim).permute(1, 0, 2, 3, 4).contiguous()
        got = collectives.all_to_all_single(torch.empty_like(parts), parts, group=self.group)  # (P: sender, ...)
        return got.permute(1, 2, 0, 3, 4).reshape(batch, chunk, heads * self.size, dim)


def sequence_group(size: int) -> SequenceGroup | None:
    """The sequence group of this process (consecutive ranks: data-parallel rank x size + i), from a
    2-D DeviceMesh (data x sequence) over all processes; None when size is 1."""
    if size <= 1:
        return None
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (world // size, size), mesh_dim_names=("data", "sequence"))
    return SequenceGroup(mesh["sequence"].get_group(), size, mesh.get_local_rank("sequence"))


def heads_problem(transformer_config: dict, size: int) -> str | None:
    """Why `size` cannot split this model's attention heads, or None."""
    heads = transformer_config["model_dim"] // sum(transformer_config["axes_dims"])
    if heads % size == 0:
        return None
    divisors = [str(n) for n in range(2, heads + 1) if heads % n == 0]
    return (f"{size} does not divide the model's {heads} attention heads (each process attends over whole "
            f"heads); valid: {', '.join(divisors)}")


def install(transformer, group: SequenceGroup) -> None:
    """Split the training forward's visual tokens over `group` (forward.py) and exchange them in every
    visual self-attention (the fast path's processors, NABLA's included)."""
    from k5tune.models.kandinsky5.forward import install_forward
    from k5tune.models.kandinsky5.nabla import self_attentions

    install_forward(transformer)
    transformer._k5_sequence = group
    for attention in self_attentions(transformer):
        processor = attention.processor
        if not hasattr(processor, "exchange"):
            raise ValueError("sequence parallelism needs the fast attention path (fused_kernels: true)")
        processor.exchange = group
        inner = getattr(processor, "dense", None)  # NABLA's processor keeps the dense one for other calls
        if inner is not None and hasattr(inner, "exchange"):
            inner.exchange = group


def active_group(module) -> SequenceGroup | None:
    """The group while training (the model in train mode), else None."""
    return getattr(module, "_k5_sequence", None) if module.training else None
