"""Run under torchrun (2 gloo processes) by tests/test_sequence_parallel.py: one training step's loss and
LoRA gradients with each clip's tokens split over both processes, against the same step on one process
(computed here too, whole, on each process). Writes the relative error of each gradient as JSON.

    python -m torch.distributed.run --nproc_per_node 2 tests/sequence_parallel_worker.py MODEL OUT.json [exact]

`exact`: the stock numerics' bf16 rounding of the rotated queries and keys switched off (fast.py keeps
it, as diffusers does): without it the split step is the one-process step to fp32 rounding.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from k5tune.models.kandinsky5 import Kandinsky5Components, fast, resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts
from k5tune.runtime import Runtime
from k5tune.train.build import LoraSettings, build_training_model
from k5tune.train.plan import TrainingPlan
from k5tune.train.step import flow_matching_step_loss, step_scope

LATENT = (2, 5, 8, 12, 16)  # two clips of 5 latent frames at 64x96: 120 tokens each
TARGETS = ("to_query", "to_key", "to_value", "out_layer")


def norm_rope_in_fp32(x, weight, eps, rope):
    """fast.norm_rope without the bf16 rounding of the rotated result."""
    x_float = x.float()
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    if rope is None:
        return normed.type_as(x)
    return (rope * normed.reshape(*normed.shape[:-1], -1, 1, 2)).sum(dim=-1).reshape(*x.shape).type_as(x)


def inputs():
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(LATENT, generator=generator), torch.randn(LATENT, generator=generator)
    # captions of two lengths: the text key mask is part of the step
    text = pad_prompts([torch.randn(7, 32, generator=generator), torch.randn(5, 32, generator=generator)],
                       [torch.randn(32, generator=generator), torch.randn(32, generator=generator)])
    return latents, noise, text, torch.tensor([0.4, 0.7])


def step(model_dir: str, split: int) -> tuple[float, dict[str, torch.Tensor]]:
    """The step's loss and the LoRA gradients summed over both processes (as training sums them)."""
    latents, noise, text, sigmas = inputs()
    runtime = Runtime.detect("no", "cpu")
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", model_dir)).transformer()
    plan = TrainingPlan(checkpointing="full", compile_kernels=False, sequence_parallel=split)
    model = build_training_model(transformer, plan, LoraSettings(4, 4, TARGETS), runtime)
    torch.manual_seed(1)
    for p in model.params:  # LoRA B is zero at the start: non-zero weights give every gradient a path
        p.data.normal_(0, 0.1)
    with step_scope(transformer):
        # each process computes the step's whole loss: 1/2 of it each (as the trainer weights it)
        loss = flow_matching_step_loss(transformer, latents, text, noise, sigmas, (64, 96), runtime) / 2
        loss.backward()
    grads = {n: p.grad.clone() for n, p in transformer.named_parameters() if p.grad is not None}
    for g in grads.values():
        dist.all_reduce(g)
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total.item(), grads


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    if sys.argv[3:] == ["exact"]:
        fast._EAGER_KERNELS["norm_rope"] = fast._kernels["norm_rope"] = norm_rope_in_fp32
    dist.init_process_group("gloo")
    whole_loss, whole = step(model_dir, 1)
    split_loss, split = step(model_dir, 2)
    errors = {name: ((split[name] - g).norm() / g.norm()).item() for name, g in whole.items()}
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump({"loss": [whole_loss, split_loss], "errors": errors, "same_keys": split.keys() == whole.keys()},
                      handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
