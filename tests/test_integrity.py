"""Training integrity (issue 21): what a real run hits, one test per finding."""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from k5tune import atomic
from k5tune.cache.result import CacheResult
from k5tune.cli import main
from k5tune.config import load_config
from k5tune.errors import ConfigError
from k5tune.progress import SilentProgress
from k5tune.train import checkpoint, objective, trainer
from k5tune.workflow import train
from tests.helpers import CHECKPOINT_RUN as RUN
from tests.helpers import FullDisk, InfiniteGradient, assert_same, lora, make_project, train_until_crash

VALIDATE = {"validation_prompt": "a red circle", "validation_resolution": "32x48", "validation_num_video_frames": 5,
            "validation_num_inference_steps": 2}


# --- 1. no per-step state leaks into validation --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("captions", ["mixed_lengths", "caption_dropout"])
def test_validation_after_a_batch_of_mixed_caption_lengths(tmp_path, monkeypatch, tiny_model_dir, captions):
    extra = {"caption_dropout_probability": 0.3} if captions == "caption_dropout" else {}
    folder = make_project(tmp_path, tiny_model_dir, {**VALIDATE, **extra, "max_train_steps": 2,
                                                     "train_batch_size": 2, "validation_steps": 1})
    if captions == "mixed_lengths":  # every batch mixes caption lengths
        for words, caption in enumerate(sorted((folder / "datasets" / "videos").glob("*.txt")), start=1):
            caption.write_text(" ".join(["circle"] * words) + "\n")
    monkeypatch.chdir(folder)
    result = train(load_config())
    assert len(result.videos) == 2 and all(v.path.is_file() for v in result.videos)  # after step 1, final


# --- 2. a LoRA trained with dropout loads deterministically ----------------------------------------


@pytest.mark.slow
def test_a_lora_trained_with_dropout_gives_the_same_video_twice(tmp_path, monkeypatch, tiny_model_dir):
    from diffusers import Kandinsky5T2VPipeline

    folder = make_project(tmp_path, tiny_model_dir, {"max_train_steps": 1, "lora_dropout": 0.5})
    monkeypatch.chdir(folder)
    result = train(load_config())
    from safetensors import safe_open

    with safe_open(str(result.lora_path), framework="pt") as handle:
        header = handle.metadata()
    assert json.loads(header["lora_adapter_metadata"])["transformer.lora_dropout"] == 0.0
    assert json.loads(header["k5tune.lora_dropout"]) == 0.5  # the training fact is kept

    pipe = Kandinsky5T2VPipeline.from_pretrained(tiny_model_dir)
    pipe.load_lora_weights(str(result.output_dir))
    pipe.set_progress_bar_config(disable=True)
    runs = [pipe(prompt_embeds_qwen=torch.ones(1, 4, 32), prompt_embeds_clip=torch.ones(1, 32),
                 prompt_cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), guidance_scale=1.0, height=32,
                 width=48, num_frames=5, num_inference_steps=2, output_type="latent",
                 generator=torch.Generator().manual_seed(0)).frames for _ in range(2)]
    assert torch.equal(runs[0], runs[1])

    videos = []
    for name in ("a.mp4", "b.mp4"):
        assert main(["generate", "--model", tiny_model_dir, "--lora", str(result.lora_path), "--prompt", "a circle",
                     "--frames", "5", "--resolution", "32x48", "--steps", "2", "--device", "cpu",
                     "--output", str(tmp_path / name)]) == 0
        videos.append((tmp_path / name).read_bytes())
    assert videos[0] == videos[1]


# --- 3. non-finite gradients are not applied ---------------------------------------------------------




def with_infinite_gradient_at(calls: set[int], monkeypatch) -> None:
    real = trainer.micro_batch_loss
    seen = {"n": 0}

    def loss(*args, **kwargs):
        seen["n"] += 1
        value = real(*args, **kwargs)
        return InfiniteGradient.apply(value) if seen["n"] in calls else value

    monkeypatch.setattr(trainer, "micro_batch_loss", loss)


@pytest.mark.slow
def test_a_nonfinite_gradient_skips_its_update(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    with_infinite_gradient_at({2}, monkeypatch)
    result = train(load_config())
    assert result.nonfinite_skipped == 1 and result.steps == 6
    for folder_ in checkpoint.list_checkpoints(result.output_dir):
        assert all(torch.isfinite(v).all() for v in lora(folder_).values()), folder_
    assert all(torch.isfinite(v).all() for v in lora(result.output_dir).values())

    with_infinite_gradient_at(set(range(1, 100)), monkeypatch)
    assert main(["train", "--output_dir", "output2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite losses or gradients in a row" in error and "last good checkpoint: none" in error


def test_nonfinite_weights_are_never_checkpointed(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    real_step = trainer.Trainer.train_step

    def poisoned(self, group):
        row = real_step(self, group)
        if self.step == 4:  # an update that made NaN weights, just before a periodic checkpoint
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
        return row

    monkeypatch.setattr(trainer.Trainer, "train_step", poisoned)
    assert main(["train"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "NaN/inf values at step 4: nothing saved" in error
    assert error.endswith(f"last good checkpoint: {Path('output').resolve() / 'checkpoint-2'}")
    assert [p.name for p in checkpoint.list_checkpoints(folder / "output")] == ["checkpoint-2"]


# --- 4. a new learning rate on resume takes effect ---------------------------------------------------


@pytest.mark.slow
def test_a_changed_learning_rate_on_resume_takes_effect(tmp_path, monkeypatch, tiny_model_dir, capsys):
    config = {**RUN, "lr_scheduler": "constant", "lr_warmup_steps": 0, "max_train_steps": 4}
    folder = make_project(tmp_path, tiny_model_dir, config)
    monkeypatch.chdir(folder)
    train_until_crash(monkeypatch, after_steps=2, reason="diverged")
    capsys.readouterr()
    assert main(["train", "--resume_from_checkpoint", "latest", "--learning_rate", "3e-4"]) == 0
    out = capsys.readouterr()
    assert "learning_rate 0.001 -> 0.0003" in out.out + out.err
    rows = [line.split(",") for line in (folder / "output" / "metrics.csv").read_text().splitlines()]
    lr = rows[0].index("lr")
    assert [float(r[lr]) for r in rows[1:]] == [1e-3, 1e-3, 3e-4, 3e-4]


@pytest.mark.slow
def test_an_unchanged_schedule_on_resume_restores_the_state_as_it_was(tmp_path, monkeypatch, tiny_model_dir):
    """(the cosine schedule of RUN: resume without changes keeps the restored scheduler, bit-exact)"""
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    state = checkpoint.load_state(train(load_config()).last_checkpoint)
    assert state["schedule"] == {"learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 1,
                                 "total_steps": 6}


# --- 5. there is always a complete checkpoint, and resume verifies it -------------------------------


def test_a_kill_between_the_renames_of_a_resave_keeps_the_checkpoint(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "checkpoints_total_limit": 1, "max_train_steps": 2})
    monkeypatch.chdir(folder)
    first = train(load_config()).last_checkpoint
    saved = lora(first)
    real_replace = os.replace

    def killed_after_moving_the_old_copy(src, dst):
        real_replace(src, dst)
        if Path(src).name == first.name:  # the old copy moved aside; the process dies here
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", killed_after_moving_the_old_copy)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(first.parent, 2, lambda d: (d / "pytorch_lora_weights.safetensors").write_bytes(b"x"),
                                   {"position": {"epoch": 0, "next_group": 0}}, 1)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not first.exists()  # the window: only the waiting copy is on disk
    assert [p.name for p in checkpoint.list_checkpoints(first.parent)] == ["checkpoint-2"]  # put back
    assert_same(lora(first), saved)
    assert checkpoint.resolve_resume(first.parent, "latest") == first


def test_resume_passes_over_a_damaged_checkpoint_and_names_it(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "max_train_steps": 4})
    monkeypatch.chdir(folder)
    output = train(load_config()).output_dir
    state = output / "checkpoint-4" / checkpoint.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated
    found = checkpoint.resolve_resume(output, "latest", log=print)
    assert found.name == "checkpoint-2"
    assert f"{output / 'checkpoint-4'} is damaged (training_state.pt does not match" in capsys.readouterr().out
    assert main(["train", "--resume_from_checkpoint", str(output / "checkpoint-4")]) == 2
    assert "does not match the sha256" in capsys.readouterr().err


# --- 6. NaN in a cache entry ---------------------------------------------------------------------------


def _poison_one_latent(cache_root: Path) -> Path:
    entry = sorted(cache_root.rglob("*.safetensors"))[0]
    tensors = load_file(entry)
    tensors["latents"].view(-1)[0] = float("nan")
    save_file(tensors, entry)  # a valid file with a NaN inside
    return entry


@pytest.mark.slow
def test_a_nan_cache_entry_is_named_and_encoded_again(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    reference = lora(train(load_config()).output_dir)
    entry = _poison_one_latent(_latent_root(folder))
    capsys.readouterr()
    assert main(["cache"]) == 0
    out = capsys.readouterr()
    assert "were NaN/inf values: deleted, encoded again" in out.out + out.err
    assert "1 clip(s)" in out.out and torch.isfinite(load_file(entry)["latents"]).all()
    assert_same(lora(train(load_config()).output_dir), reference)  # the same LoRA as before the damage


def _latent_root(folder: Path) -> Path:
    roots = [p.parent for p in (folder / "cache").rglob("manifest.json") if "text" not in p.parts]
    return roots[0]


def test_a_clip_the_vae_encodes_to_nan_is_reported_and_left_out(tmp_path, monkeypatch, tiny_model_dir):
    from k5tune.cache import latents as builder

    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "max_train_steps": 2})
    monkeypatch.chdir(folder)
    real = builder.encode_video
    calls = {"n": 0}

    def nan_for_the_first_clip(vae, pixels, *args, **kwargs):
        calls["n"] += 1
        latents = real(vae, pixels, *args, **kwargs)
        return latents * float("nan") if calls["n"] == 1 else latents

    monkeypatch.setattr(builder, "encode_video", nan_for_the_first_clip)
    result = train(load_config())
    report = json.loads(result.report_json.read_text())
    assert report["counts_by_reason"] == {"nonfinite_latents": 1} and report["used"] == 3
    assert result.steps == 2 and all(torch.isfinite(v).all() for v in lora(result.output_dir).values())


class RecordingProgress(SilentProgress):
    def __init__(self):
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_a_cache_entry_that_goes_bad_mid_run_leaves_its_clip_out(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "train_batch_size": 2})
    monkeypatch.chdir(folder)
    real = CacheResult.sample
    bad = {}

    def one_clip_goes_bad(self, record_key, backend_id, **options):
        sample = real(self, record_key, backend_id, **options)
        bad.setdefault("key", record_key)  # the first clip trained on
        return {k: v * float("nan") for k, v in sample.items()} if record_key == bad["key"] else sample

    monkeypatch.setattr(CacheResult, "sample", one_clip_goes_bad)
    progress = RecordingProgress()
    result = train(load_config(), progress=progress)
    assert result.steps == 6 and result.nonfinite_skipped == 0  # its batch-mates still trained
    assert all(torch.isfinite(v).all() for v in lora(result.output_dir).values())
    warnings = [line for line in progress.lines if "left out of this run" in line]
    assert len(warnings) == 1 and bad["key"].split("/", 1)[1] in warnings[0]
    assert "NaN/inf" in warnings[0]


# --- 7. a full disk ------------------------------------------------------------------------------------






@pytest.mark.slow
def test_a_full_disk_is_one_clear_error_and_loses_nothing(tmp_path, monkeypatch, tiny_model_dir, capsys):
    folder = make_project(tmp_path, tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    reference = lora(train(load_config()).output_dir)

    folder = make_project(tmp_path / "again", tiny_model_dir, RUN)
    monkeypatch.chdir(folder)
    real_step, real_open = trainer.Trainer.train_step, atomic.open_for_writing

    def disk_fills_at_step_5(self, group):
        if self.step == 4:
            monkeypatch.setattr(atomic, "open_for_writing", FullDisk(real_open, ".tmp-checkpoint-"))
        return real_step(self, group)

    monkeypatch.setattr(trainer.Trainer, "train_step", disk_fills_at_step_5)
    capsys.readouterr()
    assert main(["train", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1"]) == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # (above it: the progress bars)
    assert "Traceback" not in stderr and error.startswith("k5tune: error: the disk is full: could not write ")
    assert ".tmp-checkpoint-6" in error
    output = folder / "output"
    assert [p.name for p in checkpoint.list_checkpoints(output)] == ["checkpoint-4"]
    assert not list(output.glob(".tmp-*")) and not list(output.glob("checkpoint-4/.tmp-*"))
    monkeypatch.setattr(atomic, "open_for_writing", real_open)
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)
    assert main(["train", "--resume_from_checkpoint", "latest"]) == 0
    assert_same(lora(output), reference)


def test_disk_full_is_recognised_through_library_errors(tmp_path):
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    error.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert atomic.is_disk_full(error)
    assert atomic.is_disk_full(Exception("No space left on device (os error 28)"))
    assert not atomic.is_disk_full(ValueError("bad value"), tmp_path)


# --- 8. files respect the umask --------------------------------------------------------------------------


def test_written_files_respect_the_umask(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**VALIDATE, "max_train_steps": 2, "validation_steps": 100})
    monkeypatch.chdir(folder)
    previous = os.umask(0o022)
    try:
        result = train(load_config())
    finally:
        os.umask(previous)
    written = [result.lora_path, result.report_json, result.videos[-1].path,
               *result.last_checkpoint.iterdir(), *(folder / "cache").rglob("*.safetensors")]
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert set(modes.values()) == {0o644}, modes


# --- 9. fp16 ---------------------------------------------------------------------------------------------


def test_fp16_is_refused_with_advice(tmp_path, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.chdir(make_project(tmp_path, tiny_model_dir, {"mixed_precision": "fp16"}))
    with pytest.raises(ConfigError, match="use bf16"):
        load_config()
    assert main(["train"]) == 2
    assert "key 'mixed_precision': fp16 is not supported" in capsys.readouterr().err


# --- 10. captions are cut where inference cuts them ---------------------------------------------------


def test_the_caption_cap_is_the_pipelines_and_long_captions_are_reported(tmp_path, monkeypatch, tiny_model_dir):
    from diffusers import Kandinsky5T2VPipeline

    from k5tune.config.schema import TrainConfig
    from k5tune.models.kandinsky5.encoding import MAX_CAPTION_TOKENS

    pipeline_default = inspect.signature(Kandinsky5T2VPipeline.__call__).parameters["max_sequence_length"].default
    assert MAX_CAPTION_TOKENS == pipeline_default == TrainConfig().caption_max_tokens

    folder = make_project(tmp_path, tiny_model_dir, {"max_train_steps": 1, "caption_max_tokens": 20})
    long = "a red circle moving to the right over a dark background, slowly, then faster, then slowly again"
    (folder / "datasets" / "videos" / "clip_000.txt").write_text(long)
    monkeypatch.chdir(folder)
    assert main(["cache"]) == 0
    report = json.loads((folder / "cache" / "dataset_report.json").read_text())
    assert [Path(item["path"]).name for item in report["long_captions"]] == ["clip_000.mp4"]
    assert report["long_captions"][0]["tokens"] > 20
    assert any("longer than caption_max_tokens (20 Qwen tokens)" in note for note in report["notes"])


# --- 11. training noise levels ---------------------------------------------------------------------------


def test_default_noise_levels_match_the_samplers_steps():
    """The default draws the levels the sampler visits (same share below 0.3 as a 50-step run); the old
    logit-normal default drew a tenth of them there."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(50)
    torch.testing.assert_close(objective.sampler_levels(50, 5.0), scheduler.sigmas[:-1])
    uniform = objective.sigma_distribution(5.0, "uniform")
    sampler = objective.sampler_share_below(0.3, 50, 5.0)
    assert abs(uniform["share_below_0.3"] - sampler) < 0.01
    assert objective.sigma_distribution(5.0, "logit_normal")["share_below_0.3"] < sampler / 5
    mode = objective.sample_sigmas(10000, torch.Generator().manual_seed(0), 1.0, "mode")
    assert 0 <= mode.min() and mode.max() <= 1


def test_dry_run_prints_the_noise_level_quantiles(tmp_path, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.chdir(make_project(tmp_path, tiny_model_dir, {}))
    assert main(["train", "--dry-run"]) == 0
    levels = json.loads(capsys.readouterr().out)["derived"]["training_noise_levels"]
    assert levels["sampling"] == "uniform" and levels["shift_from"] == "the model's scheduler config"
    assert set(levels["quantiles"]) == {"q05", "q25", "q50", "q75", "q95", "share_below_0.3"}


# --- 12. no library noise on every command ------------------------------------------------------------


@pytest.mark.slow
def test_torchao_kernel_library_lines_are_quiet_and_other_failures_are_not(caplog):
    script = "import k5tune, transformers.quantizers.quantizer_torchao"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "Failed to load" not in result.stderr
    logger = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING, logger="torchao"):
        logger.warning("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: gone")
        logger.warning("Failed to load /x/torchao/_C_other.so: gone")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load /x/torchao/_C_other.so: gone"]
