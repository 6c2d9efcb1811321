"""`base_model_precision` int8 / fp8: the frozen base quantised (torchao), LoRA trained over it."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import statistics
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

pytest.importorskip("torchao")

from k5tune.errors import ConfigError  # noqa: E402
from k5tune.lora.adapter import add_lora, lora_parameters  # noqa: E402
from k5tune.lora.files import LORA_WEIGHTS_NAME, save_lora  # noqa: E402
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source  # noqa: E402
from k5tune.models.kandinsky5.model_input import (  # noqa: E402
    pad_prompts,
    transformer_kwargs,
    with_conditioning_channels,
)
from k5tune.models.kandinsky5.quantize import (  # noqa: E402
    check_precision_device,
    is_quantized,
    parameter_bytes,
    quantize_base,
)
from k5tune.models.kandinsky5.text_mask import install_text_mask  # noqa: E402
from k5tune.runtime import Runtime  # noqa: E402
from k5tune.train import objective  # noqa: E402
from k5tune.train.offload import enable_group_offload  # noqa: E402
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan  # noqa: E402
from k5tune.train.step import flow_matching_step_loss  # noqa: E402
from tests.helpers import assert_same_training, loss_and_grads

ALL_TARGETS = ["to_query", "to_key", "to_value", "out_layer", "feed_forward"]
# the tiny model: 1 text block (4 attention + 2 feed-forward + 1 modulation linears), 2 visual blocks (8 + 2 + 1)
BLOCK_LINEARS = 7 + 2 * 11
_BLOCK_LINEAR_NAME = re.compile(r"_transformer_blocks\.\d+\.(.*attention\.(to_query|to_key|to_value|out_layer)"
                                r"|feed_forward\.(in_layer|out_layer)|.*_modulation\.out_layer)(\.base_layer)?$")


def _tiny(model_dir: str, dtype: torch.dtype | None = None):
    return Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", model_dir)).transformer(dtype=dtype)


def _linears(transformer) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" not in n}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_block_linears_are_quantised_the_base_shrinks_and_lora_trains_over_it(tiny_model_dir, precision):
    transformer = _tiny(tiny_model_dir)
    before = parameter_bytes(transformer)
    report = quantize_base(transformer, precision, "cpu")
    assert report.linears == BLOCK_LINEARS and report.bytes_after < 0.3 * report.bytes_before  # fp32 -> 1 byte
    assert parameter_bytes(transformer) == before - report.bytes_before + report.bytes_after
    for name, linear in _linears(transformer).items():
        # block linears (modulation included) are torchao tensors; embeddings and the out layer are not
        assert is_quantized(linear.weight) == bool(_BLOCK_LINEAR_NAME.search(name)), name
        assert not is_quantized(linear.bias) if linear.bias is not None else True
    assert quantize_base(transformer, precision, "cpu").linears == 0  # idempotent

    adapted = add_lora(transformer, 4, 4, 0.0, ALL_TARGETS, seed=0)
    assert len(adapted) == 2 * 8 + 4 + 3 * 2
    wrapper = transformer.visual_transformer_blocks[0].self_attention.to_query
    assert type(wrapper).__name__ == "TorchaoLoraLinear" and is_quantized(wrapper.base_layer.weight)
    trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in transformer.named_parameters() if ".lora_" in n}
    params = lora_parameters(transformer)
    assert all(p.dtype == torch.float32 and not is_quantized(p) for p in params)
    _, grads = loss_and_grads(transformer.train(), torch.float32)
    assert set(grads) == trainable  # only LoRA weights get gradients, every one of them
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_no_change_leaves_the_model_alone(tiny_model_dir):
    transformer = _tiny(tiny_model_dir)
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    assert quantize_base(transformer, "no_change", "cpu") is None
    assert all(torch.equal(v, state[k]) for k, v in transformer.state_dict().items())


@pytest.mark.parametrize("precision, bound", [("int8", 0.02), ("fp8", 0.08)])
def test_quantised_output_is_close_to_the_unquantised_one(tiny_model_dir, precision, bound):
    """bf16 base (fp32 modulation) under autocast, as on a GPU. Measured: int8 1.0% relative error (bf16
    itself is 0.7% off fp32), fp8 3.7% (e4m3 keeps 3 mantissa bits)."""
    reference = _tiny(tiny_model_dir, torch.bfloat16)
    quantized = copy.deepcopy(reference)
    quantize_base(quantized, precision, "cpu")
    generator = torch.Generator().manual_seed(0)
    latents = with_conditioning_channels(torch.randn(1, 5, 6, 8, 16, generator=generator)).bfloat16()
    text = pad_prompts([torch.randn(6, 32, generator=generator)], [torch.randn(32, generator=generator)])

    def predict(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            kwargs = transformer_kwargs(model, latents, text, torch.tensor([0.5]), (48, 64))
            return model(**kwargs, return_dict=False)[0].float()

    expected, got = predict(reference), predict(quantized)
    error = ((got - expected).norm() / expected.norm()).item()
    assert 0 < error < bound, error


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_fused_lora_over_a_quantised_base_matches_peft(tiny_model_dir, precision):
    """The fast path dequantises the base weight inside its fused LoRA linear: same loss and LoRA
    gradients as peft's own TorchaoLoraLinear forward."""
    plain = _tiny(tiny_model_dir)
    quantize_base(plain, precision, "cpu")
    add_lora(plain, 8, 16, 0.0, ALL_TARGETS, seed=0)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in plain.named_parameters():
        if ".lora_B" in name:  # B starts at zero; randomise so every LoRA weight gets a gradient
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    fast = copy.deepcopy(plain)
    apply_speed_plan(fast, TrainingPlan(checkpointing="selective", compile_kernels=False))
    plain.enable_gradient_checkpointing()
    plain_loss, plain_grads = loss_and_grads(plain.train(), torch.float32)
    fast_loss, fast_grads = loss_and_grads(fast.train(), torch.float32)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == fast_grads.keys() and len(plain_grads) == 26 * 2
    for name in plain_grads:
        # int8: x @ (q * s) here, (x @ q) * s in torchao: fp32 rounding apart, which the bf16 rounding of
        # the rotated q/k (as in the stock model) turns into up to 3.4e-4 in the q/k LoRA gradients
        error = (fast_grads[name] - plain_grads[name]).norm() / plain_grads[name].norm()
        assert error < 2e-3, (name, error.item())


def _train(transformer, steps: int, dtype: torch.dtype, lr: float, batch: int, offload: bool = False) -> list[float]:
    """LoRA steps on one fixed clip latent and caption; noise and sigmas from a fixed seed, so runs that
    differ only in the base's precision see exactly the same draws."""
    params = lora_parameters(transformer)
    for p in params:
        p.data = p.data.float()
    apply_speed_plan(transformer, TrainingPlan(checkpointing="full" if offload else "none", compile_kernels=False))
    if offload:
        enable_group_offload(transformer, blocks_per_group=1)
    install_text_mask(transformer)
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=lr, eps=1e-4)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 5, 6, 8, 16, generator=generator).expand(batch, -1, -1, -1, -1)
    caption, pooled = torch.randn(6, 32, generator=generator), torch.randn(32, generator=generator)
    text = pad_prompts([caption] * batch, [pooled] * batch)
    runtime = Runtime(torch.device("cpu"), dtype, dtype, dtype)
    losses = []
    for _ in range(steps):
        noise = torch.randn(latents.shape, generator=generator)
        sigmas = objective.sample_sigmas(batch, generator, 3.0)
        loss = flow_matching_step_loss(transformer, latents, text, noise, sigmas, (48, 64), runtime)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_lora_over_a_quantised_base_trains_like_bf16(tiny_model_dir):
    """The quality check: 60 steps on one clip over a bf16 (as on a GPU), an int8 and an fp8 base.

    Measured here: loss (mean of the first -> last 10 steps) bf16 2.234 -> 1.978, int8 2.234 -> 1.978,
    fp8 2.234 -> 1.978; the per-step curves are at most 0.05% (int8) and 0.74% (fp8) from bf16's (the
    runs draw the same noise). For scale: halving the learning rate moves the curve by up to 21%, a rank
    of 4 instead of 16 by 15%, noise of 5% of each weight's std in the base by 1.0%; no training fails
    the fall. The final losses alone sit near the tiny model's floor and tell little."""
    curves = {}
    for precision in ("no_change", "int8", "fp8"):
        transformer = _tiny(tiny_model_dir, torch.bfloat16)
        quantize_base(transformer, precision, "cpu")
        add_lora(transformer, 16, 16, 0.0, ALL_TARGETS, seed=0)
        curves[precision] = _train(transformer, 60, torch.bfloat16, lr=2e-2, batch=4)
    reference = curves["no_change"]
    for precision, bound in (("no_change", 0.0), ("int8", 0.01), ("fp8", 0.03)):
        curve = curves[precision]
        first, last = statistics.mean(curve[:10]), statistics.mean(curve[-10:])
        assert last < 0.92 * first, (precision, first, last)  # it trains
        step_gap = max(abs(a - b) / b for a, b in zip(curve, reference, strict=True))
        assert step_gap <= bound, (precision, step_gap)  # ... like the bf16 base, step by step
        assert abs(last - statistics.mean(reference[-10:])) <= 0.01 * last, precision


def test_saved_lora_has_the_plain_layout_and_loads_into_an_unquantised_pipeline(tmp_path, tiny_model_dir):
    from diffusers import Kandinsky5T2VPipeline

    files = {}
    for precision in ("no_change", "int8"):
        transformer = _tiny(tiny_model_dir)
        quantize_base(transformer, precision, "cpu")
        add_lora(transformer, 4, 8, 0.0, ["to_query", "to_value", "feed_forward"], seed=0)
        _train(transformer, 3, torch.float32, lr=1e-2, batch=1)
        files[precision] = save_lora(transformer, tmp_path / precision, {"rank": 4})
    plain, quantized = load_file(files["no_change"]), load_file(files["int8"])
    assert {k: (v.shape, v.dtype) for k, v in quantized.items()} == {k: (v.shape, v.dtype) for k, v in plain.items()}
    with safe_open(files["no_change"], framework="pt") as a, safe_open(files["int8"], framework="pt") as b:
        assert a.metadata() == b.metadata()  # the same peft config: rank, alpha, targets

    pipe = Kandinsky5T2VPipeline.from_pretrained(tiny_model_dir)
    pipe.prompt_template_encode_start_idx = Kandinsky5Components(
        resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).prompt_start_index
    pipe.set_progress_bar_config(disable=True)

    def generate():
        return pipe(prompt="a red circle", height=32, width=32, num_frames=5, num_inference_steps=2,
                    output_type="np", generator=torch.Generator().manual_seed(0)).frames

    before = generate()
    pipe.load_lora_weights(str(tmp_path / "int8"), weight_name=LORA_WEIGHTS_NAME)
    loaded = dict(pipe.transformer.named_parameters())
    for key, value in quantized.items():  # every trained weight arrives exactly
        name = key.removeprefix("transformer.").replace(".weight", ".default_0.weight")
        assert torch.equal(loaded[name].detach(), value), key
    assert np.abs(generate() - before).max() > 1e-4


@pytest.mark.slow
def test_group_offload_trains_over_an_int8_base(tiny_model_dir):
    """Offloaded blocks move their int8 data and scales (not the torchao wrapper's `.data`): away between
    uses, and the LoRA after 3 steps is the one trained without offload."""
    results = []
    for offload in (False, True):
        transformer = _tiny(tiny_model_dir)
        quantize_base(transformer, "int8", "cpu", offload=offload)
        add_lora(transformer, 4, 4, 0.0, ALL_TARGETS, seed=0)
        _train(transformer, 3, torch.float32, lr=1e-2, batch=2, offload=offload)
        results.append({n: p.detach().clone() for n, p in transformer.named_parameters() if ".lora_" in n})
        if offload:
            weight = transformer.visual_transformer_blocks[0].self_attention.to_key.weight
            assert is_quantized(weight) and weight.qdata.numel() == 0 and weight.scale.numel() == 0
    expected, got = results
    assert_same_training(got, expected)


def test_missing_or_old_torchao_and_old_gpus_get_a_clear_error(tiny_model_dir, monkeypatch):
    transformer = _tiny(tiny_model_dir)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(ConfigError, match=r"key 'base_model_precision'.*pip install") as error:
        quantize_base(transformer, "int8", "cpu")
    assert "torchao" in str(error.value)
    monkeypatch.undo()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.15.0")
    with pytest.raises(ConfigError, match=r"torchao>=0.16.*found torchao 0.15.0"):
        quantize_base(transformer, "fp8", "cpu")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"int8 cannot be combined with fsdp_enable"):
        quantize_base(transformer, "int8", "cpu", sharded=True)
    assert not any(is_quantized(p) for p in transformer.parameters())

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A40")
    with pytest.raises(ConfigError, match=r"fp8 needs a GPU with compute capability 8.9.*A40 has 8.6: use int8"):
        check_precision_device("fp8", "cuda")
    check_precision_device("int8", "cuda")  # int8 runs anywhere
    check_precision_device("fp8", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_precision_device("fp8", "cuda:0")


@pytest.mark.slow
@pytest.mark.parametrize("offload", [False, True])
def test_k5tune_train_with_an_int8_base(tmp_path, monkeypatch, tiny_model_dir, offload):
    from k5tune.cache.stage import run_cache_stage
    from k5tune.config import load_config
    from k5tune.train.trainer import Trainer
    from tests.helpers import make_project

    folder = make_project(tmp_path, tiny_model_dir, {"base_model_precision": "int8", "max_train_steps": 2,
                                                     "train_batch_size": 2, "enable_group_offload": offload})
    monkeypatch.chdir(folder)
    trainer = Trainer(load_config())
    result = trainer.run(run_cache_stage(load_config(), trainer.runtime))
    wrapper = trainer.transformer.visual_transformer_blocks[0].self_attention.to_query
    assert type(wrapper).__name__ == "TorchaoLoraLinear" and is_quantized(wrapper.base_layer.weight)
    assert result.steps == 2 and all(np.isfinite(result.losses))
    keys = load_file(result.lora_path).keys()
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    with safe_open(result.lora_path, framework="pt") as handle:
        assert json.loads(handle.metadata()["k5tune.steps"]) == 2


@pytest.mark.slow
def test_bench_quantises_our_model_only(tiny_model_dir, capsys):
    from k5tune.cli import main

    assert main(["bench", "--model", tiny_model_dir, "--resolution", "32x48", "--frames", "9", "--steps", "1",
                 "--warmup", "0", "--base-precision", "int8", "--compare-stock"]) == 0
    report = json.loads(capsys.readouterr().out)
    quantized = report["base_precision"]["quantized"]
    assert report["base_precision"]["precision"] == "int8" and quantized["linears"] == BLOCK_LINEARS
    assert quantized["bytes_after"] < 0.3 * quantized["bytes_before"]
    assert report["ours"]["step_s"] > 0 and report["stock"]["step_s"] > 0
