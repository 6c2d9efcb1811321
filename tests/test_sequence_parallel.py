"""Sequence parallelism (`sequence_parallel_size`) on the CPU with gloo processes: each clip's tokens split
over a group, and the run trains what one process trains with the same global batch (loss, gradient
norm and LoRA), alone, on a 2-D mesh (data x sequence), with FSDP2 and under NABLA; multi-node launch
with two local "nodes"; and the combinations it cannot take refused before any work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.errors import ConfigError
from k5tune.train.metrics import read_metrics
from k5tune.train.plan import TrainingPlan
from k5tune.workflow import train
from tests.helpers import BF16_ROUNDED, ROUNDING_APART, assert_same_training_across_processes, make_project

# adam_epsilon far above every gradient makes AdamW a plain gradient step (lr * g / eps): the LoRA then
# carries the summed gradients, so comparing LoRAs compares gradients (AdamW's normalisation would blow
# near-zero gradients' rounding up to whole steps)
RUN = {"max_train_steps": 3, "adam_epsilon": 1.0, "learning_rate": 1.0, "adam_weight_decay": 0.0,
       "checkpointing_steps": 10, "lr_scheduler": "constant", "disable_validation": True}
NABLA_CLIPS = {"resolution": 256, "video": {"num_frames": 5}}  # 256x384: NABLA's 8x8-patch blocks tile


def _single(folder: Path, model_dir: str, config: dict, monkeypatch, datasets: dict | None = None):
    monkeypatch.chdir(make_project(folder, model_dir, config, datasets=datasets))
    return train(load_config()).output_dir


def _launched(folder: Path, model_dir: str, config: dict, monkeypatch, datasets: dict | None = None) -> Path:
    """`k5tune train` with num_processes in the config (k5tune starts them: torchrun, gloo)."""
    monkeypatch.chdir(make_project(folder, model_dir, config, datasets=datasets))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train"]) == 0
    return folder / "output"


def assert_trains_as(got: Path, expected: Path) -> None:
    """The same losses and gradient norms step by step, and the same LoRA."""
    rows, reference = read_metrics(got / "metrics.csv"), read_metrics(expected / "metrics.csv")
    assert len(rows) == len(reference) == RUN["max_train_steps"]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in reference], rel=ROUNDING_APART), key
    name = "pytorch_lora_weights.safetensors"
    assert_same_training_across_processes(load_file(got / name), load_file(expected / name))


@pytest.mark.parametrize("numerics", ["exact", "stock"])
def test_one_step_is_the_one_process_step(tmp_path, tiny_model_dir, numerics):
    """Two gloo processes (tests/sequence_parallel_worker.py): the loss and every LoRA gradient of a step
    with both clips' tokens split over them, against the whole step; fp32-exact with the bf16 rounding of
    the rotated queries and keys off, and within its step with it (the stock numerics)."""
    out = tmp_path / "errors.json"
    worker = Path(__file__).with_name("sequence_parallel_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
               tiny_model_dir, str(out)] + (["exact"] if numerics == "exact" else [])
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    result = json.loads(out.read_text())
    assert result["same_keys"] and len(result["errors"]) == 40  # 4 targets x (A, B) x 5 attentions
    assert result["loss"][1] == pytest.approx(result["loss"][0], rel=1e-6)
    for name, error in result["errors"].items():
        rounded = numerics == "stock" and (".to_query." in name or ".to_key." in name)
        assert error < (BF16_ROUNDED if rounded else 1e-5), (name, error)


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["data-parallel", "fsdp2"])
def test_two_processes_share_each_clip_and_train_as_one(tmp_path, monkeypatch, tiny_model_dir, capfd, sharded):
    expected = _single(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2}, monkeypatch)
    # both processes train both clips of every batch, each holding half of their tokens (and, with FSDP2,
    # half of every block)
    got = _launched(tmp_path / "split", tiny_model_dir, {**RUN, "train_batch_size": 2, "num_processes": 2,
                                                          "sequence_parallel_size": 2, "fsdp_enable": sharded},
                    monkeypatch)
    assert "each clip's tokens split over 2 processes" in capfd.readouterr().out
    assert_trains_as(got, expected)


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["data-parallel", "fsdp2"])
def test_four_processes_as_two_data_by_two_sequence(tmp_path, monkeypatch, tiny_model_dir, sharded):
    """A 2 x 2 mesh: two data-parallel groups (one clip each) of two processes sharing its tokens; with
    FSDP2 the transformer is sharded over all four."""
    expected = _single(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2}, monkeypatch)
    got = _launched(tmp_path / "mesh", tiny_model_dir, {**RUN, "train_batch_size": 1, "num_processes": 4,
                                                         "sequence_parallel_size": 2, "fsdp_enable": sharded},
                    monkeypatch)
    assert_trains_as(got, expected)


@pytest.mark.slow
def test_sequence_parallel_under_nabla(tmp_path, monkeypatch, tiny_nabla_dir):
    """Each process builds the NABLA mask of its heads from every token: the one-process masks."""
    config = {**RUN, "train_batch_size": 1, "max_train_steps": 3}
    expected = _single(tmp_path / "single", tiny_nabla_dir, config, monkeypatch, NABLA_CLIPS)
    got = _launched(tmp_path / "split", tiny_nabla_dir, {**config, "num_processes": 2, "sequence_parallel_size": 2},
                    monkeypatch, NABLA_CLIPS)
    assert_trains_as(got, expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_command(launcher: str, rank: int, port: int) -> list[str]:
    """One "node"'s launch of `k5tune train`: one process on it, two nodes, a static rendezvous."""
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "k5tune.cli", "train"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines=2",
            f"--machine_rank={rank}", "--num_processes=2", "--main_process_ip=127.0.0.1",
            f"--main_process_port={port}", "--mixed_precision=no", "--dynamo_backend=no", "-m", "k5tune.cli", "train"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_nodes(tmp_path, monkeypatch, tiny_model_dir, launcher):
    """Two launchers, one per "node" (torchrun --nnodes 2 --node_rank; accelerate launch --num_machines 2
    --machine_rank), one process each, a shared folder: the run trains as one process with their global
    batch."""
    expected = _single(tmp_path / "single", tiny_model_dir, {**RUN, "train_batch_size": 2}, monkeypatch)
    folder = make_project(tmp_path / "nodes", tiny_model_dir, {**RUN, "train_batch_size": 1})
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    nodes = [subprocess.Popen(_node_command(launcher, rank, port), cwd=folder, env=env) for rank in (0, 1)]
    assert [node.wait(timeout=600) for node in nodes] == [0, 0]
    assert_trains_as(folder / "output", expected)


def test_what_cannot_be_split_is_refused_before_any_work(tmp_path, monkeypatch, tiny_model_dir):
    assert TrainingPlan(sequence_parallel=2).problems() == []
    refused = TrainingPlan(sequence_parallel=2, tread=((0.5, 0, 1),), crepa_block=1, fused_kernels=False)
    assert [key for key, _ in refused.problems()] == ["sequence_parallel_size"] * 3
    assert "tread_config" in refused.problems()[0][1] and "crepa_enabled" in refused.problems()[1][1]
    from k5tune.train.sequence import check_sequence_parallel

    monkeypatch.chdir(make_project(tmp_path, tiny_model_dir, {"sequence_parallel_size": 4}))
    with pytest.raises(ConfigError, match="key 'sequence_parallel_size'.*4 must divide the number of processes \\(6\\)"):
        check_sequence_parallel(load_config().train, 4, 6)
    # the tiny model has 6 heads: 4 cannot split them, and the message lists what can
    with pytest.raises(ConfigError, match="key 'sequence_parallel_size'.*4 does not divide the model's 6 attention "
                                          "heads.*valid: 2, 3, 6"):
        check_sequence_parallel(load_config().train, 4, 8)
    with pytest.raises(ConfigError, match="key 'sequence_parallel_size'.*lora_dropout"):
        check_sequence_parallel(load_config("config/config.json", {"lora_dropout": 0.1}).train, 2, 2)
    # each bucket's tokens must split: 17 frames at 48x64 are 5 x 3 x 4 = 60 tokens
    from k5tune.data.records import Bucket
    from k5tune.train.sequence import check_token_split

    check_token_split({Bucket(64, 48, 17)}, 2)
    with pytest.raises(ConfigError, match="key 'sequence_parallel_size'.*7 must divide.*64x48@17"):
        check_token_split({Bucket(64, 48, 17), Bucket(128, 128, 17)}, 7)
    # k5tune train stops before any work (exit 2, one line naming the key)
    monkeypatch.chdir(make_project(tmp_path / "run", tiny_model_dir, {"sequence_parallel_size": 2, "tread_config": {
        "routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 1}]}}))
    assert main(["train"]) == 2
    assert not (tmp_path / "run" / "cache").exists()
