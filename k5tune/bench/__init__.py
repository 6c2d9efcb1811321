"""`k5tune bench`: time LoRA training steps of the full-size transformer with random weights.

Random weights cost exactly what real ones do, so this measures speed and memory without a
download. Our step is the one `k5tune train` runs (`flow_matching_step_loss` with the speed plan);
`--compare-stock` also times the stock diffusers + peft step (bf16 model, fp32 LoRA weights,
diffusers' gradient checkpointing, the default attention) in the same process, one after the other,
each with its own peak-memory reading.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from k5tune.bench.crepa import _measure_crepa, measure_crepa_caching
from k5tune.bench.flops import forward_flops, matmul_peak_tflops, useful_flops  # noqa: F401
from k5tune.bench.measure import (  # noqa: F401
    LORA_TARGETS,
    TEXT_TOKENS,
    BenchConfig,
    _free_memory,
    _measure,
    time_steps,
)
from k5tune.config.frames import latent_frames, parse_resolution, snap_resolution
from k5tune.models.flavours import FLAVOURS
from k5tune.train.plan import TrainingPlan  # noqa: F401 (callers build plans from here)


def build_transformer(bench: BenchConfig, device: torch.device):
    """Full-size transformer with random weights in bf16 (fp32 where diffusers keeps fp32), or a folder."""
    from diffusers import Kandinsky5Transformer3DModel

    if bench.model:
        from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return Kandinsky5Components(resolve_model_source(bench.flavour, bench.model)).transformer(dtype, device)
    config = dict(FLAVOURS[bench.flavour].transformer_config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = Kandinsky5Transformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    for name, module in model.named_modules():
        if any(name.endswith(keep) or f"{keep}." in name for keep in model._keep_in_fp32_modules):
            module.float()
        if name.endswith("modulation.out_layer"):  # zero-initialised in diffusers; make the gates live
            torch.nn.init.normal_(module.weight, std=0.02)
    return model


def _inputs(transformer, bench: BenchConfig, device: torch.device):
    from k5tune.models.kandinsky5.model_input import pad_prompts

    height, width = snap_resolution(*parse_resolution(bench.resolution))
    generator = torch.Generator().manual_seed(0)
    shape = (bench.batch, latent_frames(bench.frames), height // 8, width // 8, 16)
    latents = torch.randn(shape, generator=generator)
    text_dim, clip_dim = transformer.config.in_text_dim, transformer.config.in_text_dim2
    text = pad_prompts([torch.randn(TEXT_TOKENS, text_dim, generator=generator) for _ in range(bench.batch)],
                       [torch.randn(clip_dim, generator=generator) for _ in range(bench.batch)])
    return latents, text, (height, width), generator


class OurStep:
    """Our training step (call it), the model set up exactly as `k5tune train` sets it up (train/build.py).
    `model`: what the set-up did (e.g. what it quantised); `add_crepa` turns on CREPA's term."""

    def __init__(self, transformer, bench: BenchConfig, device: torch.device):
        from k5tune.runtime import Runtime
        from k5tune.train.build import LoraSettings, build_training_model

        self.transformer, self.bench, self.device = transformer, bench, device
        self.runtime = Runtime.detect("bf16", str(device))
        self.model = build_training_model(transformer, bench.plan,
                                          LoraSettings(bench.rank, bench.rank, tuple(LORA_TARGETS)), self.runtime)
        self.params = self.model.params
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self.latents, self.text, self.pixel_size, self.generator = _inputs(transformer, bench, device)
        self.roll = _rollout_fn(transformer, bench, self.text, self.pixel_size, self.runtime)
        self.crepa = self.teacher = None  # set by add_crepa

    def __call__(self) -> None:
        from k5tune.train import objective
        from k5tune.train.step import flow_matching_step_loss, step_scope

        with self.bench.plan.attention_context(), step_scope(self.transformer):
            noise = torch.randn(self.latents.shape, generator=self.generator)
            sigmas = objective.sample_sigmas(self.bench.batch, self.generator, 5.0)
            if self.roll is not None:
                loss = self.roll(self.latents, noise)
            else:
                loss = flow_matching_step_loss(self.transformer, self.latents, self.text, noise, sigmas,
                                               self.pixel_size, self.runtime, route_generator=self.generator,
                                               crepa=self.crepa, teacher=self.teacher)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def add_crepa(self, encoder: str, block: int) -> None:
        """CREPA at `block` with cached-like teacher features of `encoder`'s width (fp16, unit norm)."""
        from k5tune.models.vision_encoders import ENCODERS
        from k5tune.train.crepa import Crepa, CrepaSettings

        blocks = len(self.transformer.visual_transformer_blocks)
        if not 0 <= block < blocks:
            from k5tune.errors import ConfigError

            raise ConfigError(f"the model has {blocks} visual blocks (valid: 0..{blocks - 1})", key="--crepa-block")
        width = ENCODERS[encoder].width
        self.crepa = Crepa(CrepaSettings(block, 0.5, 1, 1.0), self.transformer, width, self.device, seed=0)
        self.params.extend(self.crepa.params())
        self.optimizer.add_param_group({"params": self.crepa.params()})
        latents = self.latents
        grid = latents.shape[1] * (latents.shape[2] // 2) * (latents.shape[3] // 2)
        features = torch.randn(self.bench.batch, latents.shape[1], grid // latents.shape[1], width,
                               generator=self.generator)
        self.teacher = torch.nn.functional.normalize(features, dim=-1).half()


ROLLOUT_SAMPLER_STEPS = 50  # the validation sampler the offsets count in
ROLLOUT_LEVEL = 25  # the level rolled out to: mid-trajectory, so every offset up to 25 fits


def _rollout_fn(transformer, bench: BenchConfig, text, pixel_size, runtime):
    """With --rollout K: the loss of a step whose every sample is rolled out K sampler steps first (rollout's
    worst case, p 1 at offset K: K extra no-grad forwards per sample), as train/rollout.py does it."""
    if not bench.rollout_steps:
        return None
    from k5tune.train import objective
    from k5tune.train.rollout import roll_out
    from k5tune.train.step import predict_velocity, prediction_loss

    levels = objective.sampler_levels(ROLLOUT_SAMPLER_STEPS, 5.0)

    def loss(latents, noise):
        rolled = [roll_out(lambda x, sigma: predict_velocity(transformer, x[None], sigma, text, pixel_size,
                                                             runtime)[0],
                           latents[i], noise[i], levels, ROLLOUT_LEVEL, bench.rollout_steps)
                  for i in range(latents.shape[0])]
        noisy, target = torch.stack([x for x, _ in rolled]), torch.stack([t for _, t in rolled])
        sigmas = levels[ROLLOUT_LEVEL].repeat(latents.shape[0])
        return prediction_loss(transformer, noisy, target, text, sigmas, pixel_size, runtime)

    return loss


def forward_fn(transformer, bench: BenchConfig, device: torch.device):
    """One no-grad forward of our model (eval mode), as a rollout step or an eval-loss level runs it."""
    from k5tune.runtime import Runtime
    from k5tune.train.step import predict_velocity

    runtime = Runtime.detect("bf16", str(device))
    latents, text, pixel_size, _ = _inputs(transformer, bench, device)
    return lambda: predict_velocity(transformer, latents, torch.tensor(0.5), text, pixel_size, runtime)


def attention_report(transformer, bench: BenchConfig, device: torch.device) -> dict:
    """The attention our step ran, with NABLA's measured mask density: one no-grad forward of the step's
    inputs, its blocks eager (a compiled block keeps no Python state to record into)."""
    from k5tune.models.kandinsky5 import nabla

    settings = bench.plan.nabla
    if settings is None:
        return {"attention": "dense"}
    processors = [a.processor for a in nabla.self_attentions(transformer)]
    for processor in processors:
        processor.record_density = True
    with torch.no_grad():
        forward_fn(transformer, bench, device)()
    densities = [p.last_density for p in processors if p.last_density is not None]
    for processor in processors:
        processor.record_density = False
    return {"attention": "nabla", **asdict(settings),
            "mask_density": sum(densities) / len(densities) if densities else None,
            "mask_density_by_layer": [round(d, 4) for d in densities]}


def stock_step_fn(transformer, bench: BenchConfig, device: torch.device):
    """What the diffusers LoRA examples do: bf16 model, peft adapter, LoRA params upcast to fp32."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from k5tune.lora.adapter import target_regex
    from k5tune.models.kandinsky5.model_input import transformer_kwargs, with_conditioning_channels
    from k5tune.train import objective

    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=bench.rank, lora_alpha=bench.rank, target_modules=target_regex(LORA_TARGETS)))
    cast_training_params(transformer, dtype=torch.float32)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    latents, text, pixel_size, generator = _inputs(transformer, bench, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step():
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = objective.sample_sigmas(bench.batch, generator, 5.0)
        noisy = objective.add_noise(latents, noise, sigmas)
        model_input = with_conditioning_channels(noisy).to(device=device, dtype=dtype)
        kwargs = transformer_kwargs(transformer, model_input, text, sigmas.to(device), pixel_size)
        prediction = transformer(**kwargs, return_dict=False)
        loss = torch.nn.functional.mse_loss(prediction.float(), objective.velocity_target(latents, noise).to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _parameter_bytes(transformer) -> int:
    from k5tune.models.kandinsky5.quantize import parameter_bytes

    return parameter_bytes(transformer)


def run_bench(bench: BenchConfig) -> dict:
    device = torch.device(bench.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    height, width = snap_resolution(*parse_resolution(bench.resolution))
    tokens = latent_frames(bench.frames) * (height // 16) * (width // 16)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "flavour": bench.flavour,
        "model": bench.model or "full-size, random weights",
        "resolution": f"{height}x{width}",
        "frames": bench.frames,
        "tokens": tokens,
        "batch": bench.batch,
        "rank": bench.rank,
        "lora_targets": LORA_TARGETS,
        "plan": {**asdict(bench.plan), **bench.plan.describe(device.type == "cuda")},
        "steps_timed": bench.steps,
        "warmup": bench.warmup,
        "matmul_peak_tflops": matmul_peak_tflops(device),
    }
    if bench.crepa is not None:  # the cache stage's part first, alone on the GPU
        report["crepa_caching"] = measure_crepa_caching(bench, device)
    if bench.compare_stock:
        stock = build_transformer(bench, device)
        report["stock"] = _measure(stock_step_fn(stock, bench, device), bench, device)
        del stock  # the last reference: the stock model must be gone before ours is built
        _free_memory()
    flops = _measure_ours(report, bench, device, tokens)
    for name in ("ours", "stock"):
        if name in report:
            report[name]["tflops"] = flops / report[name]["step_s"] / 1e12
            if report["matmul_peak_tflops"]:
                report[name]["fraction_of_matmul_peak"] = report[name]["tflops"] / report["matmul_peak_tflops"]
    if "stock" in report:
        report["speedup_vs_stock"] = report["stock"]["step_s"] / report["ours"]["step_s"]
    return report


def _measure_ours(report: dict, bench: BenchConfig, device: torch.device, tokens: int) -> float:
    """Our step (and what the flags add: the forward, TREAD's routed step) into `report`; its useful FLOPs."""
    transformer = build_transformer(bench, device)
    weights_before = _parameter_bytes(transformer)
    flops = useful_flops(dict(transformer.config), tokens, TEXT_TOKENS, bench.batch)
    report["useful_tflop"] = flops / 1e12
    step = OurStep(transformer, bench, device)
    report["transformer_weights_gib"] = {"before": weights_before / 2**30, "as_trained": _parameter_bytes(transformer) / 2**30}
    quantized = step.model.quantized
    report["base_precision"] = {"precision": bench.plan.base_precision,
                                **({"quantized": asdict(quantized)} if quantized else {})}
    report["ours"] = _measure(step, bench, device)
    report["attention"] = attention_report(transformer, bench, device)
    density = report["attention"].get("mask_density")
    if density is not None:  # NABLA: the attention work done is the mask's share of the dense one
        flops = useful_flops(dict(transformer.config), tokens, TEXT_TOKENS, bench.batch, density)
        report["useful_tflop"] = flops / 1e12
    if bench.rollout_steps:
        report["rollout"] = {"steps": bench.rollout_steps, "probability": 1.0, "level": ROLLOUT_LEVEL,
                             "sampler_steps": ROLLOUT_SAMPLER_STEPS}
    if bench.time_forward:
        report["ours_forward"] = _measure(forward_fn(transformer, bench, device), bench, device)
    if bench.tread is not None:
        from k5tune.models.kandinsky5.tread import install_tread, resolve_routes

        routes = resolve_routes(bench.tread, len(transformer.visual_transformer_blocks))
        install_tread(transformer, routes)
        report["tread_routes"] = [asdict(r) for r in routes]
        report["ours_tread"] = _measure(step, bench, device)
        report["tread_speedup_vs_dense"] = report["ours"]["step_s"] / report["ours_tread"]["step_s"]
    if bench.crepa is not None:  # (with --tread: CREPA on the routed step, against it)
        _measure_crepa(step, bench, device, report)
    del transformer, step
    _free_memory()
    return flops


def format_report(report: dict) -> str:
    return json.dumps(report, indent=2, default=str)
