"""Write a model folder (diffusers layout) with a full-size TRANSFORMER and random weights.

For measuring `k5tune train` at full size. By default the VAE and the text encoders are small random
models with the real interfaces (the training loop never runs them: it reads caches): a
HunyuanVideo-class VAE with the real 8x/4x compression and 16 latent channels, and Qwen2.5-VL / CLIP
text models with the real output widths (3584 and 768) but one layer.

`--full-components` makes all four components full size, for measuring caching too: Qwen2.5-VL-7B
(15.4 GiB in bf16), CLIP ViT-L/14's text tower and the HunyuanVideo VAE, with the released configs
(k5tune/models/fullsize.py), random weights in bf16, built on the GPU when there is one (7B random
weights take minutes on a CPU) and saved as safetensors shards. The tokenizers are the offline ones
(k5tune/models/tokenizers_offline.py): fewer ids than the real ones, within the real embedding sizes.
`--layers-for-test N` shrinks every stack to N layers (transformer blocks, Qwen text and vision
layers, CLIP layers) to try the script on a CPU.

    python benchmarks/tools/make_fullsize_model.py OUT_DIR [--flavour t2v-lite-sft-5s] [--full-components]
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from k5tune.bench import BenchConfig, build_transformer
from k5tune.models import tiny
from k5tune.models.flavours import FLAVOURS
from k5tune.models.fullsize import HUNYUAN_VIDEO_VAE, clip_l_text_config, qwen25_vl_7b_config
from k5tune.models.tokenizers_offline import build_clip_tokenizer, build_qwen_tokenizer

SHARD_SIZE = "5GB"


@contextmanager
def built_on(device: torch.device, dtype: torch.dtype):
    """New parameters are created on `device` in `dtype` (no fp32 copy of 7B weights on the way)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def transformer(flavour: str, device: torch.device, blocks: int | None):
    if blocks is None:
        return build_transformer(BenchConfig(flavour=flavour), device).to("cpu")
    from diffusers import Kandinsky5Transformer3DModel

    config = dict(FLAVOURS[flavour].transformer_config, num_visual_blocks=blocks, num_text_blocks=1)
    return Kandinsky5Transformer3DModel(**config)


def full_text_encoders(device: torch.device, layers: int | None, seed: int = 20):
    """Qwen2.5-VL-7B and CLIP-L text, released configs, random bf16 weights (eval mode, as loaded)."""
    from transformers import CLIPTextModel, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    with built_on(device, torch.bfloat16):
        qwen = Qwen2_5_VLForConditionalGeneration(qwen25_vl_7b_config(layers)).eval()
        clip = CLIPTextModel(clip_l_text_config(layers)).eval()
    return qwen, clip


def full_vae(device: torch.device, seed: int = 10):
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    with built_on(device, torch.bfloat16):
        return AutoencoderKLHunyuanVideo(**HUNYUAN_VIDEO_VAE).eval()


def small_parts(tokenizer, tokenizer_2):
    """The default: small VAE and one-layer text encoders with the real output widths."""
    vae = tiny._tiny_vae(10)
    qwen = tiny._tiny_qwen(20, len(tokenizer), hidden=3584, heads=28, kv_heads=4, layers=1, intermediate=1024,
                           mrope=(16, 24, 24))
    clip = tiny._tiny_clip(30, len(tokenizer_2), hidden=768, heads=12, layers=1, intermediate=1024)
    return vae, qwen, clip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--flavour", default="t2v-lite-sft-5s")
    parser.add_argument("--full-components", action="store_true",
                        help="full-size Qwen2.5-VL-7B, CLIP-L text and HunyuanVideo VAE too")
    parser.add_argument("--layers-for-test", type=int, metavar="N",
                        help="every stack N layers deep (a CPU try of the script, not a measurement)")
    args = parser.parse_args()
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, tokenizer_2 = build_qwen_tokenizer(), build_clip_tokenizer()
    if args.full_components:
        qwen, clip = full_text_encoders(device, args.layers_for_test)
        vae = full_vae(device)
        # the offline tokenizers must index inside the real embedding tables
        assert len(tokenizer) <= qwen.config.text_config.vocab_size and len(tokenizer_2) <= clip.config.vocab_size
    else:
        vae, qwen, clip = small_parts(tokenizer, tokenizer_2)
    pipe = Kandinsky5T2VPipeline(
        transformer=transformer(args.flavour, device, args.layers_for_test),
        vae=vae,
        text_encoder=qwen,
        tokenizer=tokenizer,
        text_encoder_2=clip,
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    directory = Path(args.directory)
    pipe.save_pretrained(directory, max_shard_size=SHARD_SIZE)
    start = tiny.prompt_template_start_index(tokenizer, pipe.prompt_template)
    (directory / tiny.PROMPT_INDEX_FILE).write_text(json.dumps({"prompt_template_encode_start_idx": start}))
    sizes = {part: sum(f.stat().st_size for f in (directory / part).glob("*.safetensors")) / 2**30
             for part in ("transformer", "vae", "text_encoder", "text_encoder_2")}
    print(json.dumps({"wrote": str(directory), "seconds": round(time.perf_counter() - started, 1),
                      "gib_on_disk": {k: round(v, 2) for k, v in sizes.items()}}))


if __name__ == "__main__":
    main()
