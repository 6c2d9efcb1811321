"""Which ways of compiling FlexAttention (forward + backward) lower at NABLA's 64-token blocks on this GPU
and torch, how long each takes to compile, and how fast what it picked runs. Prints one JSON line each.

    python benchmarks/tools/flex_options_probe.py [--head-dim 64] [--only SUBSTRING]

Why: in the default mode, torch's heuristics give FlexAttention's backward one tiling per GPU and head
size, and on Hopper at head sizes 64 and 128 it is 128 tokens wide (torch 2.13,
`template_heuristics/triton.py`, the "sm90" row). The backward's lowering drops a tiling that does not
divide the mask's 64-token blocks *before* kernel_options are applied, so given tiles cannot rescue it:
"No choices to select" (H100, torch 2.11, 2026-12-07: every default-mode candidate below failed; only
max-autotune lowered, after benchmarking 12 tilings: 158 s at 93,696 tokens). The candidate "default,
tiles clamped" keeps the heuristic's stages and warps and narrows its tiles to 64 (k5tune's
`nabla.clamp_flex_tiles`, TrainingPlan flex_tiling "heuristic", `k5tune bench --flex-tiling heuristic`):
if it lowers and runs near the autotuned speed, NABLA could compile in the default mode (no autotune
per clip length; compiled blocks without autotuning every matmul). It runs last: the clamp is
process-wide.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from k5tune.bench.measure import median_seconds
from k5tune.models.kandinsky5.nabla import BLOCK, clamp_flex_tiles

P64 = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64}
# name: (mode, kernel_options, clamp the heuristic's tiles to 64). The first seven failed on an H100 with
# torch 2.11 (2026-12-07); max-autotune lowered.
CANDIDATES = {
    "default, prefixed 64 all, bwd 4 stages 4 warps": (None, {**P64, "bwd_num_stages": 4, "bwd_num_warps": 4}, False),
    "default, prefixed 64 all, bwd stages 3": (None, {**P64, "bwd_num_stages": 3, "bwd_num_warps": 4}, False),
    "default, prefixed, bwd 32/64/64/32": (None, {**P64, "bwd_BLOCK_M1": 32, "bwd_BLOCK_N2": 32}, False),
    "default, unprefixed 64 all": (None, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 64,
                                          "BLOCK_M2": 64, "BLOCK_N2": 64}, False),
    "default, BACKEND TRITON, prefixed 64 all": (None, {"BACKEND": "TRITON", **P64}, False),
    "default, BACKEND TRITON alone": (None, {"BACKEND": "TRITON"}, False),
    "default, none": (None, {}, False),
    "max-autotune-no-cudagraphs": ("max-autotune-no-cudagraphs", {}, False),
    "default, tiles clamped": (None, {}, True),  # (last: the clamp stays for the rest of the process)
}

CUDA = torch.device("cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=64, help="64: Lite; 128: Pro")
    parser.add_argument("--tokens", type=int, default=64 * 96)
    parser.add_argument("--only", default="", help="probe only the candidates whose name holds this")
    args = parser.parse_args()
    heads, blocks = 28 if args.head_dim == 64 else 32, args.tokens // BLOCK
    for name, (mode, options, clamped) in CANDIDATES.items():
        if args.only not in name:
            continue
        torch._dynamo.reset()
        if clamped:
            clamp_flex_tiles()
        q, k, v = (torch.randn(1, heads, args.tokens, args.head_dim, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        counts = torch.full((1, heads, blocks), max(1, blocks // 7), dtype=torch.int32, device="cuda")
        indices = torch.arange(blocks, dtype=torch.int32, device="cuda").expand(1, heads, blocks, blocks).contiguous()
        mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=BLOCK)  # partial blocks, as k5tune holds them
        compiled = torch.compile(flex_attention, mode=mode, dynamic=False)

        def step(compiled=compiled, mask=mask, options=options, qkv=(q, k, v)):
            compiled(*qkv, block_mask=mask, kernel_options=options).sum().backward()

        started = time.perf_counter()
        row = {"options": name, "head_dim": args.head_dim, "tokens": args.tokens}
        try:
            step()
            torch.cuda.synchronize()
            row.update(ok=True, compile_s=round(time.perf_counter() - started, 1),
                       forward_backward_ms=round(1000 * median_seconds(step, 5, 1, CUDA), 2))
        except Exception as error:  # noqa: BLE001 (a probe: every failure is the answer)
            row.update(ok=False, error=str(error).splitlines()[0][:200])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
