"""Scheduled sampling (rollout): exact sampler steps, nothing changed when it does not fire, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.config.loading import build_train_config
from k5tune.errors import ConfigError
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts
from k5tune.runtime import Runtime
from k5tune.train import objective
from k5tune.train.rollout import Rollout, RolloutSettings, source_level
from k5tune.train.step import predict_velocity
from k5tune.workflow import train
from tests.helpers import InterruptAt, assert_same, lora, make_project

pytestmark = pytest.mark.slow

RUN = {"max_train_steps": 4, "train_batch_size": 2, "checkpointing_steps": 2, "validation_num_inference_steps": 10}
ROLLOUT = {"scheduled_sampling_max_step_offset": 3, "scheduled_sampling_probability": 0.6}


def _train(folder, model_dir, config, monkeypatch, progress=None):
    monkeypatch.chdir(make_project(folder, model_dir, config))
    return train(load_config(), progress=progress)


def test_probability_zero_trains_bit_for_bit_as_without(tmp_path, monkeypatch, tiny_model_dir):
    plain = lora(_train(tmp_path / "plain", tiny_model_dir, RUN, monkeypatch).output_dir)
    idle = _train(tmp_path / "idle", tiny_model_dir, {**RUN, **ROLLOUT, "scheduled_sampling_probability": 0.0},
                  monkeypatch)
    assert_same(lora(idle.output_dir), plain)
    rows = list(csv.DictReader((idle.output_dir / "metrics.csv").open()))
    assert [float(r["rollout_share"]) for r in rows] == [0.0] * 4  # logged, and nothing rolled out


def test_a_rollout_of_one_step_is_the_samplers_own_step(tiny_model_dir):
    """p 1, offset 1: the rolled-out input is FlowMatchEulerDiscreteScheduler.step of the same model's
    velocity from the same noise at the level one sampler step earlier; the target carries it to x0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    runtime = Runtime.detect("no", "cpu")
    generator = torch.Generator().manual_seed(0)
    latent, noise = torch.randn(2, 4, 6, 16, generator=generator), torch.randn(2, 4, 6, 16, generator=generator)
    text = pad_prompts([torch.randn(5, 32, generator=generator)], [torch.randn(32, generator=generator)])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(10)
    rollout = Rollout(RolloutSettings(max_offset=1, probability=1.0), objective.sampler_levels(10, 5.0))
    torch.testing.assert_close(rollout.levels, scheduler.sigmas[:-1])
    sigma = torch.tensor([0.52])
    index, steps = source_level(rollout.levels, 0.52, 1)
    assert steps == 1 and index == int((rollout.levels - 0.52).abs().argmin())  # the nearest sampler level

    def predict(_):
        return lambda x, s: predict_velocity(transformer, x[None], s, text, (32, 48), runtime)[0]

    plain = objective.add_noise(latent[None], noise[None], sigma), objective.velocity_target(latent[None], noise[None])
    noisy, target, sigmas = rollout.apply(latent[None], noise[None], sigma, *plain, [1], predict)
    source = objective.add_noise(latent[None], noise[None], rollout.levels[index - 1].view(1))
    velocity = predict_velocity(transformer, source, rollout.levels[index - 1], text, (32, 48), runtime)
    expected = scheduler.step(velocity, scheduler.timesteps[index - 1], source, return_dict=False)[0]
    torch.testing.assert_close(noisy, expected, atol=1e-6, rtol=1e-6)
    assert sigmas.item() == rollout.levels[index].item()
    torch.testing.assert_close(target, (noisy - latent[None]) / sigmas.item())
    assert rollout.stats.row() == {"rollout_share": 1.0, "rollout_forwards": 1.0}


def test_rollouts_are_reproducible_and_resume_is_exact(tmp_path, monkeypatch, tiny_model_dir):
    config = {**RUN, **ROLLOUT}
    first = _train(tmp_path / "a", tiny_model_dir, config, monkeypatch)
    again = _train(tmp_path / "b", tiny_model_dir, config, monkeypatch)
    assert_same(lora(again.output_dir), lora(first.output_dir))
    rows = list(csv.DictReader((first.output_dir / "metrics.csv").open()))
    assert sum(float(r["rollout_forwards"]) for r in rows) > 0 and 0 < max(float(r["rollout_share"]) for r in rows)
    stopped = _train(tmp_path / "c", tiny_model_dir, config, monkeypatch, progress=InterruptAt(3))
    assert stopped.interrupted
    assert main(["train", "--resume_from_checkpoint", "latest"]) == 0
    assert_same(lora(stopped.output_dir), lora(first.output_dir))


def test_rollout_with_i2v_and_tread(tmp_path, monkeypatch, tiny_model_dir, tiny_i2v_model_dir):
    """I2V: the image latent conditions every rollout step; TREAD: training routes, rollouts run dense
    (eval mode, as the sampler runs)."""
    from k5tune.models.kandinsky5 import forward
    from tests.helpers import make_i2v_project

    routed: list[bool] = []
    real = forward.k5tune_forward
    monkeypatch.setattr(forward, "k5tune_forward", lambda self, *a, **k: routed.append(self.training) or real(
        self, *a, **k))
    route = {"tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 1}]}}
    result = _train(tmp_path / "tread", tiny_model_dir, {**RUN, **ROLLOUT, **route,
                                                         "scheduled_sampling_probability": 1.0}, monkeypatch)
    assert result.steps == 4 and True in routed and False in routed  # routed training, dense rollouts
    monkeypatch.chdir(make_i2v_project(tmp_path / "i2v", tiny_i2v_model_dir, {
        **ROLLOUT, "max_train_steps": 2, "scheduled_sampling_probability": 1.0, "validation_num_inference_steps": 10}))
    result = train(load_config())
    assert result.steps == 2 and all(torch.isfinite(v).all() for v in lora(result.output_dir).values())


def test_bad_rollout_settings_are_clear_errors(tmp_path, monkeypatch, tiny_model_dir, capsys):
    with pytest.raises(ConfigError, match="key 'scheduled_sampling_max_step_offset'.*use at most 9"):
        build_train_config({"scheduled_sampling_max_step_offset": 10, "validation_num_inference_steps": 10}, "c")
    with pytest.raises(ConfigError, match="key 'scheduled_sampling_prob_end'"):
        build_train_config({"scheduled_sampling_prob_start": 0.6, "scheduled_sampling_prob_end": 0.2}, "c")
    with pytest.raises(ConfigError, match="key 'scheduled_sampling_probability'"):
        build_train_config({"scheduled_sampling_probability": 1.5}, "c")
    assert RolloutSettings(3, 1.0, 0.0, 0.8, ramp_steps=10, start_step=5).probability_at(4) == 0.0
    assert RolloutSettings(3, 1.0, 0.0, 0.8, ramp_steps=10, start_step=5).probability_at(10) == pytest.approx(0.4)
    assert RolloutSettings(3, 1.0, 0.2, 0.8, ramp_steps=10, ramp_shape="cosine").probability_at(99) == 0.8
