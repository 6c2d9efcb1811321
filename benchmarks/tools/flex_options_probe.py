"""Which FlexAttention kernel_options lower (forward + backward, compiled, default mode) at NABLA's 64-token
blocks on this GPU and torch: each candidate compiled once at a small shape. Prints one JSON line each."""

import json
import sys
import time

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

P64 = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64}
# (mode, kernel_options) as probed on an H100, torch 2.11, 2026-12-07: only max-autotune lowered
CANDIDATES = {
    "default, prefixed 64 all, bwd 4 stages 4 warps": (None, {**P64, "bwd_num_stages": 4, "bwd_num_warps": 4}),
    "default, prefixed 64 all, bwd stages 3": (None, {**P64, "bwd_num_stages": 3, "bwd_num_warps": 4}),
    "default, prefixed, bwd 32/64/64/32": (None, {**P64, "bwd_BLOCK_M1": 32, "bwd_BLOCK_N2": 32}),
    "default, unprefixed 64 all": (None, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 64,
                                          "BLOCK_M2": 64, "BLOCK_N2": 64}),
    "default, BACKEND TRITON, prefixed 64 all": (None, {"BACKEND": "TRITON", **P64}),
    "default, BACKEND TRITON alone": (None, {"BACKEND": "TRITON"}),
    "default, none": (None, {}),
    "max-autotune-no-cudagraphs, prefixed 64 all, bwd 4 stages 4 warps": (
        "max-autotune-no-cudagraphs", {**P64, "bwd_num_stages": 4, "bwd_num_warps": 4}),
}

tokens, heads = 64 * 96, 28
blocks = tokens // 64
for name, (mode, options) in CANDIDATES.items():
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, heads, tokens, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    counts = torch.full((1, heads, blocks), blocks // 4, dtype=torch.int32, device="cuda")
    indices = torch.arange(blocks, dtype=torch.int32, device="cuda").expand(1, heads, blocks, blocks).contiguous()
    mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), indices, counts, indices, BLOCK_SIZE=64)
    started = time.perf_counter()
    try:
        torch.compile(flex_attention, mode=mode)(q, k, v, block_mask=mask, kernel_options=options).sum().backward()
        torch.cuda.synchronize()
        print(json.dumps({"options": name, "ok": True, "s": round(time.perf_counter() - started, 1)}), flush=True)
    except Exception as error:  # noqa: BLE001 (a probe: every failure is the answer)
        print(json.dumps({"options": name, "ok": False, "error": str(error).splitlines()[0][:200]}), flush=True)
sys.exit(0)
