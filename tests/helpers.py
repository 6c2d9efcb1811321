"""What several test modules share: projects on the tiny model, training runs and their LoRAs,
comparisons, fault stand-ins, the web UI's server under test. Test modules import from here, never from each other."""

from __future__ import annotations

import copy
import csv
import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import k5tune.train.activation_offload as activation_offload
from k5tune.cli import main
from k5tune.config import load_config
from k5tune.data.synthetic import write_demo_dataset
from k5tune.lora.adapter import add_lora
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts
from k5tune.progress import SilentProgress
from k5tune.runtime import Runtime
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan
from k5tune.train.step import flow_matching_step_loss
from k5tune.workflow import train

# --- projects and runs ----------------------------------------------------------------------------------

def make_project(folder: Path, model_dir: str, config: dict, clips: int = 4, datasets: dict | None = None) -> Path:
    write_demo_dataset(folder / "datasets" / "videos", n=clips, frames=24, width=64, height=48)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    base = {"pretrained_model_name_or_path": model_dir, "report_to": "none", "output_dir": "output",
            "learning_rate": 1e-3, "lr_warmup_steps": 0, "lora_rank": 4, "seed": 7}
    (folder / "config" / "config.json").write_text(json.dumps({**base, **config}))
    backend = {"id": "clips", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 48,
               "video": {"num_frames": 17}, **(datasets or {})}
    (folder / "config" / "multidatabackend.json").write_text(json.dumps(
        [backend, {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"}]))
    return folder


def train_until_crash(monkeypatch, after_steps: int, reason: str = "power cut") -> None:
    """`train` on the project in the current folder, crashing (RuntimeError) once `after_steps` steps are
    done, before the next one; training is left as it was for the resume that follows."""
    from k5tune.train import trainer

    real_step = trainer.Trainer.train_step

    def crash(self, group):
        if self.step == after_steps:
            raise RuntimeError(reason)
        return real_step(self, group)

    monkeypatch.setattr(trainer.Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match=reason):
        train(load_config())
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)


def train_lora(folder: Path, model_dir: str, config: dict, monkeypatch,
               datasets: dict | None = None) -> dict[str, torch.Tensor]:
    """Make a project, train it in this process and return its LoRA."""
    monkeypatch.chdir(make_project(folder, model_dir, config, datasets=datasets))
    return load_file(train(load_config()).lora_path)


def lora_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    """Relative L2 error of every LoRA tensor (the same keys are required)."""
    assert got.keys() == expected.keys()
    return {key: ((got[key] - expected[key]).norm() / expected[key].norm().clamp(min=1e-12)).item() for key in expected}


def make_i2v_project(folder: Path, model_dir: str, config: dict) -> Path:
    write_demo_dataset(folder / "datasets" / "videos", n=2, frames=24, width=48, height=32)
    (folder / "config").mkdir(parents=True, exist_ok=True)
    base = {"model_flavour": "i2v-lite-5s", "pretrained_model_name_or_path": model_dir, "report_to": "none",
            "output_dir": "output", "learning_rate": 1e-3, "lora_rank": 4, "max_train_steps": 2,
            "validation_prompt": "a red circle moving to the right", "validation_steps": 10,
            "validation_resolution": "32x48", "validation_num_video_frames": 17, "validation_num_inference_steps": 3}
    (folder / "config" / "config.json").write_text(json.dumps({**base, **config}))
    (folder / "config" / "multidatabackend.json").write_text(json.dumps([
        {"id": "clips", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 32,
         "video": {"num_frames": 17}},
        {"id": "text", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ]))
    return folder


# --- checkpoints and interruptions ----------------------------------------------------------------

CHECKPOINT_RUN = {"max_train_steps": 6, "train_batch_size": 1, "checkpointing_steps": 2, "checkpoints_total_limit": 10,
       "lora_dropout": 0.1, "lr_scheduler": "cosine", "lr_warmup_steps": 1}


class InterruptAt(SilentProgress):
    """Sends this process SIGINT (or SIGTERM) right after optimizer step `step`, like a user pressing
    Ctrl-C or a scheduler stopping the job."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        self.target, self.done, self.signum = step, 0, signum

    def advance(self, n: int = 1, **info) -> None:
        if "loss" not in info:  # caching progress, not a training step
            return
        self.done += n
        if self.done == self.target:
            os.kill(os.getpid(), self.signum)


def lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# adam_epsilon: ROUNDING_APART below — it keeps Adam from turning float noise in near-zero
# gradients (the offloaded blocks sum their gradients in another order) into whole +-lr steps.
OFFLOAD_RUN = {"max_train_steps": 3, "train_batch_size": 2, "lora_rank": 4, "checkpointing_steps": 100, "adam_epsilon": 1e-4,
       "validation_prompt": "a red circle moving to the right", "validation_steps": 100,
       "validation_resolution": "32x48", "validation_num_video_frames": 5, "validation_num_inference_steps": 2}


# --- several processes ----------------------------------------------------------------------------------

DISTRIBUTED_RUN = {"max_train_steps": 3, "lora_rank": 4, "adam_epsilon": 1e-4, "checkpointing_steps": 2, "report_to": "tensorboard",
       "validation_prompt": "a red circle moving to the right", "validation_steps": 100,
       "validation_resolution": "32x48", "validation_num_video_frames": 5, "validation_num_inference_steps": 2}


def train_lora_on_two_processes(folder, model_dir: str, config: dict, monkeypatch, datasets: dict | None = None) -> dict:
    """Make a project and train it with `num_processes: 2` (k5tune starts them: torchrun, gloo), one
    clip per process; returns the LoRA."""
    monkeypatch.chdir(make_project(folder, model_dir, {**config, "train_batch_size": 1, "num_processes": 2},
                                   datasets=datasets))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train"]) == 0
    return load_file(folder / "output" / "pytorch_lora_weights.safetensors")


# --- faults -------------------------------------------------------------------------------------------------

class InfiniteGradient(torch.autograd.Function):
    """The loss passes through unchanged; its gradient comes back infinite."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _FailingWriter:
    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


class FullDisk:
    """Stands in for atomic.open_for_writing: a file whose (temporary) path contains `where`, or for which
    `where(path)` is true, fails with ENOSPC once 64 bytes are written, as a write to a full disk does."""

    def __init__(self, real, where):
        self.real = real
        self.matches = where if callable(where) else (lambda path: where in str(path))

    def __call__(self, path: Path):
        handle = self.real(path)
        return _FailingWriter(handle) if self.matches(Path(path)) else handle


# --- the step on the tiny transformer -------------------------------------------------------------------

def record_stashed_shapes(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the tensors moved to CPU memory from now on (by either offload path), in order."""
    stashed: list[tuple[int, ...]] = []
    original = activation_offload.StashedTensor.__init__

    def counting_init(self, tensor, stream, arena=None):
        stashed.append(tuple(tensor.shape))
        original(self, tensor, stream, arena)

    monkeypatch.setattr(activation_offload.StashedTensor, "__init__", counting_init)
    return stashed


def tiny_with_live_lora(tiny_model_dir):
    """The tiny transformer with LoRA on attention and feed-forward, B randomised so every LoRA weight
    gets a gradient."""
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    add_lora(transformer, 8, 16, 0.0, ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], seed=0)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in transformer.named_parameters():
        if ".lora_B" in name:
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    return transformer


def loss_and_grads(transformer, dtype, route_generator: torch.Generator | None = None):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 3, 4, 6, 16, generator=generator)
    text = pad_prompts([torch.randn(4, 32, generator=generator), torch.randn(7, 32, generator=generator)],
                       [torch.randn(32, generator=generator), torch.randn(32, generator=generator)])
    noise = torch.randn(latents.shape, generator=generator)
    runtime = Runtime(torch.device("cpu"), dtype, dtype, dtype)
    from k5tune.models.kandinsky5.text_mask import install_text_mask

    install_text_mask(transformer)
    loss = flow_matching_step_loss(transformer, latents, text, noise, torch.tensor([0.3, 0.8]), (32, 48), runtime,
                                   route_generator=route_generator)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in transformer.named_parameters() if p.grad is not None}


def eager_and_compiled_blocks(tiny_model_dir, checkpointing: str):
    """Two copies of `tiny_with_live_lora`: the eager fast path, and its blocks compiled with aot_eager
    (the graphs dynamo and AOTAutograd build for the GPU, checkpoint and selective policy inside,
    without code generation)."""
    eager = tiny_with_live_lora(tiny_model_dir)
    compiled = copy.deepcopy(eager)
    apply_speed_plan(eager, TrainingPlan(checkpointing=checkpointing, compile_kernels=False, compile_blocks=False))
    apply_speed_plan(compiled, TrainingPlan(checkpointing=checkpointing, compile_blocks=True, compile_backend="aot_eager"))
    return eager, compiled


# Two trainings that do the same maths in another order (offloaded blocks, two processes, a quantised
# base moved between devices) are fp32 rounding apart at each step (~1e-7 relative; on the CPU even the
# memory alignment of a weight picks another BLAS kernel and summation order). Three AdamW steps scale
# each gradient element by 1/sqrt(v): elements whose gradient is near zero turn their rounding noise
# into visible steps, damped by adam_epsilon 1e-4 in these runs. Measured over repeated full-suite runs,
# such pairs reached 1.1e-4 (offload) and 4.2e-4 (two processes) relative L2; a real difference in the
# maths (a lost gradient, a wrong mask, a skipped step) gives 1e-2 or more. The bound sits between.
ROUNDING_APART = 1e-3


def assert_same_training(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         bound: float = ROUNDING_APART) -> None:
    """The LoRA of a training that does the same maths in another order (see ROUNDING_APART)."""
    errors = lora_errors(got, expected)
    assert max(errors.values()) < bound, errors


# The stock attention rounds its rotated queries and keys to bf16 (k5tune keeps those numerics), and
# their gradients pass the same rounding back: a float-rounding difference upstream (gradients summed
# over processes or token chunks in another order) can move a query or key gradient by a bf16 step,
# 2^-8 relative, per element. LoRA on to_query / to_key is compared within two such steps
# (tests/test_sequence_parallel.py shows it exact once that rounding is off).
BF16_ROUNDED = 2**-7
# The rest moves with them: a flipped bf16 step in a layer's queries changes everything after it. How
# far depends on the machine's kernels (2-process trainings against one, 3 steps: 5e-5 on a developer's
# machine, up to 5.5e-4 on CI's, 2026-12-07), while a data-parallel fault moves the LoRA by ~0.5 (each
# process training the same clip: 0.67).
ROUNDING_APART_ACROSS = 4e-3


def assert_same_training_across_processes(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """assert_same_training for trainings whose gradients are summed in another order: the tensors behind
    the bf16-rounded queries and keys within BF16_ROUNDED, the rest within ROUNDING_APART_ACROSS."""
    assert got.keys() == expected.keys()
    rounded = {key for key in expected if ".to_query." in key or ".to_key." in key}
    for keys, bound in ((expected.keys() - rounded, ROUNDING_APART_ACROSS), (rounded, BF16_ROUNDED)):
        if keys:  # (a CREPA head file holds no query or key tensors)
            assert_same_training({k: got[k] for k in keys}, {k: expected[k] for k in keys}, bound)


def assert_same_steps(got_output: Path, expected_output: Path, rel: float = 1e-2) -> None:
    """The loss and gradient norm of every step (metrics.csv) within `rel`: Adam's update hardly moves when
    a gradient is scaled, so a mis-weighted gradient shows here, not in the LoRA."""
    def steps(output: Path) -> list[tuple[float, float]]:
        rows = list(csv.DictReader((output / "metrics.csv").open()))
        return [(float(r["loss"]), float(r["grad_norm"])) for r in rows]

    got, expected = steps(got_output), steps(expected_output)
    assert len(got) == len(expected)
    for step, ((loss, norm), (expected_loss, expected_norm)) in enumerate(zip(got, expected, strict=True), start=1):
        assert loss == pytest.approx(expected_loss, rel=rel), f"step {step} loss"
        assert norm == pytest.approx(expected_norm, rel=rel), f"step {step} grad norm"


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- the web UI's server ----------------------------------------------------------------------------


def model_root(root: Path) -> list[str]:
    """The tiny model's folder the project's config.json names (outside the project: the operator allows
    it, as `k5tune server --allow-root` does)."""
    try:
        named = json.loads((root / "config" / "config.json").read_text()).get("pretrained_model_name_or_path")
    except (OSError, ValueError):
        return []
    return [named] if named else []


@contextmanager
def serve(root: Path, **kwargs) -> Iterator:
    """The app under a TestClient (runs killed when it closes), the project's model folder allowed."""
    from fastapi.testclient import TestClient

    from k5tune.server.app import create_app

    kwargs.setdefault("allowed_roots", model_root(root))
    app = create_app(root, kill_runs_on_shutdown=True, **kwargs)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def write_config(root: Path, **changes) -> None:
    path = root / "config" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def read_events(client, run_id: int, stop: Callable[[str, dict], bool], timeout: float = 90.0,
                seen: list | None = None) -> list[tuple[str, dict]]:
    """SSE events of a run until stop(event, data) is true or the stream ends."""
    events = [] if seen is None else seen
    deadline = time.monotonic() + timeout
    event = None
    with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"no matching event in {timeout} s: {events[-5:]}"
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                data = json.loads(line[6:])
                events.append((event, data))
                if stop(event, data):
                    break
    return events


def wait_finished(client, run_id: int, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["finished"]:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s: {run['log_tail'][-5:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """The real app under uvicorn on a free localhost port, in a thread of the test process."""

    def __init__(self, root: Path, **kwargs):
        import uvicorn

        from k5tune.server.app import create_app

        self.port = free_port()
        kwargs.setdefault("allowed_roots", model_root(root))
        self.app = create_app(root, kill_runs_on_shutdown=True, **kwargs)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_until(page, script: str, timeout: float = 60.0) -> None:
    """Poll `script` (a JS function) in the page until it returns true. Not page.wait_for_function: that
    evaluates its predicate with eval, which the UI's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {script}"
        time.sleep(0.2)


def fake_nvidia_smi(folder: Path, monkeypatch) -> None:
    """An nvidia-smi on PATH that reports one H100 40 GiB full and 73 % busy."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 40960, 81920, 73'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
