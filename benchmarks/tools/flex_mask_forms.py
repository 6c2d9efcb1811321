"""Time FlexAttention forward + backward under one NABLA mask in the two forms a BlockMask can take.

    python benchmarks/tools/flex_mask_forms.py [--tokens 93696] [--heads 28] [--density 0.14]

diffusers' `nablaT_v2` returns every kept block as a "full" block (no mask_mod evaluated) beside an
empty "partial" set whose transposed indices still take a (heads x blocks x blocks) int32 tensor. The
same blocks as "partial" blocks under the no-op mask_mod need one index tensor fewer (a third of the
mask's memory): the form k5tune trains with (`nabla.as_partial_blocks`). This times both forms, compiled
as k5tune compiles FlexAttention (max-autotune), and checks that they compute the same. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from k5tune.bench.measure import median_seconds
from k5tune.models.kandinsky5.nabla import BLOCK, as_partial_blocks

CUDA = torch.device("cuda")


def _masks(heads: int, blocks: int, density: float, device: str):
    scores = torch.rand(1, heads, blocks, blocks, device=device)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(max(1, round(density * blocks)),
                                                                               dim=-1).indices, True)
    counts = keep.sum(-1).to(torch.int32)
    indices = keep.to(torch.int32).argsort(dim=-1, descending=True).to(torch.int32)
    full = BlockMask.from_kv_blocks(torch.zeros_like(counts), indices, counts, indices, BLOCK_SIZE=BLOCK)
    return {"full blocks (diffusers' form)": full, "partial blocks, no-op mask_mod (k5tune)": as_partial_blocks(full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=93696)
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--density", type=float, default=0.14)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    compiled = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")
    q, k, v = (torch.randn(1, args.heads, args.tokens, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn_like(q)
    report, results = {}, []
    for name, mask in _masks(args.heads, args.tokens // BLOCK, args.density, "cuda").items():
        def step(mask=mask):
            out = compiled(q, k, v, block_mask=mask)
            out.backward(grad)
            return out

        for t in (q, k, v):
            t.grad = None
        started = time.perf_counter()
        out = step().detach()
        results.append([out] + [t.grad.clone() for t in (q, k, v)])  # the output and dq, dk, dv of one step
        tensors = {t.data_ptr(): t for t in mask.as_tuple() if isinstance(t, torch.Tensor)}  # (shared once)
        mask_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        report[name] = {"first_call_s": round(time.perf_counter() - started, 1),
                        "forward_backward_ms": round(1000 * median_seconds(step, args.repeats, 1, CUDA), 2),
                        "mask_gib": round(mask_bytes / 2**30, 3)}
    report["max_abs_difference"] = {what: (a - b).abs().max().item()
                                     for what, a, b in zip(("out", "dq", "dk", "dv"), *results, strict=True)}
    report["shape"] = {"tokens": args.tokens, "heads": args.heads, "density": args.density}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
