"""Activation offload: what a checkpointed block keeps for its backward waits in pinned CPU memory and
comes back one block ahead in backward.

Two users:
- the offloader's own checkpoint (offload.py), for eager blocks (group offload, FSDP2, an int8/fp8
  base): the block keeps only its input and is recomputed whole;
- `SavedActivationOffload`, for compiled blocks (the default on a GPU): saved-tensor hooks around each
  compiled block call see exactly what that block's one autograd Function saves — its input, and with
  selective checkpointing the attention outputs it keeps — and move those. The block keeps its compiled
  graph and its checkpointing policy, so memory goes down without the full recomputation (Lite
  512x768x61: 12.5 -> ~7 GiB at the same step time, measured in benchmarks/results/).
"""

from __future__ import annotations

import contextlib
import os
import weakref

import torch
from torch import nn

# Saved tensors smaller than this stay where they are (text tokens, time embeddings, attention's
# log-sum-exp): moving them costs a transfer and saves nothing worth having.
# (K5TUNE_MIN_OFFLOADED_ELEMENTS overrides it: tests move every saved tensor of a tiny model.)
MIN_OFFLOADED_ELEMENTS = int(os.environ.get("K5TUNE_MIN_OFFLOADED_ELEMENTS", 2**20))


def first_fit(used: list[int], nbytes: int, slab_bytes: int, align: int = 4096) -> tuple[int, int]:
    """Where a request of `nbytes` goes among slabs of `slab_bytes` whose first `used[i]` bytes are
    taken: (slab, start) in the first slab with room, a new slab appended to `used` when none has.
    `used` advances by the aligned size. (PinnedArena places by it; k5tune estimate counts by it.)"""
    slab = next((i for i, taken in enumerate(used) if taken + nbytes <= slab_bytes), None)
    if slab is None:
        slab = len(used)
        used.append(0)
    start = used[slab]
    used[slab] = min(slab_bytes, start + -(-nbytes // align) * align)
    return slab, start


def slab_bytes_for(tensor_bytes: list[int]) -> int:
    """A slab size for tensors placed once and kept (group offload's weight homes): no bigger than they
    need, aligned, up to PinnedArena.SLAB_BYTES."""
    return min(PinnedArena.SLAB_BYTES, sum(n + PinnedArena.ALIGN for n in tensor_bytes))


class PinnedArena:
    """Pinned CPU memory carved from 1 GiB slabs, first fit: a request goes into the first slab with room.
    Why not one pinned tensor per request: torch's pinned allocator rounds every request up to a power of
    two, so a Lite hidden state (84 MiB) would hold 128 MiB and a Pro one (192 MiB) 256 MiB. For the
    stashes of a forward pass, the next pass starts over in the same slabs."""

    SLAB_BYTES = 2**30
    ALIGN = 4096

    def __init__(self, pin: bool | None = None, slab_bytes: int | None = None):
        self.pin = pin  # None: pinned when the tensors come from a GPU (CPU runs and tests: same layout)
        if slab_bytes is not None:
            self.SLAB_BYTES = slab_bytes
        self.slabs: list[torch.Tensor] = []
        self.used: list[int] = []  # bytes taken from the start of each slab
        self.outstanding = 0  # taken and not released yet (a stash still referenced)

    def new_pass(self) -> PinnedArena:
        """Where the next forward pass stashes: this arena from its start when every stash was let go,
        else a new one (stashes still referenced — a pass whose backward did not run, a retained graph —
        keep their memory until they are freed)."""
        if self.outstanding:
            return PinnedArena(self.pin, self.SLAB_BYTES)
        self.used = [0] * len(self.slabs)
        return self

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """Memory for `tensor` (dense), with its size, strides and dtype (its values are not copied)."""
        self.outstanding += 1
        pin = self.pin if self.pin is not None else tensor.device.type == "cuda"
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > self.SLAB_BYTES:
            return torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, pin_memory=pin)
        slab, start = first_fit(self.used, nbytes, self.SLAB_BYTES, self.ALIGN)
        if slab == len(self.slabs):
            self.slabs.append(torch.empty(self.SLAB_BYTES, dtype=torch.uint8, pin_memory=pin))
        flat = self.slabs[slab][start : start + nbytes]
        return flat.view(tensor.dtype).as_strided(tensor.size(), tensor.stride())

    def release(self) -> None:
        self.outstanding -= 1


class StashedTensor:
    """One saved tensor while it waits for backward in CPU memory. A dense tensor comes back with the
    same strides (a compiled backward assumes the layout its forward saved) and lives in `arena` when one
    is given; its place there is given back when this stash is freed, which is when autograd lets go of
    it — after its backward, or with the graph — never earlier. (Anything queued on the copy stream
    before then runs before the next pass's copies into the same place.)"""

    def __init__(self, tensor: torch.Tensor, stream: torch.cuda.Stream | None, arena: PinnedArena | None = None):
        self.device = tensor.device
        self.gpu: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None
        cuda = tensor.device.type == "cuda"
        if not _dense(tensor):
            self.cpu = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=cuda)
        elif arena is not None:
            self.cpu = arena.take(tensor)
            weakref.finalize(self, arena.release)
        else:
            self.cpu = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, pin_memory=cuda)
        if not cuda:  # CPU runs (tests): a plain copy, so the path is the same
            self.cpu.copy_(tensor.detach())
            return
        if stream is None:
            self.cpu.copy_(tensor.detach(), non_blocking=True)
            return
        stream.wait_stream(torch.cuda.current_stream())  # the tensor is complete before it is copied
        with torch.cuda.stream(stream):
            self.cpu.copy_(tensor.detach(), non_blocking=True)
        tensor.record_stream(stream)  # its memory is not reused until the copy is done

    def prefetch(self, stream: torch.cuda.Stream | None) -> None:
        if self.gpu is not None or self.device.type != "cuda":
            return
        if stream is None:
            self.gpu = self.cpu.to(self.device, non_blocking=True)
            return
        with torch.cuda.stream(stream):
            self.gpu = self.cpu.to(self.device, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(stream)

    def fetch(self, stream: torch.cuda.Stream | None) -> torch.Tensor:
        if self.device.type != "cuda":  # a tensor of its own, as from a GPU: never a view into a slab that
            return self.cpu.clone()     # is reused (torch.set_rng_state even misreads a view at an offset)
        self.prefetch(stream)
        if self.ready is not None:
            torch.cuda.current_stream().wait_event(self.ready)
            self.gpu.record_stream(torch.cuda.current_stream())
        tensor, self.gpu, self.ready = self.gpu, None, None
        return tensor


def _dense(tensor: torch.Tensor) -> bool:
    """Its elements fill their storage span without gaps or overlap (any order of dimensions), so a copy
    made with the same strides is the same tensor. (torch has this test only as a private helper.)"""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(tensor.stride(), tensor.size(), strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class _BlockSaves:
    """What one block call moved out, linked to the call before it (the one backward reaches next)."""

    def __init__(self, previous: _BlockSaves | None):
        self.stashes: list[StashedTensor] = []
        self.previous = previous
        self.prefetched = False

    def prefetch(self, stream: torch.cuda.Stream | None) -> None:
        if not self.prefetched:
            self.prefetched = True
            for stash in self.stashes:
                stash.prefetch(stream)


class _Moved:
    """Stands for a saved tensor that is in CPU memory."""

    __slots__ = ("block", "stash")

    def __init__(self, block: _BlockSaves, stash: StashedTensor):
        self.block, self.stash = block, stash


class SavedActivationOffload:
    """Saved-tensor hooks around each compiled block call: large saved tensors go to pinned CPU memory
    on a side stream as soon as the block's forward is done; in backward, a block's first unpack brings
    them back and starts bringing the previous block's."""

    def __init__(self, first_block: nn.Module):
        self.first_block = first_block
        self.last: _BlockSaves | None = None
        self._stream: torch.cuda.Stream | None = None
        self.arena = PinnedArena()

    def _stream_for(self, tensor: torch.Tensor) -> torch.cuda.Stream | None:
        if tensor.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(tensor.device)
        return self._stream

    def around(self, block: nn.Module, args: tuple):
        """The context to run one block call in."""
        if not torch.is_grad_enabled():
            return contextlib.nullcontext()
        if block is self.first_block:
            self.last = None  # a new forward pass: the previous one's chain is let go
            self.arena = self.arena.new_pass()
        saves = _BlockSaves(self.last)
        self.last = saves
        # inputs every block shares (RoPE, the text for cross-attention, the time embedding) stay: they
        # live on beside the block anyway, so moving them would only add copies
        shared = {a.untyped_storage().data_ptr() for a in args[1:] if isinstance(a, torch.Tensor)}
        device = args[0].device  # what is elsewhere (a GPU block's CPU RNG state) stays as it is

        def pack(tensor: torch.Tensor):
            # (plain tensors only: weights arrive as Parameters, torchao's as wrapper subclasses)
            if (type(tensor) is not torch.Tensor or tensor.numel() < MIN_OFFLOADED_ELEMENTS or tensor.device != device
                    or not _dense(tensor) or tensor.untyped_storage().data_ptr() in shared):
                return tensor
            stash = StashedTensor(tensor, self._stream_for(tensor), self.arena)
            saves.stashes.append(stash)
            return _Moved(saves, stash)

        def unpack(saved):
            if not isinstance(saved, _Moved):
                return saved
            stream = self._stream if saved.stash.device.type == "cuda" else None
            saved.block.prefetch(stream)  # (all of this block's, if the previous block did not already)
            tensor = saved.stash.fetch(stream)
            if saved.block.previous is not None:
                saved.block.previous.prefetch(stream)
            return tensor

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)
