"""VAE encode of one clip at full size (random weights): plain, `vae_enable_patch_conv`, diffusers tiling.

Prints one JSON line per variant: median seconds, peak GiB, and the relative L2 error of the latents
against the plain encode. Usage: python benchmarks/tools/vae_encode.py [--frames 61] [--resolution 512x768]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderKLHunyuanVideo

from k5tune.models.kandinsky5.encoding import encode_video
from k5tune.models.kandinsky5.patch_conv import disable_patch_conv, enable_patch_conv


def _timed(vae, pixels, repeats: int) -> tuple[torch.Tensor, float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats + 1):  # the first call warms up cuDNN's algorithm choice
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            latents = encode_video(vae, pixels)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 + base / 2**30
    return latents.float(), statistics.median(times[1:]), peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--resolution", default="512x768")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.resolution.split("x"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKLHunyuanVideo().to(torch.bfloat16).eval()
    pixels = (torch.rand(1, 3, args.frames, height, width, device="cuda") * 2 - 1).to(torch.bfloat16)
    gib_inputs = torch.cuda.memory_allocated() / 2**30
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "weights_and_clip_gib": round(gib_inputs, 3)}))
    reference, seconds, peak = _timed(vae, pixels, args.repeats)
    print(json.dumps({"variant": "plain", "seconds": round(seconds, 3), "peak_gib": round(peak, 2)}))
    enable_patch_conv(vae)
    latents, seconds, peak = _timed(vae, pixels, args.repeats)
    error = ((latents - reference).norm() / reference.norm()).item()
    print(json.dumps({"variant": "patch_conv", "seconds": round(seconds, 3), "peak_gib": round(peak, 2),
                      "rel_l2_vs_plain": error, "max_abs_vs_plain": (latents - reference).abs().max().item()}))
    disable_patch_conv(vae)
    vae.enable_tiling()
    latents, seconds, peak = _timed(vae, pixels, args.repeats)
    error = ((latents - reference).norm() / reference.norm()).item()
    print(json.dumps({"variant": "tiling", "seconds": round(seconds, 3), "peak_gib": round(peak, 2),
                      "rel_l2_vs_plain": error}))


if __name__ == "__main__":
    main()
