"""NABLA sparse attention, as the diffusers Kandinsky 5 pipeline runs it, for training too.

The 10 s and Pro HD checkpoints attend sparsely: the visual tokens are ordered in 8x8 patches per
latent frame ("fractal" order, so each block of 64 tokens is one patch), and each head keeps, per query
block, the key blocks that hold a share P of its pooled attention map (`nablaT_v2`), plus a sliding
window of neighbouring patches in time and space (STA). The reference for all of it is diffusers: the
pipeline's `get_sparse_params` (and its `fast_sta_nabla`) and the transformer's `nablaT_v2`, which are
called here rather than written again, so the mask training sees is the mask inference sees.

On a GPU the block mask drives FlexAttention (compiled): only the kept blocks are computed. FlexAttention
has no backward on the CPU, so there the same mask, expanded to tokens, drives SDPA: the same maths.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

BLOCK = 64  # tokens per block: one 8x8 patch of one latent frame
PATCH_SIDE = 8  # the patched grid must tile into 8x8 patches


@dataclass(frozen=True)
class NablaSettings:
    P: float = 0.9  # share of each query block's pooled attention mass kept
    wT: int = 11  # STA window in latent frames
    wH: int = 3  # STA window in patches, height
    wW: int = 3  # STA window in patches, width
    add_sta: bool = True
    method: str = "topcdf"
    # benchmarks only: keep this share of key blocks per query block (the top of the pooled map) instead of
    # the P threshold. Random weights give a nearly uniform map, so P keeps ~90 % of blocks where a trained
    # checkpoint keeps far fewer; this times the sparse step at a chosen density.
    fixed_density: float | None = None

    @classmethod
    def from_transformer_config(cls, config: dict[str, Any]) -> NablaSettings | None:
        """The checkpoint's own NABLA settings, or None when its attention is regular."""
        if config.get("attention_type") != "nabla":
            return None
        default = cls()
        return cls(P=float(config.get("attention_P", default.P)), wT=int(config.get("attention_wT", default.wT)),
                   wH=int(config.get("attention_wH", default.wH)), wW=int(config.get("attention_wW", default.wW)),
                   add_sta=bool(config.get("attention_add_sta", default.add_sta)),
                   method=str(config.get("attention_method", default.method)))

    def with_overrides(self, **given: Any) -> NablaSettings:
        return replace(self, **{k: v for k, v in given.items() if v is not None})

    def transformer_config(self) -> dict[str, Any]:
        """The transformer config entries that make the diffusers pipeline run these settings."""
        return {"attention_type": "nabla", "attention_P": self.P, "attention_wT": self.wT, "attention_wH": self.wH,
                "attention_wW": self.wW, "attention_add_sta": self.add_sta, "attention_method": self.method}


def parse_window(text: str) -> tuple[int, int, int]:
    """'11x3x3' (latent frames x patches high x patches wide) -> (11, 3, 3)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not FRAMESxHEIGHTxWIDTH of positive whole numbers, e.g. 11x3x3")
    return int(parts[0]), int(parts[1]), int(parts[2])


def tiling_problem(height: int, width: int, spatial_compression: int = 8, patch: int = 2) -> str | None:
    """Why a pixel size cannot run NABLA (the patched grid must tile into 8x8 patches), or None."""
    multiple = spatial_compression * patch * PATCH_SIDE
    if height % multiple == 0 and width % multiple == 0:
        return None
    return f"{height}x{width} does not tile into NABLA's blocks: both sides must be multiples of {multiple}"


def nearest_tiling_sizes(height: int, width: int, multiple: int = 128) -> list[str]:
    """The sizes of multiples of `multiple` around HEIGHTxWIDTH (down and up), for error messages."""
    heights = sorted({max(multiple, height // multiple * multiple), -(-height // multiple) * multiple})
    widths = sorted({max(multiple, width // multiple * multiple), -(-width // multiple) * multiple})
    return [f"{h}x{w}" for h in heights for w in widths]


def sparse_params(visual_shape: tuple[int, int, int], settings: NablaSettings, device: torch.device) -> dict:
    """The `sparse_params` the diffusers pipeline builds for a patched grid (T, H, W), with `settings`."""
    from diffusers import Kandinsky5T2VPipeline

    frames, height, width = visual_shape
    if height % PATCH_SIDE or width % PATCH_SIDE:
        raise ValueError(f"patched grid {height}x{width} does not tile into {PATCH_SIDE}x{PATCH_SIDE} patches")
    sta = Kandinsky5T2VPipeline.fast_sta_nabla(frames, height // PATCH_SIDE, width // PATCH_SIDE, settings.wT,
                                               settings.wH, settings.wW, device=device)
    return {"sta_mask": sta.unsqueeze(0).unsqueeze(0), "attention_type": "nabla", "to_fractal": True,
            "P": settings.P, "wT": settings.wT, "wW": settings.wW, "wH": settings.wH, "add_sta": settings.add_sta,
            "visual_shape": visual_shape, "method": settings.method, "fixed_density": settings.fixed_density}


_sparse_params_cache: dict = {}
compiled_shapes: set[tuple[int, ...]] = set()  # the visual grids (a bucket, a resolution) attention compiled for


def cached_sparse_params(visual_shape: tuple[int, int, int], settings: NablaSettings, device: torch.device) -> dict:
    """`sparse_params` for a grid, built once per (grid, settings, device): the STA mask of a bucket is
    the same at every step."""
    key = (visual_shape, settings, str(device))
    if torch.device(device).type == "cuda":  # one attention graph per grid (compiled blocks and compiled flex alike)
        compiled_shapes.add(visual_shape)
    if key not in _sparse_params_cache:
        _sparse_params_cache[key] = sparse_params(visual_shape, settings, device)
    return _sparse_params_cache[key]


@torch.no_grad()
def block_mask(query: torch.Tensor, key: torch.Tensor, params: dict):
    """diffusers' own NABLA block mask for (B, S, heads, D) queries and keys (a FlexAttention BlockMask),
    held as partial blocks (`as_partial_blocks`)."""
    from diffusers.models.transformers.transformer_kandinsky import nablaT_v2

    if params.get("fixed_density") is not None:
        return _fixed_density_mask(query, key, params["sta_mask"], params["fixed_density"])
    return as_partial_blocks(nablaT_v2(query, key, params["sta_mask"], thr=params["P"]))


def as_partial_blocks(mask):
    """The same attention in two thirds of the memory.

    diffusers marks every kept block "full" (no mask_mod evaluated) and leaves the partial set empty, yet
    the empty set's transposed indices still fill a (heads x blocks x blocks) int32 tensor, and training
    keeps a layer's mask from its forward to the end of its backward: a third of all masks, 7 GiB at
    Lite 10 s (93,696 tokens, 32 layers). The same blocks as partial blocks under the no-op mask_mod
    (FlexAttention's default) need only the kv indices and their transpose."""
    from torch.nn.attention.flex_attention import BlockMask, noop_mask

    # (nablaT_v2 gives its partial set zero blocks; tests/test_nabla.py checks the dense masks are equal)
    return BlockMask(seq_lengths=mask.seq_lengths, kv_num_blocks=mask.full_kv_num_blocks,
                     kv_indices=mask.full_kv_indices, full_kv_num_blocks=None, full_kv_indices=None,
                     q_num_blocks=mask.full_q_num_blocks, q_indices=mask.full_q_indices, full_q_num_blocks=None,
                     full_q_indices=None, BLOCK_SIZE=mask.BLOCK_SIZE, mask_mod=noop_mask)


def _fixed_density_mask(query: torch.Tensor, key: torch.Tensor, sta: torch.Tensor, density: float):
    """The benchmark stand-in (NablaSettings.fixed_density): per query block, the top `density` share of key
    blocks of the pooled map (pooled as nablaT_v2 pools), with the sliding window added."""
    from torch.nn.attention.flex_attention import BlockMask

    q, k = query.transpose(1, 2), key.transpose(1, 2)
    batch, heads, tokens, dim = q.shape
    pooled = (q.reshape(batch, heads, tokens // BLOCK, BLOCK, dim).mean(-2)
              @ k.reshape(batch, heads, tokens // BLOCK, BLOCK, dim).mean(-2).transpose(-2, -1))
    keep = max(1, round(density * pooled.shape[-1]))
    mask = torch.zeros_like(pooled, dtype=torch.bool).scatter_(-1, pooled.topk(keep, dim=-1).indices, True)
    mask = torch.logical_or(mask, sta.bool())
    counts = mask.sum(-1).to(torch.int32)
    indices = mask.to(torch.int32).argsort(dim=-1, descending=True).to(torch.int32)
    return BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=BLOCK)  # partial blocks, as block_mask gives them


def density(mask) -> float:
    """Share of (query block, key block) pairs computed, over batch and heads."""
    return 1.0 - mask.sparsity() / 100.0


FLEX_TILINGS = ("autotune", "heuristic")
DEFAULT_FLEX_TILING = "heuristic"  # training's (TrainingPlan.flex_tiling), generation's and validation's
NARROWED_TILE_WARPS = 4  # warps on a tiling clamp_flex_tiles narrowed to 64 tokens
_compiled_flex: dict = {}


def _flex_attention(tiling: str = DEFAULT_FLEX_TILING):
    """FlexAttention compiled alone, for blocks that run eagerly (a compiled block traces it itself)."""
    if tiling not in _compiled_flex:
        from torch.nn.attention.flex_attention import flex_attention

        # one graph per shape (a bucket): masks change every step, shapes do not, so nothing recompiles
        # within a bucket; each new bucket compiles once (counted in compiled_shapes and reported).
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _compiled_flex[tiling] = torch.compile(flex_attention, dynamic=False, mode=flex_compile_mode(tiling))
    return _compiled_flex[tiling]


def flex_compile_mode(tiling: str) -> str | None:
    """torch.compile's mode for FlexAttention (alone or in a compiled block) under a TrainingPlan's
    `flex_tiling`.

    NABLA's blocks are 64 tokens, and the kernel's tiles must divide them. In the default mode torch's
    heuristics give the backward one tiling, 128 tokens wide on Hopper at head sizes 64 and 128, and the
    lowering drops it before kernel_options apply: "No choices to select" (H100, torch 2.11, tiles given
    or not: benchmarks/tools/flex_options_probe.py). "autotune" benchmarks max-autotune's 32- and 64-wide
    tilings instead (64x64 wins; once per shape and machine: 158 s at 93,696 tokens on an H200);
    "heuristic" keeps the default mode with the heuristic's tiles narrowed to 64 (clamp_flex_tiles): it
    lowers and compiles ~3.5x sooner. Narrowed with 8 warps kept, its kernels were slower (Lite 10 s on
    an H100: 9.63 s a step against 6.79 s autotuned; benchmarks/results/2026-12-07-s7-h100.md, -s8-h100.md);
    since session 9 a narrowed tiling takes 4 warps, autotuning's choice at that tile (clamp_flex_tiles)."""
    check_tiling(tiling)
    if tiling == "heuristic":
        clamp_flex_tiles()
        return None
    return "max-autotune-no-cudagraphs"


def check_tiling(tiling: str) -> None:
    if tiling not in FLEX_TILINGS:
        raise ValueError(f"unknown flex_tiling '{tiling}'; valid: {', '.join(FLEX_TILINGS)}")


def clamp_flex_tiles(limit: int = BLOCK, warps: int = NARROWED_TILE_WARPS) -> None:
    """Every FlexAttention tile torch's heuristics offer (forward and backward, default mode and
    autotuning alike) at most `limit` tokens, and a tiling so narrowed worked by at most `warps` warps;
    the stages stay the heuristic's. Process-wide: k5tune's only FlexAttention is NABLA's, whose blocks
    are 64 tokens. Idempotent.

    Why the warps: the Hopper heuristic's backward tiling at head sizes 64 and 128 is 64x128 with 8
    warps; narrowed to 64x64 and left at 8 warps it ran a Lite 10 s step in 9.63 s, where autotuning
    (whose candidates at 64x64 all have 4 warps) ran it in 6.79 s (H100). 4 warps on a 64x64 tile is
    also torch's own Hopper choice where its heuristic tiles 64-wide (head sizes under 64 and over 128),
    and autotuning's winner at 93,696 tokens (H100 and H200 logs: 64x64, 4 warps, 3 to 5 stages within
    1 %: benchmarks/results/2026-12-07-s5-h100, -h200).

    Set on InductorChoices itself rather than through `V.set_choices_handler`: that handler is
    thread-local, and a backward graph compiles on autograd's device thread."""
    import dataclasses

    from torch._inductor.choices import InductorChoices

    if getattr(InductorChoices, "_k5_flex_tile_limit", None) is not None:
        return

    def narrowed(config):
        tiles = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name.startswith("block_")}
        if all(size <= limit for size in tiles.values()):
            return config
        return dataclasses.replace(config, **{name: min(size, limit) for name, size in tiles.items()},
                                   num_warps=min(config.num_warps, warps))

    def clamped(original):
        def configs(self, *args, **kwargs) -> list:
            return [narrowed(c) for c in original(self, *args, **kwargs)]
        return configs

    InductorChoices.get_flex_attention_fwd_configs = clamped(InductorChoices.get_flex_attention_fwd_configs)
    InductorChoices.get_flex_attention_bwd_configs = clamped(InductorChoices.get_flex_attention_bwd_configs)
    InductorChoices._k5_flex_tile_limit = limit


def uses_flex(query: torch.Tensor) -> bool:
    """FlexAttention runs on the GPU; it has no backward on the CPU, where SDPA takes the same mask."""
    return query.is_cuda


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask,
              tiling: str = DEFAULT_FLEX_TILING) -> torch.Tensor:
    """Attention of (B, S, heads, D) tensors under a NABLA block mask -> (B, S, heads, D)."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if uses_flex(q):
        from torch.nn.attention.flex_attention import flex_attention

        # (in a compiled block, speed.py, FlexAttention is traced into the block's own graph)
        out = (flex_attention if torch.compiler.is_compiling() else _flex_attention(tiling))(q, k, v, block_mask=mask)
    else:  # the same mask, expanded to tokens, through SDPA
        blocks = mask.to_dense().bool()  # (B, heads, S/64, S/64)
        dense = blocks.repeat_interleave(BLOCK, dim=-2).repeat_interleave(BLOCK, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    return out.transpose(1, 2)


def _qkv(attn, hidden_states: torch.Tensor, rotary_emb: torch.Tensor, fused: bool = False):
    """Queries, keys and values as diffusers' Kandinsky5AttnProcessor makes them: the same ops, so the
    block mask built from them is bit for bit the pipeline's. `fused` (the fast path): q/k RMSNorm and
    RoPE as its one kernel each (fast.norm_rope, compiled on the GPU): the same operations in one pass
    instead of ~10 over fp32 copies (1.1 of the 7.9 s of a Lite 10 s step went on them, eager); bit for
    bit the stock ones on the CPU (tests/test_nabla.py), within rounding where compiled."""
    query, key, value = attn.to_query(hidden_states), attn.to_key(hidden_states), attn.to_value(hidden_states)
    shape = query.shape[:-1]
    query, key, value = (t.reshape(*shape, attn.num_heads, -1) for t in (query, key, value))
    if fused:
        from k5tune.models.kandinsky5.fast import fused_kernel

        norm_rope = fused_kernel("norm_rope")
        return (norm_rope(query, attn.query_norm.weight, attn.query_norm.eps, rotary_emb),
                norm_rope(key, attn.key_norm.weight, attn.key_norm.eps, rotary_emb), value)
    query = attn.query_norm(query.float()).type_as(query)
    key = attn.key_norm(key.float()).type_as(key)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(*x.shape[:-1], -1, 1, 2).to(torch.float32)
        return (rotary_emb * pairs).sum(dim=-1).reshape(*x.shape).to(torch.bfloat16)

    return rotate(query).type_as(query), rotate(key).type_as(key), value


class NablaAttnProcessor:
    """A visual self-attention's processor under NABLA: with `sparse_params` the sparse path, without
    them (dense validation, a regular model) the processor it replaced.

    Within a training step (`share_masks`), each layer builds its block mask once: the recomputation of
    a checkpointed block in backward reuses the forward's mask (its queries and keys are the same)."""

    def __init__(self, dense):
        from k5tune.models.kandinsky5.fast import FastAttnProcessor

        self.dense = dense
        self.fused = isinstance(dense, FastAttnProcessor)  # the fast path's q/k kernels (`fused_kernels`)
        self.mask = None
        self.sharing = False
        self.record_density = False  # benchmarks: measure each mask's density (a GPU sync)
        self.last_density: float | None = None
        self.exchange = None  # sequence parallelism: the mask and attention see every token of some heads
        self.tiling = DEFAULT_FLEX_TILING  # how compiled FlexAttention finds its tiles (TrainingPlan.flex_tiling)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, rotary_emb=None, sparse_params=None):
        if sparse_params is None or encoder_hidden_states is not None:
            return self.dense(attn, hidden_states, encoder_hidden_states, rotary_emb, sparse_params)
        query, key, value = _qkv(attn, hidden_states, rotary_emb, self.fused)
        exchange = self.exchange if attn.training else None
        if exchange is not None:
            query, key, value = exchange.to_heads(query), exchange.to_heads(key), exchange.to_heads(value)
        # Shared only by the step's training forward and its checkpointed recomputation (both with
        # gradients, or the forward without them inside the offloader's checkpoint: `recomputed_later`);
        # another forward without them (a rollout step, the eval loss) has its own queries and keys.
        # A compiled block keeps no Python state: its checkpointing policy keeps the mask (speed.py).
        training = torch.is_grad_enabled() or getattr(_forward_state, "recomputed_later", False)
        sharing = self.sharing and training and not torch.compiler.is_compiling()
        mask = self.mask if sharing and self.mask is not None else block_mask(query, key, sparse_params)
        if sharing:
            self.mask = mask
        if self.record_density:
            self.last_density = density(mask)
        out = attention(query, key, value, mask, self.tiling)
        if exchange is not None:
            out = exchange.to_sequence(out)
        return attn.out_layer(out.flatten(-2, -1))


_forward_state = threading.local()


@contextlib.contextmanager
def recomputed_later():
    """Around a training forward that runs without gradients because its block is recomputed with them
    in backward (offload.py's checkpoint): the masks it builds are the ones that recomputation reuses."""
    before = getattr(_forward_state, "recomputed_later", False)
    _forward_state.recomputed_later = True
    try:
        yield
    finally:
        _forward_state.recomputed_later = before


def self_attentions(transformer):
    return [block.self_attention for block in transformer.visual_transformer_blocks]


def install(transformer, settings: NablaSettings, tiling: str = DEFAULT_FLEX_TILING) -> None:
    """NABLA processors on the visual self-attentions, and `settings` in the transformer's config, so the
    diffusers pipeline (validation) runs the same attention; `tiling`: TrainingPlan.flex_tiling."""
    check_tiling(tiling)  # (an unknown tiling fails here, before training)
    for attention_module in self_attentions(transformer):
        if not isinstance(attention_module.processor, NablaAttnProcessor):
            attention_module.set_processor(NablaAttnProcessor(attention_module.processor))
        attention_module.processor.tiling = tiling
    transformer.register_to_config(**settings.transformer_config())
    transformer._k5_nabla = settings


def share_masks(transformer, enabled: bool) -> None:
    """Start (True) or end (False) a training step's mask sharing; ending drops the step's masks."""
    for attention_module in self_attentions(transformer):
        processor = attention_module.processor
        if isinstance(processor, NablaAttnProcessor):
            processor.sharing, processor.mask = enabled, None
