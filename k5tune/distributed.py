"""Several processes (one per GPU, or gloo processes on the CPU): ranks, reductions, launching.

k5tune runs data-parallel LoRA training without wrapping the model: every rank computes the loss of
its slice of each global batch, then the LoRA gradients (a few hundred MB at most) are summed across
ranks in one flat all-reduce after accumulation. That is exact (the same global-batch mean as one
process), works unchanged with gradient checkpointing, TREAD and empty slices, and costs about a
millisecond over NVLink. Processes are started by `torchrun`, `accelerate launch`, or
`k5tune train --num_processes N` (which runs torchrun for the user).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine (they share its CPU memory)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def device(self, cuda: bool) -> str | None:
        return f"cuda:{self.local_rank}" if cuda else None

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum in place across processes (NCCL needs the values on the GPU: moved there and back)."""
        if self.enabled:
            moved = tensor.to(_comm_device())
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a stop request or a NaN loss)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum_gradients(self, params: list[torch.nn.Parameter], scale: float = 1.0) -> None:
        """Sum every rank's gradients in one flat buffer (a rank without samples contributes zeros), times
        `scale`."""
        if not self.enabled:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if scale != 1.0:
            flat.mul_(scale)
        offset = 0
        for p in params:
            size = p.numel()
            p.grad = flat[offset : offset + size].view_as(p).to(p.dtype)
            offset += size


def _comm_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env() -> Dist:
    """Join the process group started by torchrun / accelerate launch (WORLD_SIZE > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
            # naming the device binds NCCL to it (else it guesses from the rank and warns that a guess can hang)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank,
                local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(num_processes: int, argv: list[str]) -> int:
    """Run `k5tune <argv>` under torchrun with `num_processes` processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
               "-m", "k5tune.cli", *argv]
    return subprocess.call(command)
