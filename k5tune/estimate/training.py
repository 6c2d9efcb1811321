"""The training peak per GPU, term by term, and the pinned CPU memory per process.

LoRA weights with their gradient and AdamW state, one checkpointed input per block, the attention
outputs that selective checkpointing keeps, and the working set of the block being recomputed. The
plan (k5tune/train/plan.py's TrainingPlan, the one the trainer runs) decides which of these are on
the GPU: group offload keeps only two groups of block weights there, offload_activations moves the
block inputs to pinned CPU memory, FSDP2 shards weights and LoRA state over the processes; whether
blocks compile (and so keep their checkpointing policy) is the plan's decision too.
"""

from __future__ import annotations

from k5tune.estimate.shape import TrainingShape, estimate_problem
from k5tune.estimate.weights import GIB, WeightCount, _arena_bytes, lora_parameter_count, weight_count
from k5tune.models.flavours import FLAVOURS
from k5tune.train.plan import TrainingPlan

# Working memory of recomputing + back-propagating one block, per token per model_dim (bytes):
# 2.47 GiB at Lite's 24,576 tokens x 1792 (Lite, full checkpointing, run 3: 10.11 GiB measured minus
# the counted terms).
TRANSIENT_PER_TOKEN_DIM = 2.47 * GIB / (24576 * 1792)
# offload_activations: what stays on the GPU of the checkpointed block inputs, in hidden states (one
# block input each) — among it the input being recomputed, the one fetched ahead, the first visual
# block's input (it needs no gradient, so it is not moved) and copies still in flight. 7.1 = (8.05 GiB
# measured, Lite with offload_activations alone, run 12, minus the counted terms) / 84 MiB per hidden
# state; Pro (4096 wide, 60 blocks) is then predicted within 1.5 %.
ACTIVATION_OFFLOAD_RESIDUE = 7.1
# The same for compiled blocks, whose saved-tensor hooks move the block input and the kept attention
# outputs (k5tune/train/activation_offload.py): 2.1 hidden states' worth stays on the GPU (copies in
# flight, the block fetched ahead). Fitted on Lite, selective + offload_activations (run 23: 7.64 GiB);
# Pro (45.09 GiB, run 24) is then predicted within 0.3 %.
SAVED_OFFLOAD_RESIDUE = 2.1
ADAM_BYTES_PER_LORA_PARAM = 16  # fp32 weight + gradient + two AdamW moments
# NABLA: each visual block's BlockMask lives from its forward to the end of its backward (eager blocks
# share it with their recomputation; compiled blocks' checkpointing policy keeps it): bytes per (head,
# query block, key block) of 64 tokens. Held as partial blocks (nabla.as_partial_blocks), its kv indices
# and their transpose are int32: 8 bytes. The rest, the counts and the building transients, 0.5 bytes,
# fitted on Lite 10 s, 512x768x241 at 10 % density, blocks eager (one H200, 2026-12-07: 46.33 GiB) when
# the mask still had diffusers' form, one more int32 index tensor (NABLA_DIFFUSERS_FORM_EXTRA; the
# measured rows of that build are predicted with it, estimate/check.py). The 61-frame row is then
# predicted within 2 %.
NABLA_BYTES_PER_BLOCK_PAIR = 8.5
NABLA_DIFFUSERS_FORM_EXTRA = 4
NABLA_INDEX_BYTES_PER_BLOCK_PAIR = 8  # the two int32 index tensors: what activation offload moves of a mask


def _tokens_per_block(blocks: int, shape: TrainingShape, plan: TrainingPlan) -> list[int]:
    """Each visual block's tokens on one GPU (sequence parallelism: its chunk; TREAD: those kept)."""
    tokens = [shape.tokens * shape.batch // plan.sequence_parallel] * blocks
    for ratio, first, last in plan.tread:
        for index in range(first, last + 1):
            tokens[index] = round(tokens[index] * (1 - ratio))
    return tokens


def _weights_on_gpu(weights: WeightCount, plan: TrainingPlan) -> float:
    if plan.group_offload:  # the group computing, and the next one when it is prefetched
        groups = 2 if plan.group_offload_stream else 1
        return weights.outside_blocks + groups * plan.group_offload_blocks * weights.largest_block
    if plan.sharded and plan.fsdp_reshard:
        # each process keeps its shard of every block, plus the block computing and the next one gathered
        return weights.outside_blocks + weights.blocks / plan.fsdp_processes + 2 * weights.largest_block
    return weights.total  # (FSDP2 without resharding: every block stays gathered from forward to backward)


def _block_inputs(tokens: list[int], full: int, hidden: int, plan: TrainingPlan) -> float:
    """The checkpointed input of every block (bytes), or what activation offload leaves of them.

    Under FSDP2 the one measurement of offload_activations (Pro on 2 H100s, run 13: 38.7 GiB) is far
    above what moving the inputs out predicts (30.1 GiB; 40.7 GiB measured without it, run 14). It ran
    an earlier build of the FSDP2 code than run 14 and the cause is not known, so until it is measured
    again the estimate takes activation offload to save nothing under FSDP2: the safe side."""
    if plan.offloads_through_hooks(True):
        inputs = SAVED_OFFLOAD_RESIDUE * max(tokens) * hidden
    elif plan.offload_activations and not plan.sharded:
        inputs = ACTIVATION_OFFLOAD_RESIDUE * max(tokens) * hidden
    else:
        inputs = sum(tokens) * hidden
    if plan.tread:
        inputs += full * hidden  # the full stream waits beside the route (routes never nest)
    return inputs


def training_terms(flavour: str, shape: TrainingShape, plan: TrainingPlan) -> dict[str, float]:
    """The training peak per GPU, term by term (GiB); their sum is the peak."""
    problem = estimate_problem(plan)
    if problem:
        raise ValueError(problem)
    config = FLAVOURS[flavour].transformer_config
    d, blocks = config["model_dim"], config["num_visual_blocks"]
    weights = weight_count(flavour, plan.base_precision, plan.modulation_fp32)
    tokens = _tokens_per_block(blocks, shape, plan)
    hidden = 2 * d  # bytes per token of one bf16 hidden state
    lora = lora_parameter_count(config, shape.rank, shape.targets) * ADAM_BYTES_PER_LORA_PARAM
    kept = 0
    # (eager NABLA blocks keep no attention output: FlexAttention compiled alone is invisible to the policy)
    if (plan.checkpointing == "selective" and not plan.recomputes_fully()
            and not plan.offloads_through_hooks(True) and (plan.nabla is None or plan.compiles_blocks(True))):
        keep = blocks if plan.keep_attention_blocks is None else min(blocks, plan.keep_attention_blocks)
        kept = sum(tokens[:keep]) * hidden  # the self-attention output of each block
    working = TRANSIENT_PER_TOKEN_DIM * max(tokens) * d + 2 * weights.largest_linear  # + one dequantised weight
    return {
        "weights": _weights_on_gpu(weights, plan) / GIB,
        "LoRA + AdamW state": lora / plan.fsdp_processes / GIB,
        "block inputs": _block_inputs(tokens, shape.tokens * shape.batch, hidden, plan) / GIB,
        "kept attention": kept / GIB,
        "recompute working set": working / GIB,
        **({"NABLA block masks": _nabla_masks(flavour, shape, plan) / GIB} if plan.nabla is not None else {}),
        # sequence parallelism gathers the last block's output whole through an all-to-all: the chunk sent to
        # each process, what comes back, the assembled output and its gradient, four hidden states of the
        # whole clip (counted, not measured yet: no multi-GPU machine so far)
        **({"gathered output": 4 * shape.tokens * shape.batch * hidden / GIB} if plan.sequence_parallel > 1 else {}),
    }


def nabla_block_pairs(flavour: str, shape: TrainingShape, plan: TrainingPlan) -> int:
    """(head, query block, key block) triples of every visual block's mask on one GPU (heads split over a
    sequence group)."""
    config = FLAVOURS[flavour].transformer_config
    heads = config["model_dim"] // sum(config["axes_dims"]) // plan.sequence_parallel
    blocks = shape.tokens // 64
    return config["num_visual_blocks"] * shape.batch * heads * blocks * blocks


def _nabla_masks(flavour: str, shape: TrainingShape, plan: TrainingPlan) -> float:
    """Bytes of the block masks on the GPU: every visual block's; with compiled blocks under activation
    offload the saved-tensor hooks move each mask's index tensors with the rest of what the block keeps,
    and what stays is counted as for the block inputs (SAVED_OFFLOAD_RESIDUE blocks' worth; not measured
    yet with NABLA)."""
    total = nabla_block_pairs(flavour, shape, plan) * NABLA_BYTES_PER_BLOCK_PAIR
    if plan.offloads_through_hooks(True):
        return total * min(1.0, SAVED_OFFLOAD_RESIDUE / FLAVOURS[flavour].transformer_config["num_visual_blocks"])
    return total


def training_peak_gib(flavour: str, shape: TrainingShape, plan: TrainingPlan) -> float:
    return sum(training_terms(flavour, shape, plan).values())


def pinned_cpu_gib(flavour: str, shape: TrainingShape, plan: TrainingPlan) -> float:
    """Pinned CPU memory per process, as allocated (in slabs, PinnedArena): the offloaded blocks' home
    copies and the offloaded activations: per visual block its input, and with compiled selective
    blocks the attention it keeps; with compiled NABLA blocks, the two index tensors of its mask."""
    config = FLAVOURS[flavour].transformer_config
    pinned = (weight_count(flavour, plan.base_precision, plan.modulation_fp32).blocks_pinned
              if plan.group_offload else 0)
    if plan.offload_activations:
        hidden = 2 * config["model_dim"]
        tokens = _tokens_per_block(config["num_visual_blocks"], shape, plan)
        keep = 0
        if plan.offloads_through_hooks(True) and plan.checkpointing == "selective":
            keep = len(tokens) if plan.keep_attention_blocks is None else plan.keep_attention_blocks
        stashes = [n * hidden for index, n in enumerate(tokens) for _ in range(2 if index < keep else 1)]
        if plan.nabla is not None and plan.offloads_through_hooks(True):
            per_block = nabla_block_pairs(flavour, shape, plan) // len(tokens)
            stashes += [per_block * NABLA_INDEX_BYTES_PER_BLOCK_PAIR // 2] * (2 * len(tokens))
        pinned += _arena_bytes(stashes)
    return pinned / GIB
