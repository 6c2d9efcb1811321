"""FSDP2 (`fsdp_enable`) on the CPU with two gloo processes: the sharded run trains the same LoRA as one
unsharded process with the same global batch, writes the usual single-file LoRA, and resumes exactly."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.workflow import train
from tests.helpers import DISTRIBUTED_RUN as RUN
from tests.helpers import (
    assert_same_training_across_processes,
    lora_errors,
    make_project,
    train_lora,
    train_lora_on_two_processes,
)

SHARDED = {**RUN, "num_processes": 2, "fsdp_enable": True, "lr_scheduler": "constant"}


@pytest.mark.slow
def test_sharded_training_equals_one_process_and_resumes(tmp_path, monkeypatch, tiny_model_dir, capfd):
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2,
                                                                "lr_scheduler": "constant"}, monkeypatch)
    # two processes, each holding half of every block; validation ran on both
    got = train_lora_on_two_processes(tmp_path / "sharded", tiny_model_dir, SHARDED, monkeypatch)
    assert "FSDP2: the transformer is sharded over 2 processes" in capfd.readouterr().out
    output = tmp_path / "sharded" / "output"
    assert_same_training_across_processes(got, expected)
    assert len(list((output / "validation").rglob("*.mp4"))) == 1  # written once, by the first process
    assert [p.name for p in sorted(output.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]

    # resume: a run stopped after step 2 and resumed from its checkpoint ends where the whole run did
    resumed = tmp_path / "resumed"
    train_lora_on_two_processes(resumed, tiny_model_dir, {**SHARDED, "max_train_steps": 2}, monkeypatch)
    assert main(["train", "--max_train_steps", "3", "--resume_from_checkpoint", "latest"]) == 0
    again = load_file(resumed / "output" / "pytorch_lora_weights.safetensors")
    errors = lora_errors(again, got)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.slow
def test_sharded_training_with_activation_offload(tmp_path, monkeypatch, tiny_model_dir):
    """The checkpointed blocks' inputs wait in CPU memory (every one, for the tiny model) under FSDP2 too."""
    monkeypatch.setenv("K5TUNE_MIN_OFFLOADED_ELEMENTS", "1")
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2, "lr_scheduler": "constant",
                                                                "disable_validation": True}, monkeypatch)
    got = train_lora_on_two_processes(tmp_path / "sharded", tiny_model_dir, {
        **SHARDED, "offload_activations": True, "disable_validation": True}, monkeypatch)
    assert_same_training_across_processes(got, expected)


def test_fsdp_with_one_process_trains_unsharded(tmp_path, monkeypatch, tiny_model_dir):
    folder = make_project(tmp_path, tiny_model_dir, {**RUN, "max_train_steps": 1, "fsdp_enable": True,
                                                    "disable_validation": True})
    monkeypatch.chdir(folder)
    result = train(load_config())
    assert result.lora_path.is_file()


def test_fsdp_and_group_offload_are_refused_together(tmp_path, monkeypatch, tiny_model_dir):
    import pytest

    from k5tune.errors import ConfigError

    folder = make_project(tmp_path, tiny_model_dir, {"fsdp_enable": True, "enable_group_offload": True})
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match="cannot be combined"):
        train(load_config())
