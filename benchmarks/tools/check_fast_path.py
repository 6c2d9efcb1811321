"""GPU check: our fast training path computes what the stock diffusers blocks compute.

Full-size transformer (random weights, bf16), the same LoRA (B randomised so every LoRA weight gets
a gradient), the same inputs; compares the forward output and every LoRA gradient of the stock model
(stock processors, diffusers checkpointing) with ours (fused blocks, chosen attention kernel,
selective checkpointing), by relative L2 error. Prints JSON.

`--offload-activations` compares ours with activation offload (saved tensors through pinned CPU memory,
two passes so the second reuses the first's pinned slabs) against ours without: it should be exact.

    python benchmarks/tools/check_fast_path.py [--flavour t2v-lite-sft-5s] [--resolution 512x768] [--frames 61]
                                         [--offload-activations]
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from k5tune.bench import BenchConfig, _inputs, build_transformer
from k5tune.lora.adapter import add_lora, lora_parameters
from k5tune.models.kandinsky5.text_mask import install_text_mask
from k5tune.runtime import Runtime
from k5tune.train.speed import SpeedPlan, apply_speed_plan
from k5tune.train.trainer import flow_matching_step_loss


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", default="t2v-lite-sft-5s")
    parser.add_argument("--resolution", default="512x768")
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--model", help="a diffusers folder (e.g. the tiny model) instead of the full-size config")
    parser.add_argument("--offload-activations", action="store_true",
                        help="reference: ours without offload; compared: ours with offload_activations")
    parser.add_argument("--same", action="store_true",
                        help="with --offload-activations: the compared model offloads nothing either (how much two "
                             "identical runs differ: the kernels' own run-to-run variation)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bench = BenchConfig(flavour=args.flavour, resolution=args.resolution, frames=args.frames, device=str(device),
                        model=args.model)
    runtime = Runtime.detect("bf16", str(device))
    stock = build_transformer(bench, device)
    add_lora(stock, 32, 32, 0.0, ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], seed=0)
    generator = torch.Generator().manual_seed(1)
    for p in lora_parameters(stock):
        p.data = p.data.float()
    for name, p in stock.named_parameters():
        if ".lora_B" in name:
            p.data = (torch.randn(p.shape, generator=generator) * 0.01).to(p.device, p.dtype)
    ours = copy.deepcopy(stock)
    if args.offload_activations:  # the reference is our own step without the offload
        apply_speed_plan(stock, SpeedPlan())
        install_text_mask(stock)
    else:
        stock.enable_gradient_checkpointing()
    apply_speed_plan(ours, SpeedPlan(offload_activations=args.offload_activations and not args.same))
    install_text_mask(ours)
    latents, text, pixel_size, gen = _inputs(stock, bench, device)
    noise = torch.randn(latents.shape, generator=gen)
    sigmas = torch.tensor([0.7])
    outputs, grads = {}, {}
    for name, model in (("stock", stock), ("ours", ours)):
        model.train()
        captured = {}

        def keep_output(module, args, kwargs, output, store=captured):
            store.setdefault("out", output.detach())  # returns None: the output itself is left alone

        hook = model.register_forward_hook(keep_output, with_kwargs=True)
        ours_kernels = name == "ours" or args.offload_activations
        for _ in range(2 if args.offload_activations else 1):
            model.zero_grad(set_to_none=True)
            context = SpeedPlan().attention_context() if ours_kernels else torch.autocast("cuda", enabled=False)
            with context:
                loss = flow_matching_step_loss(model, latents, text, noise, sigmas, pixel_size, runtime)
                loss.backward()
        hook.remove()
        outputs[name] = captured["out"]
        grads[name] = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    grad_errors = [relative_error(grads["ours"][n], grads["stock"][n]) for n in grads["stock"]]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "flavour": args.flavour, "resolution": args.resolution, "frames": args.frames,
        "compared": ("ours against ours" if args.same else "ours with offload_activations against ours")
                    if args.offload_activations else "ours against stock",
        "forward_relative_error": relative_error(outputs["ours"], outputs["stock"]),
        "lora_grad_relative_error_median": float(torch.tensor(grad_errors).median()),
        "lora_grad_relative_error_max": max(grad_errors),
        "lora_tensors_compared": len(grad_errors),
        "finite": all(torch.isfinite(g).all().item() for g in grads["ours"].values()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
