"""Write a model folder (diffusers layout) whose TRANSFORMER is full size with random weights.

For measuring `k5tune train` itself at full size (issue: the speed is real in training). The training
loop never runs the VAE or the text encoders (it reads caches), so those are small random models with
the real interfaces: a HunyuanVideo-class VAE with the real 8x/4x compression and 16 latent channels,
and Qwen2.5-VL / CLIP text models with the real output widths (3584 and 768) but one layer.

    python benchmarks/make_fullsize_model.py OUT_DIR [--flavour t2v-lite-sft-5s]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from k5tune.bench import BenchConfig, build_transformer
from k5tune.models import tiny
from k5tune.models.tokenizers_offline import build_clip_tokenizer, build_qwen_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--flavour", default="t2v-lite-sft-5s")
    args = parser.parse_args()
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    transformer = build_transformer(BenchConfig(flavour=args.flavour), device).to("cpu")
    tokenizer, tokenizer_2 = build_qwen_tokenizer(), build_clip_tokenizer()
    pipe = Kandinsky5T2VPipeline(
        transformer=transformer,
        vae=tiny._tiny_vae(10),
        text_encoder=tiny._tiny_qwen(20, len(tokenizer), hidden=3584, heads=28, kv_heads=4, layers=1,
                                     intermediate=1024, mrope=(16, 24, 24)),
        tokenizer=tokenizer,
        text_encoder_2=tiny._tiny_clip(30, len(tokenizer_2), hidden=768, heads=12, layers=1, intermediate=1024),
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    directory = Path(args.directory)
    pipe.save_pretrained(directory)
    start = tiny.prompt_template_start_index(tokenizer, pipe.prompt_template)
    (directory / tiny.PROMPT_INDEX_FILE).write_text(json.dumps({"prompt_template_encode_start_idx": start}))
    print(f"wrote {directory}")


if __name__ == "__main__":
    main()
