"""Several processes (gloo on the CPU): data-parallel LoRA training equals one process with the same
global batch, caching is split across processes, and only the first process writes."""

from __future__ import annotations

import json

import pytest

from k5tune.cache.result import EMPTY_CAPTION
from k5tune.config import load_config
from k5tune.distributed import Dist
from tests.helpers import DISTRIBUTED_RUN as RUN
from tests.helpers import (
    assert_same_steps,
    assert_same_training_across_processes,
    make_project,
    train_lora,
    train_lora_on_two_processes,
)

# adam_epsilon: Adam divides by sqrt(v); for gradients near zero that turns float noise (the gloo sum and
# the padded text batch round differently from one process) into whole steps of +-lr. A larger epsilon
# keeps the update proportional to the gradient, so the comparison tests the data parallelism itself.




@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, monkeypatch, tiny_model_dir):
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2}, monkeypatch)
    double = tmp_path / "double"
    # the gloo sum and the padded/masked text batch round differently: the same maths in another order
    got = train_lora_on_two_processes(double, tiny_model_dir, RUN, monkeypatch)
    assert_same_training_across_processes(got, expected)
    assert_same_steps(double / "output", tmp_path / "single" / "output")
    # the first process alone wrote the outputs: one metrics row per step, one run log, one video
    rows = (double / "output" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
    assert len(list((double / "output" / "logs").iterdir())) == 1
    assert [p.name for p in sorted((double / "output").glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]
    assert len(list((double / "output" / "validation").rglob("*.mp4"))) == 1
    # every process saw the whole cache: the manifest (merged under a lock) lists every clip
    manifest = json.loads((double / "cache" / "vae" / "clips" / "manifest.json").read_text())
    assert len(manifest) == 4


@pytest.mark.slow
def test_caching_work_is_split_between_processes(tmp_path, monkeypatch, tiny_model_dir):
    """Process r of n encodes every n-th missing clip and caption; afterwards all are there for all."""
    from k5tune.cache.stage import run_cache_stage
    from k5tune.cache.store import TensorStore
    from k5tune.runtime import Runtime

    folder = make_project(tmp_path, tiny_model_dir, {})
    monkeypatch.chdir(folder)
    loaded = load_config()
    runtime = Runtime.detect("no", "cpu")
    # Two processes start together and both see an empty cache. Here they run one after the other, so
    # the second must not see the first one's entries while it decides what is missing.
    with monkeypatch.context() as patch:
        patch.setattr(Dist, "barrier", lambda self: None)
        patch.setattr(TensorStore, "verified", lambda self, key: False)
        patch.setattr(TensorStore, "problem", lambda self, key: "missing")
        first = run_cache_stage(loaded, runtime, dist=Dist(rank=0, world=2)).cache
        second = run_cache_stage(loaded, runtime, dist=Dist(rank=1, world=2)).cache
    assert (first.encoded_latents, second.encoded_latents) == (2, 2)  # 4 clips, half each
    assert first.encoded_captions + second.encoded_captions == len(first.text_keys)
    after = run_cache_stage(loaded, runtime).cache  # one process afterwards: everything is there
    assert (after.encoded_latents, after.encoded_captions) == (0, 0)
    assert EMPTY_CAPTION in after.text_keys


@pytest.mark.slow
def test_two_processes_with_group_offload_equal_one_process(tmp_path, monkeypatch, tiny_model_dir):
    """Each process offloads its own copy of the blocks (the wizard's Pro preset on several small cards):
    still the LoRA of one process with the same global batch."""
    quiet = {**RUN, "disable_validation": True, "gradient_checkpointing_policy": "full"}
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**quiet, "train_batch_size": 2}, monkeypatch)
    got = train_lora_on_two_processes(tmp_path / "double", tiny_model_dir, {
        **quiet, "enable_group_offload": True, "group_offload_use_stream": True}, monkeypatch)
    assert_same_training_across_processes(got, expected)


@pytest.mark.slow
def test_two_processes_route_tread_tokens_as_one_process(tmp_path, monkeypatch, tiny_model_dir):
    """Each sample draws its TREAD routing from its own generator, so a sample routes the same tokens
    whichever process trains it: two processes still train the LoRA of one."""
    tread = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -1}]}
    routed = {**RUN, "disable_validation": True, "tread_config": tread}
    expected = train_lora(tmp_path / "single", tiny_model_dir, {**routed, "train_batch_size": 2}, monkeypatch)
    got = train_lora_on_two_processes(tmp_path / "double", tiny_model_dir, routed, monkeypatch)
    assert_same_training_across_processes(got, expected)
