"""Useful FLOPs of a training step, and the card's measured matrix rate (the ceiling for the MFU figure)."""

from __future__ import annotations

import torch


def forward_flops(config: dict, tokens: int, text_tokens: int, batch: int, attention_density: float = 1.0) -> float:
    """Matrix FLOPs of one forward pass (2 per multiply-add); attention counts QK^T and PV, of the (query,
    key) blocks computed (`attention_density`: NABLA's measured share; 1 for dense attention)."""
    d, f = config["model_dim"], config["ff_dim"]
    visual_block = (
        2 * tokens * d * d * 4  # self-attention q, k, v, out
        + 2 * 2 * tokens * tokens * d * attention_density  # self-attention scores and values
        + 2 * tokens * d * d * 2 + 2 * text_tokens * d * d * 2  # cross-attention q, out / k, v
        + 2 * 2 * tokens * text_tokens * d  # cross-attention scores and values
        + 2 * tokens * d * f * 2  # feed-forward
    )
    text_block = 2 * text_tokens * d * d * 4 + 2 * 2 * text_tokens * text_tokens * d + 2 * text_tokens * d * f * 2
    return batch * (config["num_visual_blocks"] * visual_block + config["num_text_blocks"] * text_block)


def useful_flops(config: dict, tokens: int, text_tokens: int, batch: int, attention_density: float = 1.0) -> float:
    """Forward + backward counted as 3 forwards (the usual convention; recomputation is not useful work)."""
    return 3 * forward_flops(config, tokens, text_tokens, batch, attention_density)


def matmul_peak_tflops(device: torch.device) -> float | None:
    """The card's measured bf16 matrix rate (8192^3 products), the ceiling for the MFU figure."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1000) / 1e12
