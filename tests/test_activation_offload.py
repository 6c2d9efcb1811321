"""Activation offload of compiled blocks: what each block saves travels through CPU memory, the
checkpointing policy is kept, and training computes exactly what it computes without the offload."""

from __future__ import annotations

import copy

import pytest
import torch

import k5tune.train.activation_offload as activation_offload
import k5tune.train.speed as speed
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan
from tests.helpers import loss_and_grads, record_stashed_shapes, tiny_with_live_lora


def _compiled_pair(tiny_model_dir, checkpointing: str):
    torch._dynamo.reset()  # graphs compiled by other tests (another _CHEAP_KEYS) are not reused
    plain = tiny_with_live_lora(tiny_model_dir)
    moved = copy.deepcopy(plain)
    plan = TrainingPlan(checkpointing=checkpointing, compile_blocks=True, compile_backend="aot_eager")
    apply_speed_plan(plain, plan)
    apply_speed_plan(moved, TrainingPlan(checkpointing=checkpointing, compile_blocks=True, compile_backend="aot_eager",
                                      offload_activations=True))
    return plain, moved


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", ["selective", "full"])
def test_compiled_blocks_with_activation_offload_train_exactly_as_without(tiny_model_dir, monkeypatch, checkpointing):
    import torch._dynamo.utils

    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)  # the tiny model's tensors are small
    monkeypatch.setattr(speed, "_CHEAP_KEYS", 1)  # and its attention short: keep it all, as at full size
    stashed = record_stashed_shapes(monkeypatch)
    plain, moved = _compiled_pair(tiny_model_dir, checkpointing)
    plain_loss, plain_grads = loss_and_grads(plain.train(), torch.float32)
    assert not stashed
    for _ in range(2):
        torch._dynamo.utils.counters.clear()
        for parameter in moved.parameters():
            parameter.grad = None
        moved_loss, moved_grads = loss_and_grads(moved.train(), torch.float32)
    # the second step compiled nothing: each call's hooks are new functions, and dynamo does not guard on them
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0

    torch.testing.assert_close(moved_loss, plain_loss, rtol=0, atol=0)
    assert moved_grads.keys() == plain_grads.keys() and len(plain_grads) == 26 * 2
    for name in plain_grads:
        torch.testing.assert_close(moved_grads[name], plain_grads[name], rtol=0, atol=0, msg=name)

    # every block call moved its input (batch 2 x 18 visual tokens x 96 wide, and the 7 text tokens);
    # selective checkpointing also moved the attention outputs it keeps (batch x heads x tokens x head
    # dim: the self- and cross-attention of the 2 visual blocks, the text block's self-attention)
    assert stashed.count((2, 18, 96)) == 2 * 2 and stashed.count((2, 7, 96)) == 2
    attention_outputs = stashed.count((2, 6, 18, 16)) + stashed.count((2, 6, 7, 16))
    assert attention_outputs == (2 * (2 * 2 + 1) if checkpointing == "selective" else 0)


@pytest.mark.slow
def test_shared_inputs_and_weights_are_not_moved(tiny_model_dir, monkeypatch):
    """RoPE, the text and the time embedding live on beside every block; the frozen weights are the
    model's own: none of them is copied out."""
    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)
    # the tensors themselves are kept (not only their addresses), so no storage is freed and its address
    # reused by another tensor during the step: equal addresses then mean the same storage
    stashed: list[torch.Tensor] = []
    shared: list[torch.Tensor] = []
    original, original_around = activation_offload.StashedTensor.__init__, activation_offload.SavedActivationOffload.around

    def recording_init(self, tensor, stream, arena=None):
        stashed.append(tensor)
        original(self, tensor, stream, arena)

    def recording_around(self, block, args):
        shared.extend(a for a in args[1:] if isinstance(a, torch.Tensor))
        return original_around(self, block, args)

    monkeypatch.setattr(activation_offload.StashedTensor, "__init__", recording_init)
    monkeypatch.setattr(activation_offload.SavedActivationOffload, "around", recording_around)
    _, moved = _compiled_pair(tiny_model_dir, "selective")
    loss_and_grads(moved.train(), torch.float32)
    stashed_ids = {t.untyped_storage().data_ptr() for t in stashed}
    shared_ids = {t.untyped_storage().data_ptr() for t in shared}
    weights = {p.untyped_storage().data_ptr() for p in moved.parameters()}
    assert stashed_ids and shared_ids and not weights.intersection(stashed_ids)
    assert not shared_ids.intersection(stashed_ids)


def test_eager_blocks_leave_activation_offload_to_the_offloader(tiny_model_dir):
    transformer = tiny_with_live_lora(tiny_model_dir)
    eager = TrainingPlan(compile_kernels=False, compile_blocks=False, offload_activations=True)
    compiled = TrainingPlan(compile_blocks=True, compile_backend="aot_eager", offload_activations=True)
    assert not eager.offloads_through_hooks(on_gpu=False)
    assert compiled.offloads_through_hooks(on_gpu=False)
    assert not TrainingPlan(compile_blocks=True).offloads_through_hooks(on_gpu=False)
    del transformer


def test_pinned_arena_packs_stashes_into_reused_slabs():
    """Stashes sit side by side in whole slabs (no power-of-two rounding), keep their layout, and the
    next pass starts over in the same slabs once everything came back."""
    arena = activation_offload.PinnedArena(pin=False)
    arena.SLAB_BYTES = 64 * 1024
    hidden = torch.randn(2, 18, 96)  # 13,824 bytes
    attention = torch.randn(2, 18, 6, 16).transpose(1, 2)  # (batch, heads, tokens, dim), dense, not contiguous
    taken = [arena.take(hidden), arena.take(attention), arena.take(hidden), arena.take(hidden),
             arena.take(hidden)]
    assert [t.stride() for t in taken[:2]] == [hidden.stride(), attention.stride()]
    assert len(arena.slabs) == 2  # four 16 KiB-aligned stashes fill the first 64 KiB slab
    starts = [t.untyped_storage().data_ptr() + t.storage_offset() * 4 for t in taken]
    assert starts[1] - starts[0] == 16384 and starts[4] == arena.slabs[1].data_ptr()
    for t, source in zip(taken, [hidden, attention, hidden, hidden, hidden], strict=True):
        t.copy_(source)
        torch.testing.assert_close(t, source, rtol=0, atol=0)
    assert arena.new_pass() is not arena  # not everything came back: a pass whose backward did not run
    for _ in taken:
        arena.release()
    again = arena.new_pass()
    assert again is arena and arena.take(hidden).untyped_storage().data_ptr() == starts[0]


@pytest.mark.slow
def test_a_step_reuses_the_previous_steps_pinned_slabs(tiny_model_dir, monkeypatch):
    """Once a step's backward let go of its stashes, the next step stashes into the same slabs; a
    forward whose backward never ran keeps its slabs, and the next pass gets new ones."""
    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)
    _, moved = _compiled_pair(tiny_model_dir, "selective")
    offload = moved._k5_activation_offload
    loss_and_grads(moved.train(), torch.float32)
    arena = offload.arena
    slabs = [slab.data_ptr() for slab in arena.slabs]
    assert slabs and arena.outstanding > 0  # this pass's chain is kept until the next pass starts
    loss_and_grads(moved.train(), torch.float32)
    assert offload.arena is arena and [slab.data_ptr() for slab in arena.slabs] == slabs

    from k5tune.models.kandinsky5.model_input import pad_prompts  # a forward without backward
    from k5tune.runtime import Runtime
    from k5tune.train.step import flow_matching_step_loss

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 3, 4, 6, 16, generator=generator)
    text = pad_prompts([torch.randn(4, 32, generator=generator), torch.randn(7, 32, generator=generator)],
                       [torch.randn(32, generator=generator), torch.randn(32, generator=generator)])
    runtime = Runtime(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
    kept = flow_matching_step_loss(moved, latents, text, torch.randn(latents.shape, generator=generator),
                                   torch.tensor([0.3, 0.8]), (32, 48), runtime)
    loss_and_grads(moved.train(), torch.float32)
    assert offload.arena is not arena  # `kept`'s graph still holds its stashes in the old slabs
    assert torch.isfinite(kept)


@pytest.mark.slow
def test_k5tune_train_with_compiled_blocks_offloads_through_the_hooks(tmp_path, monkeypatch, tiny_model_dir):
    """The trainer's wiring as on a GPU (blocks compiled, here with aot_eager): `offload_activations`
    goes through the saved-tensor hooks, not the offloader's checkpoint, keeps selective checkpointing,
    and trains the LoRA that training without it trains."""
    from dataclasses import replace

    from k5tune.train import build
    from tests.helpers import OFFLOAD_RUN as RUN
    from tests.helpers import lora_errors, train_lora

    original_plan = TrainingPlan.from_config

    def compiled_plan(cfg, processes=1, nabla=None):  # the plan of a GPU run (TrainingPlan decides on the device)
        return replace(original_plan(cfg, processes, nabla), compile_blocks=True, compile_backend="aot_eager",
                       compile_kernels=False)

    monkeypatch.setattr(TrainingPlan, "from_config", staticmethod(compiled_plan))
    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)
    monkeypatch.setattr(speed, "_CHEAP_KEYS", 1)
    group_offloads: list[bool] = []
    monkeypatch.setattr(build, "enable_group_offload", lambda *a, **k: group_offloads.append(True))
    stashed = record_stashed_shapes(monkeypatch)
    settings = {**RUN, "gradient_checkpointing_policy": "selective", "disable_validation": True}
    expected = train_lora(tmp_path / "plain", tiny_model_dir, settings, monkeypatch)
    assert not stashed
    got = train_lora(tmp_path / "moved", tiny_model_dir, {**settings, "offload_activations": True}, monkeypatch)
    assert not group_offloads  # the hooks alone moved what the blocks saved
    assert any(len(shape) == 4 for shape in stashed)  # kept attention outputs too: selective stayed
    errors = lora_errors(got, expected)
    assert max(errors.values()) < 1e-5, errors


def test_training_warns_before_it_pins_more_cpu_memory_than_the_machine_has(tmp_path):
    """Pinned memory cannot be swapped out: a run that pins more than the machine has is killed in its
    first step. Before the model loads, training compares the estimate's pinned memory at its largest
    bucket (every process on the machine together) with the machine's memory, read from the kernel."""
    from k5tune.data.records import Bucket
    from k5tune.estimate import plan_from_config
    from k5tune.estimate.check import shipped_example
    from k5tune.estimate.preflight import pinned_memory_warning
    from k5tune.hostmem import HostMemory, host_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32823556 kB\nMemFree:         1048576 kB\nMemAvailable:   29360128 kB\n")
    no_cgroup = ((tmp_path / "none", tmp_path / "none"),)
    small = host_memory(meminfo, no_cgroup)
    assert (round(small.total_gib, 1), round(small.available_gib, 1), round(small.pinnable_gib, 1)) == (31.3, 28.0, 22.2)
    assert host_memory(tmp_path / "missing") is None
    # inside a container the limit counts, not the host's memory (cgroup v2: "max" is no limit)
    (tmp_path / "memory.max").write_text(f"{16 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{4 * 2**30}\n")
    limited = host_memory(meminfo, ((tmp_path / "memory.max", tmp_path / "memory.current"),))
    assert (limited.total_gib, limited.available_gib) == (16.0, 12.0)
    (tmp_path / "memory.max").write_text("max\n")
    assert host_memory(meminfo, ((tmp_path / "memory.max", tmp_path / "memory.current"),)) == small

    cfg = shipped_example(model_flavour="t2v-lite-sft-10s", offload_activations=True).train
    plan = plan_from_config(cfg)  # activation offload under NABLA: ~38 GiB pinned at 512x768x241
    buckets = {Bucket(768, 512, 241), Bucket(512, 512, 61)}
    assert "pin ~38 GiB of CPU memory, more than this machine can spare (31 GiB in all, ~22 GiB for pinning)" in \
        pinned_memory_warning(cfg, plan, buckets, small)
    assert pinned_memory_warning(cfg, plan, buckets, HostMemory(125.0, 100.0)) is None
    assert "more than is free now (30 GiB)" in pinned_memory_warning(cfg, plan, buckets, HostMemory(125.0, 30.0))
    assert "(38.0 GiB in each of 4 processes)" in pinned_memory_warning(cfg, plan, buckets, HostMemory(125.0, 100.0), 4)
    assert pinned_memory_warning(cfg, plan, {Bucket(768, 512, 61)}, small) is None  # a 61-frame clip pins ~9 GiB
    unpinned = plan_from_config(shipped_example(model_flavour="t2v-lite-sft-10s").train)
    assert pinned_memory_warning(cfg, unpinned, buckets, small) is None  # nothing offloaded, nothing pinned


def test_training_warns_before_it_starts_when_the_predicted_peak_exceeds_the_card(tmp_path):
    """The estimate (within 5 % of every H100 measurement) at the run's largest bucket against the card:
    Lite 10 s under NABLA with selective checkpointing (the shipped example: rank 32 on attention) is predicted at ~48.8 GiB, past a 48 GB card, and the
    warning names what fits there."""
    from k5tune.data.records import Bucket
    from k5tune.estimate import plan_from_config
    from k5tune.estimate.check import shipped_example
    from k5tune.estimate.preflight import gpu_memory_warning

    cfg = shipped_example(model_flavour="t2v-lite-sft-10s", lora_rank=32).train
    plan = plan_from_config(cfg)
    buckets = {Bucket(768, 512, 241), Bucket(768, 512, 61)}
    warning = gpu_memory_warning(cfg, plan, buckets, 47.5)
    assert "the estimate puts training at ~48.8 GiB" in warning and "(768x512@241), more than the card's 47.5 GiB" in warning
    assert 'What fits (selective checkpointing, activation offload' in warning
    assert '"offload_activations": true' in warning
    assert gpu_memory_warning(cfg, plan, buckets, 79.2) is None
    assert gpu_memory_warning(cfg, plan, {Bucket(768, 512, 61)}, 47.5) is None


def test_a_run_out_of_gpu_memory_ends_with_what_fits(tmp_path, monkeypatch, tiny_model_dir):
    """torch's out-of-memory error becomes k5tune's, keeping torch's first line: the card, the estimate at
    the largest bucket, and the config keys that fit, or, where the estimate expects the config to fit,
    what else takes memory (exit code 2, recorded as the run's failure)."""
    from k5tune import workflow
    from k5tune.config import load_config
    from k5tune.errors import OutOfGpuMemory
    from k5tune.train.trainer import Trainer
    from tests.helpers import make_project

    folder = make_project(tmp_path, tiny_model_dir, {"max_train_steps": 2, "model_flavour": "t2v-lite-sft-5s"},
                          datasets={"resolution": 48})
    monkeypatch.chdir(folder)

    def out_of_memory(self, stage):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "run", out_of_memory)
    monkeypatch.setattr(workflow, "card_gib", lambda device: 11.6)
    with pytest.raises(OutOfGpuMemory) as raised:
        workflow.train(load_config())
    message = str(raised.value)
    assert message.startswith("the run ran out of GPU memory (the card has 11.6 GiB; torch: CUDA out of memory. "
                              "Tried to allocate 2.00 GiB); the estimate puts this config at ~")
    assert "at its largest bucket (64x48@17)" in message
    # the estimate expects Lite's tiny clips to fit 11.6 GiB: something else took the memory
    assert "It expects training to fit, so something else took the memory" in message
    assert raised.value.exit_code == 2 and isinstance(raised.value.__cause__, torch.OutOfMemoryError)
    assert "resume_from_checkpoint: latest" in message
    # a card the config does not fit: what does
    monkeypatch.setattr(workflow, "card_gib", lambda device: 4.0)
    with pytest.raises(OutOfGpuMemory, match=r"at its largest bucket \(64x48@17\)\. What fits \(.*\): config.json: "):
        workflow.train(load_config())


def test_the_advice_names_the_shorter_side_of_a_portrait_clip():
    from k5tune.estimate.search import dataset_change
    from k5tune.estimate.shape import TrainingShape

    portrait = TrainingShape(768, 512, 241)
    assert dataset_change(portrait, TrainingShape(768, 512, 121)) == "video.num_frames 121"
    assert dataset_change(portrait, TrainingShape(768, 480, 49)) == "resolution 480, video.num_frames 49"
