"""Stream the Qwen2.5-VL text encoder through the GPU while caching prompts.

Qwen2.5-VL-7B is 15.4 GiB in bf16, more than the whole training step needs. Caching only runs it
forward (no gradients), so its weights can stay in CPU memory and come to the GPU one part at a
time: the token embedding, then each decoder layer, then the output head, each moved back to the
CPU right after it ran. This uses diffusers' group-offload hooks (`apply_group_offloading`, block
level); the embeddings are exactly those of the model held whole on the GPU (the same modules run on
the same inputs, only their weights travel).
"""

from __future__ import annotations

import torch

GIB = 2**30
# What a batch of 8 captions at the 512-token limit needs beside the weights: the logits the model's
# head computes (8 x 640 x 152064 in bf16, 1.45 GiB) and the hidden states of every layer that the
# pipeline asks for (0.98 GiB), rounded up.
TEXT_ACTIVATION_HEADROOM = 3 * GIB

# The modules of Qwen2_5_VLForConditionalGeneration that group offloading must descend into (its
# block level only groups ModuleLists that are direct children). The embedding is called by
# Qwen2_5_VLModel before the language model's own forward, and the output head by the outer model,
# so each is its own group; the vision tower's parts never run for text and stay on the CPU.
STREAMED_PARTS = ("model", "language_model", "visual", "embed_tokens", "lm_head")


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def should_stream_text_encoder(offload_during_startup: bool, weight_bytes: int, free_bytes: int | None) -> bool:
    """Stream when the user asked for a small startup footprint, or when the model would not fit.

    `offload_during_startup` is the low-memory setting (every preset for cards under 80 GB sets it):
    there the text encoder, the biggest thing caching loads, must not be whole on the GPU. Without it
    the model is streamed only if its weights and activations exceed the free memory (`free_bytes`,
    None without a GPU): a run then still caches instead of failing with an out-of-memory error.
    """
    if offload_during_startup:
        return True
    return free_bytes is not None and weight_bytes + TEXT_ACTIVATION_HEADROOM > free_bytes


def free_gpu_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def _check_layout(model: torch.nn.Module) -> None:
    """Fail with a clear message if transformers changed the module tree the hooks rely on."""
    language = getattr(getattr(model, "model", None), "language_model", None)
    if not isinstance(getattr(language, "layers", None), torch.nn.ModuleList) or not hasattr(model, "lm_head"):
        raise TypeError(
            f"cannot stream {type(model).__name__}: expected Qwen2_5_VLForConditionalGeneration with "
            "model.language_model.layers and lm_head (transformers changed its layout?); "
            "set offload_during_startup to false on a card that holds the text encoder"
        )


def stream_text_encoder(model: torch.nn.Module, device: torch.device | str, layers_per_group: int = 1,
                        use_stream: bool = False) -> None:
    """Keep `model`'s weights on the CPU and bring each part to `device` only while it computes.

    `model` must be on the CPU. With `layers_per_group=1` at most one decoder layer (0.43 GiB for the
    7B model) is on the GPU at a time. `use_stream` prefetches the next layer on a side CUDA stream
    from pinned memory (faster for many captions; pins a CPU copy of the weights).
    """
    from diffusers.hooks import apply_group_offloading

    _check_layout(model)
    apply_group_offloading(
        model, onload_device=torch.device(device), offload_device=torch.device("cpu"),
        offload_type="block_level", num_blocks_per_group=layers_per_group, use_stream=use_stream,
        block_modules=list(STREAMED_PARTS),
    )
