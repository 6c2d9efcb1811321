"""Group offload that trains: transformer blocks live in (pinned) CPU memory and come to the GPU only
while they compute — in the forward pass and again in backward.

Why not diffusers' group-offload hooks: they move a block back to the CPU right after its forward,
but training needs the weights again in backward (the input gradient of every frozen linear is
dY·W), and with gradient checkpointing the recomputed forward would offload them just before the
backward that uses them. Here each block runs as one checkpointed autograd Function: forward onloads
the block's group, computes without keeping activations, offloads; backward onloads it again,
recomputes with gradients, back-propagates (LoRA gradients accumulate as usual), offloads. With
`use_stream`, the next group (in forward order, then in backward order) is copied on a side CUDA
stream from pinned memory while the current one computes.

Trainable LoRA weights and the small non-block layers stay on the GPU.

`leaf_level` makes the unit of transfer each layer that holds frozen weights (a linear with its
LoRA, a modulation layer) instead of a group of blocks: at most two layers' weights are on the GPU.
Backward needs the weights again (dY·W), so while a block is recomputed for backward the weights
autograd saves are replaced by references (saved-tensor hooks) and copied back only when their
gradient step runs. Lowest memory, more transfers. Tiny weights used outside their module's call
(the q/k RMSNorm weights of the fast path) stay on the GPU.

`offload_activations` also moves what a checkpointed block keeps for its backward (its large input,
the residual stream: tokens x dim x 2 bytes, 88 MB per block for Lite at 512x768x61) to pinned CPU
memory, and brings it back one block ahead in backward. It works with or without weight offload.
(Compiled blocks, without weight offload, offload what they save through saved-tensor hooks instead
and keep their checkpointing policy: activation_offload.py.)
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from k5tune.models.kandinsky5 import nabla
from k5tune.train import activation_offload
from k5tune.train.activation_offload import PinnedArena, StashedTensor, slab_bytes_for


class _Group:
    def __init__(self, index: int, blocks: list[nn.Module], compute: torch.device, homes: PinnedArena):
        self.index = index
        self.params = [p for block in blocks for p in block.parameters() if not p.requires_grad]
        self.params += [b for block in blocks for b in block.buffers()]
        self.compute = compute
        # the CPU copies are the home of the weights, side by side in the (pinned) slabs of `homes`; on a
        # CPU-only run an empty tensor stands in while offloaded, so any use of an offloaded weight fails
        # loudly instead of silently working
        self.home = [self._map(self._stored(p), lambda t: self._home(t, homes)) for p in self.params]
        self.placeholder = [self._map(self._stored(p), lambda t: torch.empty(0, dtype=t.dtype, device=compute))
                            for p in self.params]
        self.resident = True
        self.ready: torch.cuda.Event | None = None
        self.offload()

    @staticmethod
    def _home(tensor: torch.Tensor, homes: PinnedArena) -> torch.Tensor:
        if not tensor.is_contiguous():
            return tensor.to("cpu").pin_memory() if homes.pin else tensor.to("cpu").clone()
        return homes.take(tensor).copy_(tensor)

    def onload(self, stream: torch.cuda.Stream | None = None) -> None:
        if self.resident:
            return
        if stream is None:
            for p, home in zip(self.params, self.home, strict=True):
                self._put(p, self._map(home, lambda t: t.to(self.compute, non_blocking=True)))
        else:
            with torch.cuda.stream(stream):
                for p, home in zip(self.params, self.home, strict=True):
                    self._put(p, self._map(home, lambda t: t.to(self.compute, non_blocking=True)))
                self.ready = torch.cuda.Event()
                self.ready.record(stream)
        self.resident = True

    def wait(self) -> None:
        if self.ready is not None:
            torch.cuda.current_stream().wait_event(self.ready)
            for p in self.params:  # the side stream made them; the compute stream now uses them
                stored = self._stored(p)
                for t in stored.values() if isinstance(stored, dict) else [stored]:
                    t.record_stream(torch.cuda.current_stream())
            self.ready = None

    def offload(self) -> None:
        if not self.resident:
            return
        for p, placeholder in zip(self.params, self.placeholder, strict=True):
            self._put(p, placeholder)  # the CPU home copy is unchanged (the weights are frozen)
        self.resident = False

    # torchao-quantised weights (base_model_precision) are wrapper tensors: assigning their `.data` would
    # leave the inner int8/fp8 data and scales where they are, so those move as their inner tensors
    @staticmethod
    def _stored(p: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass

        if is_traceable_wrapper_subclass(p):
            return {name: getattr(p, name) for name in p.__tensor_flatten__()[0]}
        return p.data

    @staticmethod
    def _map(stored, fn):
        return {name: fn(t) for name, t in stored.items()} if isinstance(stored, dict) else fn(stored)

    @staticmethod
    def _put(p: torch.Tensor, stored) -> None:
        if isinstance(stored, dict):
            for name, tensor in stored.items():
                setattr(p, name, tensor)
        else:
            p.data = stored


# leaf_level: layers with fewer frozen weights than this stay on the GPU (norm weights).
_MIN_LEAF_ELEMENTS = 2**12


def _leaf_units(block: nn.Module) -> list[nn.Module]:
    """The layers of `block` that leaf_level moves one by one, in registration (= forward) order: peft
    LoRA wrappers as a whole (their fused forward reads the base weight directly) and other leaf
    modules with enough frozen weights."""
    from peft.tuners.lora.layer import LoraLayer

    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        children = list(module.children())
        if isinstance(module, LoraLayer) or not children:
            if sum(p.numel() for p in module.parameters() if not p.requires_grad) >= _MIN_LEAF_ELEMENTS:
                units.append(module)
            return
        for child in children:
            visit(child)

    visit(block)
    return units


class _WeightRef:
    """Stands for a frozen weight autograd saved during a leaf_level recomputation."""

    def __init__(self, group: _Group, index: int, view: torch.Tensor):
        self.group, self.index = group, index
        self.size, self.stride, self.offset = view.size(), view.stride(), view.storage_offset()

    def materialize(self) -> torch.Tensor:
        home = self.group.home[self.index]
        return home.to(self.group.compute, non_blocking=True).as_strided(self.size, self.stride, self.offset)


class GroupOffloader:
    """Owns the block groups of one transformer and their traffic between CPU and GPU: the frozen
    weights (`offload_weights`) and the saved block inputs (`offload_activations`)."""

    def __init__(self, transformer, blocks_per_group: int = 1, use_stream: bool = False,
                 offload_weights: bool = True, offload_activations: bool = False,
                 compute: torch.device | None = None, leaf_level: bool = False):
        # compute: where blocks run (default: where the LoRA weights are; given when they move later, FSDP2)
        self.compute = compute or next(p for p in transformer.parameters() if p.requires_grad).device
        cuda = self.compute.type == "cuda"
        blocks = [*transformer.text_transformer_blocks, *transformer.visual_transformer_blocks]
        self.first_block = blocks[0]
        self.leaf_level = leaf_level and offload_weights
        if self.leaf_level:
            units = [[unit] for block in blocks for unit in _leaf_units(block)]
        else:
            units = [blocks[i : i + blocks_per_group] for i in range(0, len(blocks), blocks_per_group)]
        self.leaf_units = [unit for members in units for unit in members] if self.leaf_level else []
        self.groups: list[_Group] = []
        self.group_of: dict[int, _Group] = {}
        # one weight per pinned request would be rounded up to a power of two by torch's allocator (Pro:
        # 35.9 -> 39.3 GiB); the homes share slabs instead, no bigger than the weights need
        homes = PinnedArena(pin=cuda, slab_bytes=slab_bytes_for(
            [t.numel() * t.element_size() for block in blocks for t in [*block.parameters(), *block.buffers()]]))
        for members in units if offload_weights else ():
            group = _Group(len(self.groups), members, self.compute, homes)
            self.groups.append(group)
            for member in members:
                self.group_of[id(member)] = group
        if self.leaf_level:  # what no unit holds (small norm weights, buffers) stays on the GPU
            owned = {id(p) for group in self.groups for p in group.params}
            for block in blocks:
                for module in block.modules():
                    for tensor in [*module._parameters.values(), *module._buffers.values()]:
                        if tensor is not None and id(tensor) not in owned and not tensor.requires_grad:
                            tensor.data = tensor.data.to(self.compute)
        self.stream = torch.cuda.Stream(self.compute) if (use_stream and cuda) else None
        self.offload_activations = offload_activations
        self.arena = PinnedArena()
        self.stashes: list[list[StashedTensor | None]] = []  # per block call of this forward pass
        if cuda:
            torch.cuda.empty_cache()

    def stash(self, block: nn.Module, tensors: tuple[torch.Tensor, ...]) -> tuple[int, tuple]:
        """Send the large inputs a block keeps for backward to the CPU; returns (call index, kept ones)."""
        if block is self.first_block:
            self.stashes = []  # a new forward pass
            self.arena = self.arena.new_pass()
        # (shared inputs, RoPE, need no gradient and stay)
        moved = [(StashedTensor(t, self.stream, self.arena) if self.offload_activations and t.requires_grad
                  and t.numel() >= activation_offload.MIN_OFFLOADED_ELEMENTS else None) for t in tensors]
        self.stashes.append(moved)
        kept = tuple(torch.empty(0) if m is not None else t for m, t in zip(moved, tensors, strict=True))
        return len(self.stashes) - 1, kept

    def unstash(self, index: int, kept: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The block's saved inputs back on the GPU; the previous block's start coming on the side stream."""
        moved = self.stashes[index]
        tensors = [t if m is None else m.fetch(self.stream) for m, t in zip(moved, kept, strict=True)]
        self.stashes[index] = [None] * len(moved)
        if index > 0:
            for earlier in self.stashes[index - 1]:
                if earlier is not None:
                    earlier.prefetch(self.stream)
        return tensors

    def enter_block(self, block: nn.Module, direction: int) -> None:
        """Before a block computes: its group comes in (leaf_level: its layers come in one by one)."""
        if not self.leaf_level:
            self.enter(block, direction)

    def weights_by_reference(self):
        """leaf_level: while a block is recomputed for backward, saved frozen weights become references."""
        if not self.leaf_level:
            return contextlib.nullcontext()

        def pack(tensor: torch.Tensor):
            try:
                storage = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # wrapper tensors (torchao) are kept as they are
                return tensor
            for group in self.groups:
                if group.resident:
                    for index, param in enumerate(group.params):
                        if (isinstance(group.home[index], torch.Tensor) and param.numel()
                                and param.untyped_storage().data_ptr() == storage):
                            return _WeightRef(group, index, tensor)
            return tensor

        def unpack(saved):
            return saved.materialize() if isinstance(saved, _WeightRef) else saved

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)

    def _prefetch(self, index: int) -> None:
        if self.stream is not None and 0 <= index < len(self.groups):
            self.groups[index].onload(self.stream)

    def enter(self, block: nn.Module, direction: int) -> _Group | None:
        """Make `block`'s group resident; prefetch the next one in `direction` (+1 forward, -1 backward)."""
        group = self.group_of.get(id(block))
        if group is None:  # weights are not offloaded
            return None
        for other in self.groups:  # keep at most the current group and the prefetched one
            if other is not group and other.index != group.index + direction and other.resident:
                other.offload()
        group.onload()
        group.wait()
        self._prefetch(group.index + direction)
        return group


class _OffloadedCheckpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, offloader: GroupOffloader, block: nn.Module, rest: tuple, anchor: torch.Tensor,
                *tensors: torch.Tensor):
        offloader.enter_block(block, +1)
        with torch.no_grad(), nabla.recomputed_later():  # (NABLA: backward's recomputation reuses the masks)
            output = block(*_merge(tensors, rest))
        ctx.offloader, ctx.block, ctx.rest = offloader, block, rest
        # backward runs outside the caller's autocast: the recomputation must use the same one
        device_type = offloader.compute.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.stash_index, kept = offloader.stash(block, tensors)
        ctx.save_for_backward(*kept)
        ctx.input_requires_grad = [t.requires_grad for t in tensors]
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        ctx.offloader.enter_block(ctx.block, -1)
        saved = ctx.offloader.unstash(ctx.stash_index, ctx.saved_tensors)
        inputs = [t.detach().requires_grad_(grad) for t, grad in zip(saved, ctx.input_requires_grad, strict=True)]
        device_type, enabled, dtype = ctx.autocast
        with (torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled),
              ctx.offloader.weights_by_reference()):
            output = ctx.block(*_merge(inputs, ctx.rest))
        torch.autograd.backward(output, grad_output)  # LoRA gradients accumulate here, in the block
        return (None, None, None, None, *[t.grad if t.requires_grad else None for t in inputs])


class _TensorSlot:
    """Marks where a tensor argument goes back (None and dicts are arguments too)."""


_SLOT = _TensorSlot()


def _split(args: tuple) -> tuple[tuple, tuple]:
    """Tensors travel through the autograd Function; everything else by position."""
    tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
    rest = tuple(_SLOT if isinstance(a, torch.Tensor) else a for a in args)
    return tensors, rest


def _merge(tensors, rest: tuple) -> list:
    values, it = [], iter(tensors)
    for item in rest:
        values.append(next(it) if item is _SLOT else item)
    return values


_BLOCK_PREFIXES = ("text_transformer_blocks.", "visual_transformer_blocks.")


def place_for_offload(transformer, device: torch.device | str) -> None:
    """Put everything but the blocks' frozen weights on `device` (LoRA weights included)."""
    for name, parameter in transformer.named_parameters():
        if not name.startswith(_BLOCK_PREFIXES) or parameter.requires_grad:
            parameter.data = parameter.data.to(device)
    for module_name, module in transformer.named_modules():
        if (module_name + ".").startswith(_BLOCK_PREFIXES):
            continue  # the offloader owns the blocks' buffers
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)


def enable_group_offload(transformer, blocks_per_group: int = 1, use_stream: bool = False,
                         offload_activations: bool = False, offload_weights: bool = True,
                         compute: torch.device | None = None, leaf_level: bool = False) -> GroupOffloader:
    """Offload the transformer's blocks; in training every block runs checkpointed through the
    offloader, in inference (validation) a pre-hook brings each block's group in before it runs
    (leaf_level: each layer's weights before that layer runs, in training too).
    With `offload_weights=False` only the saved activations move (the weights stay on the GPU)."""
    offloader = GroupOffloader(transformer, blocks_per_group, use_stream, offload_weights, offload_activations, compute,
                               leaf_level)
    # the block's trainable LoRA weights are not inputs of the Function: this anchor makes its output
    # require a gradient even when no input does (the first text block), so backward reaches it
    anchor = torch.zeros(0, requires_grad=True)

    def offloaded_checkpoint(module, *args):
        tensors, rest = _split(args)
        return _OffloadedCheckpoint.apply(offloader, module, rest, anchor, *tensors)

    def onload_for_inference(module, args):
        if not (module.training and torch.is_grad_enabled()):
            offloader.enter(module, +1)

    def onload_layer(module, args):
        offloader.enter(module, +1)

    if offloader.leaf_level:
        for unit in offloader.leaf_units:
            unit.register_forward_pre_hook(onload_layer)
    else:
        for block in [*transformer.text_transformer_blocks, *transformer.visual_transformer_blocks]:
            block.register_forward_pre_hook(onload_for_inference)
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=offloaded_checkpoint)
    return offloader
