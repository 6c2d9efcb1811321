"""Rollout beside the other features: NABLA (the rollout runs the attention inference runs), group and
activation offload, compiled blocks, and two processes training the LoRA of one."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from k5tune.config import load_config
from k5tune.workflow import train
from tests.helpers import (
    DISTRIBUTED_RUN,
    assert_same_training_across_processes,
    lora,
    make_project,
    train_lora,
    train_lora_on_two_processes,
)

pytestmark = pytest.mark.slow

ROLLOUT = {"scheduled_sampling_max_step_offset": 2, "scheduled_sampling_probability": 1.0,
           "validation_num_inference_steps": 10}


def _rolled_out_forwards(result) -> float:
    rows = list(csv.DictReader((result.output_dir / "metrics.csv").open()))
    return sum(float(r["rollout_forwards"]) for r in rows)


def test_rollout_under_nabla_runs_the_sparse_attention(tmp_path, monkeypatch, tiny_nabla_dir):
    """Each rollout forward builds its own NABLA mask from its own queries and keys (as inference does);
    the training forward builds one per layer, which its checkpointed backward reuses."""
    from k5tune.models.kandinsky5 import nabla

    masks: list[int] = []
    real = nabla.block_mask
    monkeypatch.setattr(nabla, "block_mask", lambda *a, **k: masks.append(1) or real(*a, **k))
    folder = make_project(tmp_path, tiny_nabla_dir, {**ROLLOUT, "max_train_steps": 2, "train_batch_size": 1,
                                                     "disable_validation": True},
                          datasets={"resolution": 256, "video": {"num_frames": 5}})
    monkeypatch.chdir(folder)
    result = train(load_config())
    forwards = _rolled_out_forwards(result)
    assert result.steps == 2 and forwards > 0
    layers = 2  # the tiny model's visual blocks
    assert len(masks) == layers * (result.steps + forwards)
    assert all(torch.isfinite(v).all() for v in lora(result.output_dir).values())


@pytest.mark.parametrize("memory", ["group_offload", "activation_offload", "compiled_blocks"])
def test_rollout_with_offload_and_compiled_blocks(tmp_path, monkeypatch, tiny_model_dir, memory):
    """The rollout's forwards go through the same offloaded or compiled blocks as training's."""
    from k5tune.train.plan import TrainingPlan

    settings = {"group_offload": {"enable_group_offload": True, "gradient_checkpointing_policy": "full"},
                "activation_offload": {"offload_activations": True},
                "compiled_blocks": {}}[memory]
    if memory == "compiled_blocks":  # the plan of a GPU run, compiled without code generation on the CPU
        original = TrainingPlan.from_config
        monkeypatch.setattr(TrainingPlan, "from_config", staticmethod(
            lambda cfg, processes=1, nabla=None: replace(original(cfg, processes, nabla), compile_blocks=True,
                                                         compile_backend="aot_eager", compile_kernels=False)))
    run = {**ROLLOUT, **settings, "max_train_steps": 2, "train_batch_size": 2, "disable_validation": True}
    monkeypatch.chdir(make_project(tmp_path, tiny_model_dir, run))
    result = train(load_config())
    assert result.steps == 2 and _rolled_out_forwards(result) > 0
    assert all(torch.isfinite(v).all() for v in lora(result.output_dir).values())


def test_two_processes_roll_out_what_one_process_rolls_out(tmp_path, monkeypatch, tiny_model_dir):
    """Each sample draws its rollout from its own generator: whichever process trains it, it rolls out the
    same, and two processes train the LoRA of one (DDP; the same maths in another order)."""
    run = {**DISTRIBUTED_RUN, **ROLLOUT, "scheduled_sampling_probability": 0.5, "disable_validation": True}
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**run, "train_batch_size": 2}, monkeypatch)
    got = train_lora_on_two_processes(tmp_path / "double", tiny_model_dir, run, monkeypatch)
    assert_same_training_across_processes(got, expected)
