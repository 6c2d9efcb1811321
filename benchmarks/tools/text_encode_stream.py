"""Qwen2.5-VL prompt encoding through k5tune's caching path: whole on the GPU against streamed.

Variants: `streamed` (what caching does with offload_during_startup: a layer at a time, synchronous
copies), `streamed_prefetch` (the same with diffusers' side-stream prefetch from pinned memory) and
`whole` (the model on the GPU). Prints one JSON line per variant: load seconds, seconds of the first
and of later passes over the captions, peak GiB, and the difference of the embeddings from `whole`.

    python benchmarks/tools/text_encode_stream.py MODEL_DIR [--passes 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.encoding import encode_prompts, text_pipeline
from k5tune.models.kandinsky5.text_stream import stream_text_encoder

CAPTIONS = [
    "a red circle moving to the right on a dark background",
    "a blue square",
    "A red fox runs through fresh snow, the camera pans right to follow it.",
    "",
    "a cat sleeps on a sofa while rain falls outside the window " * 6,
    "the camera pans right, zooms in, tilts up and follows a running dog through a field of grass at sunset",
    "static",
    "a person walks along a beach; waves roll in; birds fly over the sea under a cloudy sky " * 3,
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(model_dir: str, variant: str, passes: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", model_dir))
    if variant == "whole":
        qwen = components.text_encoder(dtype, device)
    else:
        qwen = components.text_encoder(dtype)
        stream_text_encoder(qwen, device, use_stream=variant == "streamed_prefetch")
    pipe = text_pipeline(components, qwen, components.text_encoder_2(dtype, device))
    _sync(device)
    loaded = time.perf_counter() - started
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, embeddings = [], []
    for _ in range(passes):
        _sync(device)
        started = time.perf_counter()
        embeddings = encode_prompts(pipe, CAPTIONS, device, dtype)
        _sync(device)
        times.append(time.perf_counter() - started)
    result = {"variant": variant, "load_s": round(loaded, 2), "first_pass_s": round(times[0], 3),
              "later_pass_s": round(statistics.median(times[1:]), 3) if passes > 1 else None,
              "captions": len(CAPTIONS),
              "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None}
    flat = torch.cat([e.qwen.float().flatten() for e in embeddings] + [e.clip.float().flatten() for e in embeddings])
    del pipe, qwen, components
    gc.collect()  # before reading what is left allocated
    if cuda:
        torch.cuda.empty_cache()
        result["left_allocated_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 3)
    return result, flat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--variants", default="streamed,streamed_prefetch,whole")
    parser.add_argument("--device", default="cuda", help="cpu: a try of the script (no prefetch, no peaks)")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {}
    for variant in args.variants.split(","):
        try:
            results[variant] = run(args.model_dir, variant, args.passes, device)
        except Exception as exc:  # one failing variant must not hide the others
            print(json.dumps({"variant": variant, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
            continue
        if variant != "whole":
            print(json.dumps(results[variant][0]), flush=True)
    if "whole" in results:
        reference = results["whole"][1]
        print(json.dumps(results["whole"][0]), flush=True)
        for variant, (_row, flat) in results.items():
            if variant != "whole":
                print(json.dumps({"variant": variant, "max_abs_vs_whole": (flat - reference).abs().max().item(),
                                  "rel_l2_vs_whole": ((flat - reference).norm() / reference.norm()).item()}),
                      flush=True)


if __name__ == "__main__":
    main()
