"""CREPA: the term against a plain implementation of its formula, teacher features cached once and
reused, lambda 0 bit-identical to CREPA off, exact resume, the head kept out of the LoRA file, and
config errors naming their key."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.config.loading import build_train_config
from k5tune.data.synthetic import write_demo_dataset
from k5tune.errors import ConfigError
from k5tune.train.crepa import HEAD_FILE, alignment_term
from k5tune.workflow import train
from tests.helpers import assert_same, assert_same_training_across_processes, lora

RUN = {"max_train_steps": 4, "train_batch_size": 2, "checkpointing_steps": 2}


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> str:
    from k5tune.models.tiny import make_tiny_dinov2

    return str(make_tiny_dinov2(tmp_path_factory.mktemp("dinov2")))


def crepa_keys(encoder: str, **more) -> dict:
    return {"crepa_enabled": True, "crepa_encoder": encoder, "crepa_encoder_image_size": 28, "crepa_block_index": 1,
            **more}


def project(folder: Path, model_dir: str, config: dict) -> Path:
    """The tiny project: 4 synthetic clips of 17 frames at 48x64, a text cache."""
    if not (folder / "datasets").exists():
        write_demo_dataset(folder / "datasets" / "videos", n=4, frames=24, width=64, height=48)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    base = {"pretrained_model_name_or_path": model_dir, "report_to": "none", "output_dir": "output",
            "learning_rate": 1e-3, "lr_warmup_steps": 0, "lora_rank": 4, "seed": 7}
    (folder / "config" / "config.json").write_text(json.dumps({**base, **config}))
    backend = {"id": "clips", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 48,
               "video": {"num_frames": 17}}
    (folder / "config" / "multidatabackend.json").write_text(json.dumps(
        [backend, {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}]))
    return folder


def run(folder: Path, model_dir: str, config: dict, monkeypatch):
    monkeypatch.chdir(project(folder, model_dir, config))
    return train(load_config())


def caching(folder: Path) -> dict:
    return json.loads((folder / "cache" / "dataset_report.json").read_text())["caching"]["crepa"]


def reference_term(projected, teacher, distance, tau, frame_weights, mask) -> float:
    """The formula, one cosine at a time."""
    batch, frames, tokens, _ = projected.shape
    total = norm = 0.0
    for b in range(batch):
        for f in range(frames):
            for n in range(tokens):
                weight = float(frame_weights[b, f]) * float(mask[b, f, n])
                similarity = 0.0
                for d in range(-distance, distance + 1):
                    if 0 <= f + d < frames:
                        similarity += math.exp(-abs(d) / tau) * torch.nn.functional.cosine_similarity(
                            projected[b, f, n].double(), teacher[b, f + d, n].double(), dim=0).item()
                total += weight * similarity
                norm += weight
    return -total / norm


@pytest.mark.parametrize("distance,tau", [(0, 1.0), (1, 1.0), (2, 0.5)])
def test_the_term_is_the_formula(distance, tau):
    generator = torch.Generator().manual_seed(0)
    projected, teacher = torch.randn(2, 4, 5, 6, generator=generator), torch.randn(2, 4, 5, 6, generator=generator)
    frame_weights = torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 1]])  # I2V's conditioning frame out, as the main loss
    mask = torch.rand(2, 4, 5, generator=generator) > 0.3  # TREAD: routed tokens out
    got = alignment_term(projected, teacher, distance, tau, frame_weights, mask)
    assert got.item() == pytest.approx(reference_term(projected, teacher, distance, tau, frame_weights, mask),
                                       abs=1e-6)
    # identical features on every frame: each frame's similarities are the weights' sum
    same = teacher[:, :1].expand_as(teacher)
    plain = alignment_term(same * 3.0, same, distance, tau)
    expected = -sum(sum(math.exp(-abs(d) / tau) for d in range(-distance, distance + 1) if 0 <= f + d < 4)
                    for f in range(4)) / 4
    assert plain.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_crepa_trains_from_cached_features_and_lambda_zero_changes_nothing(tmp_path, monkeypatch, tiny_model_dir,
                                                                           tiny_dinov2):
    from k5tune.models import dinov2

    plain = lora(run(tmp_path, tiny_model_dir, RUN, monkeypatch).output_dir)
    shutil.rmtree(tmp_path / "output")
    idle = run(tmp_path, tiny_model_dir, {**RUN, **crepa_keys(tiny_dinov2, crepa_lambda=0.0)}, monkeypatch)
    assert_same(lora(idle.output_dir), plain)  # the head, the tap and the term ran, weighted 0
    rows = list(csv.DictReader((idle.output_dir / "metrics.csv").open()))
    assert [float(r["flow_loss"]) for r in rows] == [float(r["loss"]) for r in rows]
    assert all(-3 < float(r["crepa_loss"]) < 0.5 for r in rows)  # logged apart: 1 + 2 e^-1 at most in size
    assert caching(tmp_path)["encoded"] == 4 and caching(tmp_path)["mib_per_clip"] > 0
    report = json.loads((tmp_path / "cache" / "dataset_report.json").read_text())
    assert any("MiB per clip" in note for note in report["notes"])
    # the head lives in the checkpoints, never in the LoRA file
    assert (idle.output_dir / "checkpoint-4" / HEAD_FILE).is_file()
    assert not any("proj" in k or "norm" in k for k in lora(idle.output_dir))

    # a second run reuses the features (DINOv2 never loads) and trains with the term on
    monkeypatch.setattr(dinov2, "load_dinov2", lambda *a, **k: pytest.fail("features were encoded again"))
    shutil.rmtree(tmp_path / "output")
    on = run(tmp_path, tiny_model_dir, {**RUN, **crepa_keys(tiny_dinov2)}, monkeypatch)
    assert caching(tmp_path)["encoded"] == 0
    rows = list(csv.DictReader((on.output_dir / "metrics.csv").open()))
    first = rows[0]
    assert float(first["loss"]) == pytest.approx(float(first["flow_loss"]) + 0.5 * float(first["crepa_loss"]))
    assert any(not torch.equal(v, plain[k]) for k, v in lora(on.output_dir).items())


@pytest.mark.slow
def test_resume_is_exact_and_new_settings_rebuild_only_the_features(tmp_path, monkeypatch, tiny_model_dir,
                                                                     tiny_dinov2):
    config = {**RUN, **crepa_keys(tiny_dinov2, crepa_adjacent_distance=2, crepa_adjacent_tau=0.5)}
    whole = run(tmp_path, tiny_model_dir, config, monkeypatch)
    expected, head = lora(whole.output_dir), load_file(whole.output_dir / "checkpoint-4" / HEAD_FILE)
    assert main(["train", "--resume_from_checkpoint", str(whole.output_dir / "checkpoint-2")]) == 0
    assert_same(lora(whole.output_dir), expected)
    assert_same(load_file(whole.output_dir / "checkpoint-4" / HEAD_FILE), head)
    # a checkpoint trained with CREPA does not resume without it
    assert main(["train", "--resume_from_checkpoint", "latest", "--crepa_enabled", "false",
                 "--max_train_steps", "6"]) == 2
    # another image size: new features (the latents stay), pooled 2x2 tokens: 4x smaller entries... or fewer
    latents_before = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    shutil.rmtree(tmp_path / "output")
    run(tmp_path, tiny_model_dir, {**config, "crepa_encoder_image_size": 42, "crepa_feature_pooling": 2,
                                   "max_train_steps": 2}, monkeypatch)
    assert caching(tmp_path)["encoded"] == 4
    after = sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors"))
    assert len(after) == len(latents_before) + 4 and set(latents_before) <= set(after)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tread", "no_checkpointing", "full_checkpointing", "group_offload", "rollout"])
def test_crepa_with_tread_and_checkpointing_modes(tmp_path, monkeypatch, tiny_model_dir, tiny_dinov2, variant):
    """TREAD: the aligned block inside a route sees only the kept tokens (the term averages over them);
    without checkpointing a forward hook taps the block, with it the checkpointing function; rollout's
    forwards (no gradient) leave the tap alone: one capture per training forward."""
    from k5tune.train.crepa import Crepa

    kept = []
    real = Crepa._on_grid
    monkeypatch.setattr(Crepa, "_on_grid", lambda self, p, k, *a: kept.append(k) or real(self, p, k, *a))
    settings = {"tread": {"tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0,
                                                       "end_layer_idx": 1}]}},
                "no_checkpointing": {"gradient_checkpointing": False},
                "full_checkpointing": {"gradient_checkpointing_policy": "full"},
                "group_offload": {"enable_group_offload": True},  # (activation offload comes with it)
                "rollout": {"scheduled_sampling_max_step_offset": 2, "scheduled_sampling_probability": 1.0,
                            "validation_num_inference_steps": 10}}[variant]  # (no-grad rollouts: not tapped)
    result = run(tmp_path, tiny_model_dir, {**crepa_keys(tiny_dinov2), "max_train_steps": 2, **settings}, monkeypatch)
    rows = list(csv.DictReader((result.output_dir / "metrics.csv").open()))
    assert len(rows) == 2 and all(abs(float(r["crepa_loss"])) < 1 + 2 * math.exp(-1) for r in rows)
    if variant == "tread":  # block 1 ends the route: half of the 5 x 3 x 4 tokens went through it
        assert kept and all(k is not None and k.shape == (1, 30) for k in kept)
    else:
        assert len(kept) == 2 and all(k is None for k in kept)


def test_bad_crepa_settings_are_clear_errors(tmp_path, monkeypatch, tiny_model_dir, tiny_dinov2, capsys):
    with pytest.raises(ConfigError, match="key 'crepa_encoder'.*unknown encoder 'dinov2_vitl14'.*dinov2_vitg14"):
        build_train_config({"crepa_encoder": "dinov2_vitl14"}, "c")
    with pytest.raises(ConfigError, match="key 'crepa_encoder_image_size'.*patch size 14.*e.g. 490 or 504"):
        build_train_config({"crepa_encoder_image_size": 500}, "c")
    with pytest.raises(ConfigError, match="key 'crepa_encoder'.*holds no DINOv2 model"):
        build_train_config({"crepa_encoder": str(tmp_path)}, "c")
    assert build_train_config({"crepa_encoder": "facebook/dinov2-base"}, "c").crepa_encoder == "facebook/dinov2-base"
    assert build_train_config({"crepa_encoder": tiny_dinov2}, "c").crepa_encoder == tiny_dinov2
    # the tiny model has 2 visual blocks: the run stops before caching anything
    monkeypatch.chdir(project(tmp_path, tiny_model_dir, crepa_keys(tiny_dinov2, crepa_block_index=2)))
    assert main(["train"]) == 2
    error = capsys.readouterr().err
    assert "key 'crepa_block_index'" in error and "valid: 0..1" in error and error.count("\n") == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_crepa_with_i2v_keeps_the_conditioning_frame_out(tmp_path, monkeypatch, tiny_i2v_model_dir, tiny_dinov2,
                                                         capsys):
    from k5tune.train import crepa

    seen = []
    real = crepa.alignment_term
    monkeypatch.setattr(crepa, "alignment_term", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    config = {**crepa_keys(tiny_dinov2), "model_flavour": "i2v-lite-5s", "max_train_steps": 2,
              "disable_validation": True}
    result = run(tmp_path, tiny_i2v_model_dir, config, monkeypatch)
    assert result.steps == 2 and all(w is not None and (w[:, 0] == 0).all() and (w[:, 1:] == 1).all() for w in seen)
    # dropping the VAE encoder would break I2V validation (it encodes its image): refused up front
    project(tmp_path, tiny_i2v_model_dir, {**config, "disable_validation": False, "crepa_drop_vae_encoder": True,
                                           "validation_prompt": "a circle"})
    assert main(["train"]) == 2 and "key 'crepa_drop_vae_encoder'" in capsys.readouterr().err


def test_nabla_token_order_is_undone():
    """Under NABLA the blocks see 8x8-token groups: the head's output goes back to (T, H, W) order."""
    from diffusers.models.transformers.transformer_kandinsky import fractal_flatten

    from k5tune.train.crepa import Crepa

    grid = torch.arange(2 * 16 * 16 * 3, dtype=torch.float32).view(1, 2, 16, 16, 3)
    flat, _ = fractal_flatten(grid, grid, (1, 2, 16, 16), block_mask=True)
    assert not torch.equal(flat, grid.flatten(1, 3))
    crepa = Crepa.__new__(Crepa)
    crepa.fractal = True
    back, mask = crepa._on_grid(flat, None, 1, (2, 16, 16))
    assert torch.equal(back, grid) and mask.shape == (1, 2, 16, 16, 1)


@pytest.mark.slow
def test_compiled_blocks_are_tapped_outside_the_compiled_region(tiny_model_dir):
    """Compiled checkpointed blocks (aot_eager: the same graphs, no code generation) give the term and the
    head's gradient of the eager step."""
    from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
    from k5tune.models.kandinsky5.model_input import pad_prompts
    from k5tune.runtime import Runtime
    from k5tune.train.build import LoraSettings, build_training_model
    from k5tune.train.crepa import Crepa, CrepaSettings
    from k5tune.train.plan import TrainingPlan
    from k5tune.train.step import flow_matching_step_loss

    runtime = Runtime.detect("no", "cpu")
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(1, 3, 4, 6, 16, generator=generator), torch.randn(1, 3, 4, 6, 16, generator=generator)
    text = pad_prompts([torch.randn(5, 32, generator=generator)], [torch.randn(32, generator=generator)])
    teacher = torch.randn(1, 3, 6, 8, generator=generator)
    results = []
    for compiled in (False, True):
        transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
        plan = TrainingPlan(compile_blocks=compiled, compile_kernels=False, compile_backend="aot_eager")
        assert plan.compiles_blocks(False) is compiled
        build_training_model(transformer, plan, LoraSettings(4, 4, ("to_query", "to_key", "to_value")), runtime)
        crepa = Crepa(CrepaSettings(block=1, weight=0.5, distance=1, tau=1.0), transformer, 8, "cpu", seed=3)
        loss = flow_matching_step_loss(transformer, latents, text, noise, torch.tensor([0.6]), (32, 48), runtime,
                                       crepa=crepa, teacher=teacher)
        loss.backward()
        results.append((crepa.last[1], crepa.head.proj.weight.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.slow
def test_bench_times_the_step_with_crepa(tiny_model_dir, monkeypatch):
    """`k5tune bench --crepa`: the same step with CREPA's term, its extra time (and peak on a GPU)."""
    import k5tune.bench as bench

    report = bench.run_bench(bench.BenchConfig(model=tiny_model_dir, resolution="48x64", frames=17, steps=1, warmup=1,
                                               crepa="dinov2_vits14", crepa_block=1, device="cpu",
                                               plan=bench.TrainingPlan(compile_kernels=False)))
    assert report["ours_crepa"]["step_s"] > 0 and report["crepa"]["teacher_mib_per_clip"] == 5 * 12 * 384 * 2 / 2**20
    assert "step_time_increase" in report["crepa"]
    # the feature caching measured for real: DINOv2-S (random weights, its real size) over the 5 frames
    caching = report["crepa_caching"]
    assert caching["encoder"] == "dinov2_vits14" and caching["frames_encoded"] == 5 and caching["seconds_per_clip"] > 0
    assert caching["mib_per_clip"] == report["crepa"]["teacher_mib_per_clip"]  # what the cache stores per clip


@pytest.mark.slow
def test_drop_vae_encoder_validates_with_the_decoder_alone(tmp_path, monkeypatch, tiny_model_dir, tiny_dinov2):
    from k5tune.train import trainer

    encoders = []
    real = trainer.run_validation
    monkeypatch.setattr(trainer, "run_validation", lambda components, *a, **k: encoders.append(
        components.vae().encoder) or real(components, *a, **k))
    result = run(tmp_path, tiny_model_dir, {**crepa_keys(tiny_dinov2, crepa_drop_vae_encoder=True), "max_train_steps": 1,
                                            "validation_prompt": "a red circle", "validation_resolution": "48x64",
                                            "validation_num_video_frames": 5, "validation_num_inference_steps": 2},
                 monkeypatch)
    assert encoders == [None] and len(result.videos) == 1


@pytest.mark.slow
def test_two_processes_train_crepa_as_one_process(tmp_path, monkeypatch, tiny_model_dir, tiny_dinov2):
    """DDP (gloo, k5tune starts both): the head's gradients are summed with the LoRA's; each process
    caches its share of the features. The same global batch gives the same LoRA and head."""
    config = {**crepa_keys(tiny_dinov2), "max_train_steps": 2, "checkpointing_steps": 2, "adam_epsilon": 1e-4}
    single = run(tmp_path / "single", tiny_model_dir, {**config, "train_batch_size": 2}, monkeypatch)
    monkeypatch.chdir(project(tmp_path / "double", tiny_model_dir, {**config, "train_batch_size": 1,
                                                                     "num_processes": 2}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train"]) == 0
    for name in ("pytorch_lora_weights.safetensors", f"checkpoint-2/{HEAD_FILE}"):
        assert_same_training_across_processes(load_file(tmp_path / "double" / "output" / name),
                                              load_file(single.output_dir / name))
    rows = [list(csv.DictReader((folder / "output" / "metrics.csv").open())) for folder in (tmp_path / "single",
                                                                                           tmp_path / "double")]
    assert [float(r["crepa_loss"]) for r in rows[1]] == pytest.approx([float(r["crepa_loss"]) for r in rows[0]],
                                                                      abs=1e-4)


@pytest.mark.slow
def test_sharded_crepa_trains_as_one_process_and_resumes(tmp_path, monkeypatch, tiny_model_dir, tiny_dinov2):
    """FSDP2 (gloo): the LoRA sharded, the head whole on both processes with its gradients averaged, the
    gradient norm over both. Two steps, a stop, two more from the checkpoint (LoRA, head and optimizer
    state restored): the same LoRA and head as one process trained four steps in one go."""
    config = {**crepa_keys(tiny_dinov2), "max_train_steps": 4, "checkpointing_steps": 2, "adam_epsilon": 1e-4,
              "max_grad_norm": 0.05, "disable_validation": True}  # (a bound that clips: the norms combine)
    single = run(tmp_path / "single", tiny_model_dir, {**config, "train_batch_size": 2}, monkeypatch)
    monkeypatch.chdir(project(tmp_path / "sharded", tiny_model_dir, {**config, "train_batch_size": 1,
                                                                      "num_processes": 2, "fsdp_enable": True,
                                                                      "max_train_steps": 2}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train"]) == 0
    assert main(["train", "--max_train_steps", "4", "--resume_from_checkpoint", "latest"]) == 0
    output = tmp_path / "sharded" / "output"
    for name in ("pytorch_lora_weights.safetensors", f"checkpoint-4/{HEAD_FILE}"):
        assert_same_training_across_processes(load_file(output / name), load_file(single.output_dir / name))
    rows = [list(csv.DictReader(path.open())) for path in (single.output_dir / "metrics.csv", output / "metrics.csv")]
    assert [float(r["grad_norm"]) for r in rows[1]] == pytest.approx([float(r["grad_norm"]) for r in rows[0]], rel=1e-3)
    assert float(rows[0][0]["grad_norm"]) > 0.05  # the bound clipped


def test_both_terms_reach_the_plot_and_the_web_ui(tmp_path):
    from k5tune.server.stream import summarize
    from k5tune.train.crepa import COLUMNS
    from k5tune.train.metrics import MetricsLog, plot_loss, read_metrics

    log = MetricsLog(tmp_path / "metrics.csv", COLUMNS)
    for step in (1, 2):
        log.write(step=step, epoch=0, loss=1.0, lr=1e-4, grad_norm=1.0, step_seconds=0.5, flow_loss=1.5,
                  crepa_loss=-1.0 * step)
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    summary = summarize(rows, 2)
    assert (summary["flow_loss"], summary["crepa_loss"]) == (1.5, -2.0)
    assert "crepa_loss" not in summarize([{"step": 1.0, "loss": 1.0}], 2)
    assert plot_loss(tmp_path / "metrics.csv", tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
