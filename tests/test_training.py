"""Training: conventions against the diffusers pipeline, padding, determinism, overfitting, outputs."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.data.synthetic import write_clip
from k5tune.lora.adapter import add_lora
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.model_input import (
    TextBatch,
    pad_prompts,
    transformer_kwargs,
    with_conditioning_channels,
)
from k5tune.models.kandinsky5.text_mask import install_text_mask, set_text_mask
from k5tune.train import objective
from k5tune.validate.media import read_video_info
from k5tune.workflow import train
from tests.helpers import make_project

# --- conventions: an oracle transformer run through the pipeline's own loop ------------------------


class VelocityOracle:
    """Returns the exact flow-matching velocity towards a known clean latent, reading sigma from the
    timestep the way our training objective defines it (timestep = sigma * 1000)."""

    def __init__(self, clean: torch.Tensor):
        self.clean = clean
        self.seen_inputs: list[torch.Tensor] = []

    def __call__(self, hidden_states, timestep, return_dict=True, **kwargs):
        self.seen_inputs.append(hidden_states.clone())
        sigma = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
        noisy = hidden_states[..., :16]
        # x_sigma = (1 - sigma) x0 + sigma * eps  =>  velocity = eps - x0 = (x_sigma - x0) / sigma
        velocity = (noisy - self.clean) / sigma.clamp(min=1e-6)
        return type("Out", (), {"sample": velocity})() if return_dict else velocity


def test_oracle_velocity_through_the_pipeline_loop_ends_at_the_clean_latent(tiny_model_dir):
    from diffusers import Kandinsky5T2VPipeline

    pipe = Kandinsky5T2VPipeline.from_pretrained(tiny_model_dir)
    clean = torch.randn(1, 3, 4, 6, 16, generator=torch.Generator().manual_seed(0))
    oracle = VelocityOracle(clean)
    pipe.transformer.forward = oracle  # the pipeline's own scheduler loop calls the oracle
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt_embeds_qwen=torch.randn(1, 4, 32), prompt_embeds_clip=torch.randn(1, 32),
        prompt_cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), guidance_scale=1.0,
        height=32, width=48, num_frames=9, num_inference_steps=12, output_type="latent",
        generator=torch.Generator().manual_seed(1),
    ).frames
    torch.testing.assert_close(out, clean, atol=1e-4, rtol=1e-4)
    # the pipeline feeds 16 noisy + 16 zero conditioning channels + 1 zero mask channel for T2V
    first = oracle.seen_inputs[0]
    assert first.shape[-1] == 33
    assert torch.equal(first[..., 16:], torch.zeros_like(first[..., 16:]))


def test_training_pairs_match_the_oracle_convention():
    """Our (noisy input, target) pair is what the pipeline's oracle velocity would be at that sigma."""
    generator = torch.Generator().manual_seed(3)
    clean = torch.randn(2, 3, 4, 6, 16, generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    sigmas = objective.sample_sigmas(2, generator, shift=5.0)
    noisy = objective.add_noise(clean, noise, sigmas)
    target = objective.velocity_target(clean, noise)
    oracle = VelocityOracle(clean)
    model_input = with_conditioning_channels(noisy)
    text = pad_prompts([torch.randn(3, 32), torch.randn(5, 32)], [torch.randn(32), torch.randn(32)])
    config = type("Transformer", (), {"config": type("Config", (), {"patch_size": (1, 2, 2)})()})()
    kwargs = transformer_kwargs(config, model_input, text, sigmas, (32, 48))
    torch.testing.assert_close(oracle(**kwargs, return_dict=False), target, atol=1e-4, rtol=1e-4)


def test_sigma_sampling_shift_and_schemes():
    generator = torch.Generator().manual_seed(0)
    plain = objective.sample_sigmas(20000, generator, 1.0, "logit_normal")
    assert 0 < plain.min() and plain.max() < 1
    assert abs(plain.median().item() - 0.5) < 0.02  # logit-normal(0, 1) is centred on 0.5
    shifted = objective.sample_sigmas(20000, torch.Generator().manual_seed(0), 5.0, "logit_normal")
    assert shifted.median() > 0.8  # shift 5 moves the mass towards noise, like the scheduler
    torch.testing.assert_close(objective.shift_sigmas(torch.tensor([0.5]), 5.0), torch.tensor([5 / 6]))
    uniform = objective.sample_sigmas(20000, torch.Generator().manual_seed(0), 1.0, "uniform")
    assert abs(uniform.mean().item() - 0.5) < 0.01


def test_default_shift_comes_from_the_model_scheduler(tiny_model_dir):
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    assert components.scheduler_shift() == components.scheduler().config.shift == 5.0


# --- caption padding must not change a sample's prediction -----------------------------------------


def test_padding_does_not_change_any_sample(tiny_model_dir):
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    transformer = components.transformer()
    add_lora(transformer, 4, 4, 0.0, ["to_query", "to_key", "to_value", "out_layer"], seed=0)
    install_text_mask(transformer)
    generator = torch.Generator().manual_seed(0)
    captions = [torch.randn(3, 32, generator=generator), torch.randn(9, 32, generator=generator)]
    pooled = [torch.randn(32, generator=generator), torch.randn(32, generator=generator)]
    latents = with_conditioning_channels(torch.randn(2, 2, 4, 6, 16, generator=generator))
    sigmas = torch.tensor([0.3, 0.7])
    batch = pad_prompts(captions, pooled)
    assert batch.needs_mask
    set_text_mask(transformer, batch.mask)
    together = transformer(**transformer_kwargs(transformer, latents, batch, sigmas, (32, 48)), return_dict=False)
    for i in range(2):
        alone = TextBatch(qwen=captions[i][None], clip=pooled[i][None], mask=torch.ones(1, len(captions[i]), dtype=torch.bool))
        set_text_mask(transformer, None)
        single = transformer(**transformer_kwargs(transformer, latents[i : i + 1], alone, sigmas[i : i + 1], (32, 48)),
                             return_dict=False)
        # the rotary step rounds q/k to bf16 even in fp32 runs: bf16-level tolerance
        torch.testing.assert_close(together[i], single[0], atol=2e-3, rtol=2e-3)
    # and without the mask the padded sample really would change (the test can fail)
    set_text_mask(transformer, None)
    unmasked = transformer(**transformer_kwargs(transformer, latents, batch, sigmas, (32, 48)), return_dict=False)
    assert (unmasked[0] - together[0]).abs().max() > 1e-2


# --- end-to-end runs of `k5tune train` on the tiny model ---------------------------------------------








@pytest.mark.slow
def test_k5tune_train_end_to_end(tmp_path, monkeypatch, tiny_model_dir, capsys):
    from diffusers import Kandinsky5T2VPipeline

    make_project(tmp_path, tiny_model_dir, {
        "max_train_steps": 6, "train_batch_size": 2, "validation_prompt": "a red circle moving to the right",
        "validation_steps": 3, "validation_resolution": "48x64", "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2, "frame_rate": 12, "validation_guidance": 4.0,
    }, datasets={"video": {"num_frames": 17, "frame_rate": 24}})
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    output = tmp_path / "output"
    assert str(output / "pytorch_lora_weights.safetensors") in out  # it ends by saying where things are

    # per-step metrics and the loss plot
    rows = (output / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["step", "epoch", "loss", "lr", "grad_norm"] and len(rows) == 7
    assert (output / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # validation videos at step 3 and at the end: decodable, right frame count, size and rate
    for step in (3, 6):
        info = read_video_info(output / "validation" / f"step-{step:06d}" / "prompt-00.mp4")
        assert (info["frames"], info["height"], info["width"]) == (9, 48, 64)
        assert info["fps"] == pytest.approx(12)

    # the LoRA loads in the diffusers pipeline, covers every trained module and changes the output
    lora_file = output / "pytorch_lora_weights.safetensors"
    keys = load_file(lora_file).keys()
    with safe_open(lora_file, framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["k5tune.steps"]) == 6 and json.loads(meta["k5tune.rank"]) == 4
    modules = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in keys}
    pipe = Kandinsky5T2VPipeline.from_pretrained(tiny_model_dir)
    pipe.prompt_template_encode_start_idx = Kandinsky5Components(
        resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).prompt_start_index
    pipe.set_progress_bar_config(disable=True)
    expected = {n for n, _ in pipe.transformer.named_modules()
                if n.endswith(("to_query", "to_key", "to_value")) or n.endswith("attention.out_layer")}
    assert modules == expected

    def generate():
        return pipe(prompt="a red circle", height=32, width=32, num_frames=5, num_inference_steps=2,
                    output_type="np", generator=torch.Generator().manual_seed(0)).frames
    before = generate()
    pipe.load_lora_weights(str(output))
    loaded = {n for n, _ in pipe.transformer.named_modules() if n.endswith(".lora_A.default_0")}
    assert {n.rsplit(".lora_A", 1)[0] for n in loaded} == expected
    after = generate()
    assert np.abs(after - before).max() > 1e-4


@pytest.mark.slow
def test_same_seed_gives_the_same_lora(tmp_path, monkeypatch, tiny_model_dir):
    results = []
    for run in ("a", "b"):
        folder = make_project(tmp_path / run, tiny_model_dir, {"max_train_steps": 4, "train_batch_size": 2})
        monkeypatch.chdir(folder)
        results.append(load_file(train(load_config()).lora_path))
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
    # the LoRA really trained: B matrices start at zero and are not zero any more
    assert any(v.abs().sum() > 0 for k, v in results[0].items() if "lora_B" in k)


@pytest.mark.slow
def test_one_clip_overfits(tmp_path, monkeypatch, tiny_model_dir):
    """One clip, seen 4 times a step: the training loss falls by at least half."""
    folder = tmp_path / "overfit"
    write_clip(folder / "datasets" / "videos" / "one.mp4", frames=24, width=64, height=48, motion="right")
    (folder / "datasets" / "videos" / "one.txt").write_text("a red circle moving to the right")
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config.json").write_text(json.dumps({
        "pretrained_model_name_or_path": tiny_model_dir, "report_to": "none", "output_dir": "output",
        "max_train_steps": 300, "train_batch_size": 4, "learning_rate": 5e-3, "lr_warmup_steps": 0,
        "lora_rank": 16, "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"],
        "gradient_checkpointing": False,
    }))
    (folder / "config" / "multidatabackend.json").write_text(json.dumps([
        {"id": "one", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 48,
         "video": {"num_frames": 17}, "repeats": 3},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ]))
    monkeypatch.chdir(folder)
    losses = train(load_config()).losses
    first, last = statistics.mean(losses[:20]), statistics.mean(losses[-20:])
    assert last <= 0.5 * first, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["constant", "constant_with_warmup", "cosine", "linear"])
def test_lr_schedules_and_accumulation(tmp_path, monkeypatch, tiny_model_dir, schedule):
    folder = make_project(tmp_path, tiny_model_dir, {
        "num_train_epochs": 2, "lr_scheduler": schedule, "lr_warmup_steps": 1, "gradient_accumulation_steps": 2,
        "gradient_checkpointing": True,
    })
    monkeypatch.chdir(folder)
    result = train(load_config())
    # 4 clips, batch 1, accumulation 2 -> 2 optimizer steps per epoch, 2 epochs
    assert result.steps == 4
    rows = (folder / "output" / "metrics.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[3]) for r in rows]
    if schedule == "constant":
        assert lrs == [1e-3] * 4
    elif schedule == "linear":
        assert lrs[-1] == 0.0
    else:
        assert lrs[0] == pytest.approx(1e-3)  # after one warm-up step
