"""The released sizes of the Kandinsky 5 components other than the transformer.

Qwen2.5-VL-7B-Instruct (the text encoder), CLIP ViT-L/14's text tower (the pooled text vector) and
the HunyuanVideo VAE, written out value by value (transformers' `Qwen2_5_VLConfig()` defaults are
the 72B model's, so nothing is left to defaults there). Used to build full-size random-weight model
folders for GPU measurements (`benchmarks/tools/make_fullsize_model.py --full-components`) and by
`k5tune estimate`, which counts their weights on the meta device.
"""

from __future__ import annotations

import torch

QWEN_VOCAB = 152064  # the real embedding size; the offline tokenizers use far fewer ids
CLIP_VOCAB = 49408

# Qwen/Qwen2.5-VL-7B-Instruct config.json, text part.
QWEN25_VL_7B_TEXT = {
    "vocab_size": QWEN_VOCAB,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
# ... and its vision tower (never run for text, but loaded with the model: 1.26 GiB of its 15.4 GiB).
QWEN25_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "hidden_act": "silu",
    "in_channels": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
QWEN25_VL_7B_TOKENS = {  # the real special ids (all far past the offline tokenizer's ids)
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}

# openai/clip-vit-large-patch14, text tower. The pipeline runs CLIPTextModel and takes its
# `pooler_output` (768 wide): no text projection is applied.
CLIP_L_TEXT = {
    "vocab_size": CLIP_VOCAB,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# hunyuanvideo-community/HunyuanVideo vae/config.json (Kandinsky 5 ships the same VAE). These are
# also diffusers' AutoencoderKLHunyuanVideo() defaults; tests/test_text_stream.py checks that.
HUNYUAN_VIDEO_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "scaling_factor": 0.476986,
    "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4,
    "mid_block_add_attention": True,
}


def qwen25_vl_7b_config(layers: int | None = None, eos_token_id: int = 0, pad_token_id: int = 0):
    """Qwen2.5-VL-7B's config; `layers` shrinks the text and vision depth (CPU smoke tests only).

    Token ids default to those of the offline Qwen tokenizer (`<|endoftext|>` is id 0 there).
    """
    from transformers import Qwen2_5_VLConfig

    text = dict(QWEN25_VL_7B_TEXT, eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
    vision = dict(QWEN25_VL_7B_VISION)
    if layers is not None:
        text.update(num_hidden_layers=layers, max_window_layers=layers)
        vision.update(depth=layers, fullatt_block_indexes=[layers - 1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                              bos_token_id=None, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                              **QWEN25_VL_7B_TOKENS)
    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = eos_token_id
    return config


def clip_l_text_config(layers: int | None = None, bos_token_id: int = 0, eos_token_id: int = 1):
    """CLIP-L's text config; ids default to those of the offline CLIP tokenizer (pad = end of text)."""
    from transformers import CLIPTextConfig

    values = dict(CLIP_L_TEXT, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
    if layers is not None:
        values["num_hidden_layers"] = layers
    return CLIPTextConfig(**values)


def meta_parameter_bytes(build, dtype_bytes: int = 2) -> int:
    """Weight bytes of a model built by `build()` on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters()) * dtype_bytes
