"""NABLA sparse attention in training: the mask the pipeline builds, the same maths, its gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from k5tune.lora.adapter import add_lora
from k5tune.models.kandinsky5 import Kandinsky5Components, nabla, resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts, transformer_kwargs, with_conditioning_channels
from k5tune.runtime import Runtime
from k5tune.train.build import LoraSettings, build_training_model
from k5tune.train.plan import TrainingPlan
from k5tune.train.step import flow_matching_step_loss, step_scope

# 256x384 px -> latent 32x48 -> patched 16x24: 2x3 patches of 8x8 per frame, so the STA window (3x3
# patches) leaves some blocks out; P 0.5 makes the pooled-map part sparse too
PIXELS = (256, 384)
LATENT = (1, 2, 32, 48, 16)
SETTINGS = nabla.NablaSettings(P=0.5, wT=11, wH=3, wW=3)


def _transformer(model_dir: str):
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-10s", model_dir)).transformer()
    transformer.register_to_config(**SETTINGS.transformer_config())
    return transformer


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(LATENT, generator=generator)
    text = pad_prompts([torch.randn(5, 32, generator=generator)], [torch.randn(32, generator=generator)])
    return latents, text, torch.randn(LATENT, generator=generator)


def _record_masks(monkeypatch, module) -> list:
    masks = []
    real = module.nablaT_v2 if hasattr(module, "nablaT_v2") else module.block_mask

    def recording(*args, **kwargs):
        masks.append(real(*args, **kwargs))
        return masks[-1]

    monkeypatch.setattr(module, "nablaT_v2" if hasattr(module, "nablaT_v2") else "block_mask", recording)
    return masks


def _reference_attention(query, key, value, attn_mask=None, **_):
    """Plain masked SDPA with the block mask expanded to tokens: what compiled FlexAttention computes (and
    the official Kandinsky 5 code runs). (diffusers calls FlexAttention uncompiled, whose eager fallback
    ignores the block sparsity of a mask without mask_mod and computes dense attention.)"""
    dense = None if attn_mask is None else attn_mask.to_dense().bool().repeat_interleave(64, -2).repeat_interleave(64, -1)
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         attn_mask=dense)
    return out.transpose(1, 2)


def _flex_reference(model_dir: str):
    """The diffusers transformer as the pipeline runs it: its processors on the flex backend (the only one
    that takes a BlockMask), NABLA settings in its config."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    reference = _transformer(model_dir)
    for module in reference.modules():
        if hasattr(module, "processor"):
            module.processor._attention_backend = AttentionBackendName.FLEX
    return reference


@pytest.mark.parametrize("fused", [False, True], ids=["stock-qk", "fused-qk"])
def test_each_layer_builds_the_pipelines_mask_bit_for_bit(tiny_nabla_dir, monkeypatch, fused):
    """Given a layer's input, our processor builds exactly the mask diffusers' processor builds (the same
    queries and keys, then diffusers' own nablaT_v2), also when it wraps the fast path's processor and
    makes the queries and keys with its fused RMSNorm + RoPE kernel."""
    from diffusers.models.transformers import transformer_kandinsky

    from k5tune.models.kandinsky5 import fast

    latents, text, _ = _inputs()
    reference = _flex_reference(tiny_nabla_dir)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # (a new model's q/k norms are all ones: make each one its own)
        for block in reference.visual_transformer_blocks:
            for norm in (block.self_attention.query_norm, block.self_attention.key_norm):
                norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator))
    inputs = []  # each visual self-attention's (hidden states, rope) in the reference forward
    for block in reference.visual_transformer_blocks:
        block.self_attention.register_forward_pre_hook(
            lambda module, args, kwargs: inputs.append((args[0].clone(), kwargs["rotary_emb"])), with_kwargs=True)
    params = nabla.sparse_params((2, 16, 24), SETTINGS, torch.device("cpu"))
    kwargs = transformer_kwargs(reference, with_conditioning_channels(latents), text, torch.tensor([0.6]), PIXELS)
    masks = _record_masks(monkeypatch, transformer_kandinsky)
    with torch.no_grad():  # (FlexAttention has no backward on the CPU)
        reference(**kwargs, sparse_params=params, return_dict=False)
    expected = list(masks)
    ours = nabla.NablaAttnProcessor(dense=fast.FastAttnProcessor() if fused else None)
    fused_calls = []
    real_norm_rope = fast._kernels["norm_rope"]
    monkeypatch.setitem(fast._kernels, "norm_rope", lambda *args: fused_calls.append(1) or real_norm_rope(*args))
    attended = []  # the mask our attention ran under (held as partial blocks)
    real_attention = nabla.attention
    monkeypatch.setattr(nabla, "attention", lambda q, k, v, mask, *rest: attended.append(mask)
                        or real_attention(q, k, v, mask, *rest))
    for block, (hidden, rope), theirs in zip(reference.visual_transformer_blocks, inputs, expected, strict=True):
        masks.clear()
        attended.clear()
        with torch.no_grad():
            ours(block.self_attention, hidden, rotary_emb=rope, sparse_params=params)
        assert torch.equal(masks[0].to_dense(), theirs.to_dense())
        assert torch.equal(attended[0].to_dense(), theirs.to_dense())
    assert len(fused_calls) == (2 * len(expected) if fused else 0)  # queries and keys of each layer
    assert 0.2 < nabla.density(expected[0]) < 1.0  # really sparse, not empty


@pytest.mark.parametrize("fused", [True, False], ids=["fused-blocks", "stock-blocks"])
def test_our_forward_computes_what_diffusers_computes(tiny_nabla_dir, monkeypatch, fused):
    """The whole forward (fractal order, our blocks, the sparse attention) against diffusers' forward with
    the pipeline's sparse_params and the reference sparse attention, each layer given the reference's
    mask. (The masks themselves are equal given equal inputs, above; but a mask is a step function of
    its layer's input, and CPU float noise, e.g. the rounding of a copy of the model whose tensors sit at
    other addresses, 7e-7 here, can flip a block sitting at the P threshold.)"""
    from diffusers.models.transformers import transformer_kandinsky

    latents, text, _ = _inputs()
    sigmas = torch.tensor([0.6])
    reference = _transformer(tiny_nabla_dir)
    monkeypatch.setattr(transformer_kandinsky, "dispatch_attention_fn", _reference_attention)
    ours = copy.deepcopy(reference)
    params = nabla.sparse_params((2, 16, 24), SETTINGS, torch.device("cpu"))
    kwargs = transformer_kwargs(reference, with_conditioning_channels(latents), text, sigmas, PIXELS)
    masks = _record_masks(monkeypatch, transformer_kandinsky)
    with torch.no_grad():
        expected = reference(**kwargs, sparse_params=params, return_dict=False)
    replay = list(masks)
    build_training_model(ours, TrainingPlan(fused_kernels=fused, compile_kernels=False, nabla=SETTINGS),
                         LoraSettings(4, 4, ("to_query",)), Runtime.detect("no", "cpu"))
    monkeypatch.setattr(nabla, "block_mask", lambda query, key, params: replay.pop(0))
    ours.eval()
    with torch.no_grad():
        got = ours(**transformer_kwargs(ours, with_conditioning_channels(latents), text, sigmas, PIXELS),
                   return_dict=False)
    assert not replay
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_lora_gradients_equal_a_plain_masked_reference(tiny_nabla_dir, monkeypatch):
    from diffusers.models.transformers import transformer_kandinsky

    latents, text, noise = _inputs(1)
    sigmas = torch.tensor([0.4])
    runtime = Runtime.detect("no", "cpu")
    targets = ("to_query", "to_key", "to_value", "out_layer")
    reference = _transformer(tiny_nabla_dir)
    ours = copy.deepcopy(reference)
    add_lora(reference, 4, 4, 0.0, list(targets), seed=0)
    monkeypatch.setattr(transformer_kandinsky, "dispatch_attention_fn", _reference_attention)
    reference.train()
    params = nabla.sparse_params((2, 16, 24), SETTINGS, torch.device("cpu"))
    kwargs = transformer_kwargs(reference, with_conditioning_channels(latents), text, sigmas, PIXELS)
    from k5tune.train import objective

    noisy = with_conditioning_channels(objective.add_noise(latents, noise, sigmas))
    kwargs["hidden_states"] = noisy
    masks = _record_masks(monkeypatch, transformer_kandinsky)
    prediction = reference(**kwargs, sparse_params=params, return_dict=False)
    objective.flow_matching_loss(prediction, objective.velocity_target(latents, noise)).backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}

    plan = TrainingPlan(checkpointing="full", compile_kernels=False, nabla=SETTINGS)
    model = build_training_model(ours, plan, LoraSettings(4, 4, targets), runtime)
    replay = list(masks)  # each layer under the reference's mask (see the forward test)
    monkeypatch.setattr(nabla, "block_mask", lambda query, key, params: replay.pop(0))
    with step_scope(ours):
        flow_matching_step_loss(ours, latents, text, noise, sigmas, PIXELS, runtime).backward()
    got = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert not replay  # one mask per layer: the checkpointed recomputation reused the forward's
    assert set(got) == set(expected) and len(got) == len(model.params)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_training_step_builds_each_layers_mask_once(tiny_nabla_dir, monkeypatch):
    """Forward and the checkpointed recomputation in backward share the mask: two builds for two layers."""
    latents, text, noise = _inputs(2)
    ours = _transformer(tiny_nabla_dir)
    runtime = Runtime.detect("no", "cpu")
    build_training_model(ours, TrainingPlan(checkpointing="full", compile_kernels=False, nabla=SETTINGS),
                         LoraSettings(4, 4, ("to_query",)), runtime)
    built = _record_masks(monkeypatch, nabla)
    with step_scope(ours):
        flow_matching_step_loss(ours, latents, text, noise, torch.tensor([0.5]), PIXELS, runtime).backward()
    assert len(built) == 2
    processors = [block.self_attention.processor for block in ours.visual_transformer_blocks]
    assert all(p.mask is None and not p.sharing for p in processors)  # nothing kept after the step


# Point 4's combinations: the same mask, built once per layer per step, whatever moves the weights or
# the activations (tests/test_sequence_parallel.py covers sequence parallelism under NABLA).
_UNDER = {"full checkpointing": {"checkpointing": "full"},
          "group offload": {"group_offload_blocks": 1},
          "activation offload": {"offload_activations": True},
          "group and activation offload": {"group_offload_blocks": 1, "offload_activations": True},
          "int8 base": {"base_precision": "int8"}, "fp8 base": {"base_precision": "fp8"}}


@pytest.mark.parametrize("under", list(_UNDER))
def test_nabla_trains_alike_under_offload_and_a_quantised_base(tiny_nabla_dir, monkeypatch, under):
    """Each layer builds its mask once a step (the offloader's checkpoint recomputes blocks whole and
    reuses it), offloaded runs give the plain step's LoRA gradients, and over an int8/fp8 base the sparse
    step trains (finite gradients, the loss near the bf16 base's)."""
    latents, text, noise = _inputs(4)
    runtime = Runtime.detect("no", "cpu")
    lora = LoraSettings(4, 4, ("to_query", "to_key", "to_value", "out_layer", "feed_forward"))
    results = []
    for changes in ({}, _UNDER[under]):
        if changes.get("base_precision"):
            pytest.importorskip("torchao")
        model = _transformer(tiny_nabla_dir)
        build_training_model(model, TrainingPlan(**{"checkpointing": "selective", **changes}, compile_kernels=False,
                                                 nabla=SETTINGS), lora, runtime)
        built = _record_masks(monkeypatch, nabla)
        with step_scope(model):
            loss = flow_matching_step_loss(model, latents, text, noise, torch.tensor([0.45]), PIXELS, runtime)
            loss.backward()
        assert len(built) == 2  # the two visual layers, forward and recomputation alike
        monkeypatch.undo()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (loss, got) = results
    assert set(got) == set(plain) and len(got) == 26 * 2  # every adapted module's A and B
    if "base" in under:
        assert all(torch.isfinite(g).all() for g in got.values())
        assert loss.item() == pytest.approx(plain_loss.item(), rel=0.05)
        return
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=1e-5)
    for name, expected in plain.items():
        torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_two_processes_train_nabla_as_one_data_parallel_and_sharded(tmp_path, monkeypatch, tiny_nabla_dir):
    """DDP and FSDP2 under NABLA (each process builds the masks of its own clips): the LoRA of one process
    with the same global batch."""
    import json

    from tests.helpers import (
        DISTRIBUTED_RUN,
        assert_same_training_across_processes,
        train_lora,
        train_lora_on_two_processes,
    )

    config = {**DISTRIBUTED_RUN, "lr_scheduler": "constant", "disable_validation": True, "checkpointing_steps": 10}
    expected = train_lora(tmp_path / "single", tiny_nabla_dir, {**config, "train_batch_size": 2}, monkeypatch,
                          NABLA_DATA)
    for name, sharded in (("ddp", False), ("fsdp2", True)):
        got = train_lora_on_two_processes(tmp_path / name, tiny_nabla_dir, {**config, "fsdp_enable": sharded},
                                          monkeypatch, NABLA_DATA)
        assert_same_training_across_processes(got, expected)
        events = [json.loads(line) for line in (tmp_path / name / "output" / "events.jsonl").read_text().splitlines()]
        plan = next(e["plan"] for e in events if e.get("event") == "training")
        assert "NABLA (P 0.9" in plan and ("FSDP2 over 2" in plan) == sharded, plan


def test_tiling_and_settings():
    assert nabla.tiling_problem(512, 768) is None
    assert "multiples of 128" in nabla.tiling_problem(480, 848)
    assert nabla.nearest_tiling_sizes(480, 848) == ["384x768", "384x896", "512x768", "512x896"]
    config = {"attention_type": "nabla", "attention_P": 0.8, "attention_wT": 7}
    assert nabla.NablaSettings.from_transformer_config(config) == nabla.NablaSettings(P=0.8, wT=7)
    assert nabla.NablaSettings.from_transformer_config({"attention_type": "regular"}) is None
    assert TrainingPlan(nabla=SETTINGS, tread=((0.5, 1, 2),)).problem().startswith("tread_config cannot")


# --- k5tune train on a NABLA checkpoint ----------------------------------------------------------------

NABLA_RUN = {"max_train_steps": 2, "train_batch_size": 1, "validation_prompt": "a red circle moving right",
             "validation_resolution": "256x384", "validation_num_video_frames": 5, "validation_num_inference_steps": 2,
             "validation_steps": 100, "checkpointing_steps": 100}
NABLA_DATA = {"resolution": 256, "video": {"num_frames": 5}}


def _dry_run(monkeypatch, capsys, folder, *extra) -> dict:
    from k5tune.cli import main

    monkeypatch.chdir(folder)
    assert main(["train", "--dry-run", *extra]) == 0
    import json

    return json.loads(capsys.readouterr().out)["derived"]["attention"]


def test_the_attention_follows_the_checkpoint_and_can_be_switched(tmp_path, monkeypatch, capsys, tiny_nabla_dir,
                                                                  tiny_model_dir):
    from tests.helpers import make_project

    nabla_project = make_project(tmp_path / "nabla", tiny_nabla_dir, NABLA_RUN, datasets=NABLA_DATA)
    attention = _dry_run(monkeypatch, capsys, nabla_project)
    assert attention["attention"] == "nabla" and attention["from"].startswith("the checkpoint")
    assert attention["threshold_P"] == 0.9 and attention["sta_window"] == "11x3x3"
    tuned = _dry_run(monkeypatch, capsys, nabla_project, "--nabla_threshold", "0.7", "--nabla_window", "5x3x3")
    assert tuned["threshold_P"] == 0.7 and tuned["sta_window"] == "5x3x3" and "nabla_threshold" in tuned["from"]
    assert _dry_run(monkeypatch, capsys, nabla_project, "--sparse_attention", "dense")["attention"] == "dense"
    regular = make_project(tmp_path / "regular", tiny_model_dir, NABLA_RUN, datasets=NABLA_DATA)
    assert _dry_run(monkeypatch, capsys, regular)["attention"] == "dense"
    opted_in = _dry_run(monkeypatch, capsys, regular, "--sparse_attention", "nabla")
    assert opted_in["attention"] == "nabla" and "10 s checkpoints' settings" in opted_in["from"]


def test_sizes_that_cannot_tile_are_refused_with_the_nearest_valid_ones(tmp_path, monkeypatch, capsys, tiny_nabla_dir):
    from k5tune.cli import main
    from tests.helpers import make_project

    monkeypatch.chdir(make_project(tmp_path / "a", tiny_nabla_dir, {**NABLA_RUN, "validation_resolution": "480x848"},
                                   datasets=NABLA_DATA))
    assert main(["train"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "key 'validation_resolution'" in error and "384x768, 384x896, 512x768, 512x896" in error
    monkeypatch.chdir(make_project(tmp_path / "b", tiny_nabla_dir, NABLA_RUN, datasets={"resolution": 200}))
    assert main(["train"]) == 2
    assert "resolution 200 does not tile" in (error := capsys.readouterr().err) and "use 128 or 256" in error
    monkeypatch.chdir(make_project(tmp_path / "c", tiny_nabla_dir, {**NABLA_RUN, "tread_config": {"routes": [
        {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 1}]}}, datasets=NABLA_DATA))
    assert main(["train"]) == 2
    assert "key 'tread_config': tread_config cannot be combined with NABLA" in capsys.readouterr().err


def _frames(path) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]).float()


@pytest.mark.slow
def test_validation_and_generate_run_the_attention_training_ran(tmp_path, monkeypatch, tiny_nabla_dir):
    """Training, validation and `k5tune generate` (the trained LoRA loaded) all run the checkpoint's NABLA
    attention with the same settings, and generate computes with the weights validation used. (Their
    videos are not compared pixel for pixel: with random weights the pooled attention map is nearly
    uniform, so float noise between the fused training blocks and the stock ones flips blocks at the P
    threshold; the same-input parity of masks and outputs is tested above.)"""
    import json

    from safetensors.torch import load_file

    from k5tune.cli import main
    from k5tune.config import load_config
    from k5tune.workflow import train
    from tests.helpers import make_project

    folder = make_project(tmp_path, tiny_nabla_dir, NABLA_RUN, datasets=NABLA_DATA)
    monkeypatch.chdir(folder)
    seen = []  # (phase, settings, grid, density) of every sparse attention call
    real = nabla.block_mask

    def recording(query, key, params):
        mask = real(query, key, params)
        seen.append((torch.is_grad_enabled(), params["P"], params["wT"], params["wH"], params["wW"],
                     params["visual_shape"], nabla.density(mask)))
        return mask

    monkeypatch.setattr(nabla, "block_mask", recording)
    sized = []  # the bucket count the compiled regions' graph cache was sized for
    monkeypatch.setattr("k5tune.train.trainer.graphs_for_buckets", sized.append)
    result = train(load_config())
    report = json.loads(result.report_json.read_text())
    assert report["buckets"] == {"384x256@5": 4} and any("NABLA attention: buckets" in n for n in report["notes"])
    assert sized == [len(report["buckets"])]
    training = [s for s in seen if s[0]]
    validation = [s for s in seen if not s[0] and s[5] == (2, 16, 24)]
    assert training and validation and min(s[6] for s in seen) < 1.0  # sparse in both
    assert {s[1:5] for s in training} == {s[1:5] for s in validation} == {(0.9, 11, 3, 3)}
    seen.clear()
    loaded = {}
    real_load = nabla.install

    def spy(transformer, settings):
        real_load(transformer, settings)
        loaded["transformer"] = transformer

    monkeypatch.setattr(nabla, "install", spy)
    assert main(["generate", "--model", tiny_nabla_dir, "--lora", str(result.lora_path), "--prompt",
                 NABLA_RUN["validation_prompt"], "--frames", "5", "--resolution", "256x384", "--steps", "2",
                 "--seed", "42", "--device", "cpu", "--output", str(tmp_path / "generated.mp4")]) == 0
    assert seen and {s[1:6] for s in seen} == {s[1:6] for s in validation}
    import re

    generated = {"transformer." + re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1.weight", name): p.detach().float()
                 for name, p in loaded["transformer"].named_parameters() if ".lora_" in name}
    trained = load_file(result.lora_path)
    assert generated.keys() == trained.keys() and all(torch.equal(generated[k], trained[k]) for k in trained)


def test_a_fixed_density_mask_keeps_that_share_of_blocks():
    """The bench's stand-in for a trained checkpoint's sparser maps: the top share per query block plus the
    sliding window."""
    generator = torch.Generator().manual_seed(3)
    query, key = (torch.randn(1, 64 * 48, 2, 8, generator=generator) for _ in range(2))
    params = nabla.sparse_params((1, 48, 64), nabla.NablaSettings(wT=1, wH=1, wW=1, fixed_density=0.25),
                                 torch.device("cpu"))
    mask = nabla.block_mask(query, key, params)
    dense = mask.to_dense().bool()
    assert dense.diagonal(dim1=-2, dim2=-1).all()  # the window (here the block itself)
    assert 0.25 <= nabla.density(mask) <= 0.25 + 1 / 48


def _index_bytes(mask) -> int:
    """Bytes of a BlockMask's (heads x blocks x blocks) index tensors, each storage once."""
    storages = {t.untyped_storage().data_ptr(): t for t in (mask.kv_indices, mask.full_kv_indices, mask.q_indices,
                                                            mask.full_q_indices) if t is not None}
    return sum(t.numel() * t.element_size() for t in storages.values())


@pytest.mark.parametrize("fixed_density", [None, 0.25], ids=["threshold", "fixed-density"])
def test_the_mask_is_held_as_partial_blocks_in_two_thirds_of_the_memory(fixed_density):
    """diffusers' mask keeps its blocks as full blocks beside an empty partial set that still holds a
    transposed index tensor; ours holds the same blocks as partial blocks: the same dense mask, the backward's
    transposed indices those torch derives from the kv side, one index tensor fewer."""
    from diffusers.models.transformers.transformer_kandinsky import nablaT_v2
    from torch.nn.attention.flex_attention import BlockMask

    generator = torch.Generator().manual_seed(5)
    query, key = (torch.randn(1, 64 * 96, 2, 8, generator=generator) for _ in range(2))
    params = nabla.sparse_params((2, 48, 64), nabla.NablaSettings(P=0.5, wT=1, wH=1, wW=1,
                                                                 fixed_density=fixed_density), torch.device("cpu"))
    ours = nabla.block_mask(query, key, params)
    theirs = nablaT_v2(query, key, params["sta_mask"], thr=params["P"])
    if fixed_density is None:
        assert torch.equal(ours.to_dense(), theirs.to_dense())
        assert _index_bytes(ours) * 3 == _index_bytes(theirs) * 2
    assert 0 < nabla.density(ours) < 1
    assert ours.full_kv_num_blocks is None and ours.mask_mod(*[torch.tensor(0)] * 4)  # partial, no-op mask_mod
    transposed = BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices, BLOCK_SIZE=nabla.BLOCK)
    assert torch.equal(ours.q_num_blocks, transposed.q_num_blocks)
    rows = ours.q_num_blocks.shape[-1]
    for head in range(ours.q_num_blocks.shape[1]):
        for row in range(rows):
            count = int(ours.q_num_blocks[0, head, row])
            assert sorted(ours.q_indices[0, head, row, :count].tolist()) == \
                sorted(transposed.q_indices[0, head, row, :count].tolist())


def _capturing_backend(backward_graphs: list, forward_graphs: list | None = None):
    """aot_eager that keeps each backward graph (what the compiled blocks recompute and reuse), and each
    forward graph when given a list."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def forward(graph, _):
        if forward_graphs is not None:
            forward_graphs.append(graph)
        return make_boxed_func(graph.forward)

    def backward(graph, _):
        backward_graphs.append(graph)
        return make_boxed_func(graph.forward)

    return aot_autograd(fw_compiler=forward, bw_compiler=backward)


def _calls(graphs: list, name: str) -> int:
    return sum(str(node.target) == name for graph in graphs for node in graph.graph.nodes
               if node.op == "call_function")


def _flex_in_compiled_blocks_on_the_cpu(monkeypatch) -> None:
    """FlexAttention inside compiled blocks on the CPU, through its reference maths (aot_eager): the block
    mask also given as a mask_mod, which that maths honours."""
    import torch.nn.attention.flex_attention as flex

    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)  # (no FlexAttention backward on the CPU)
    monkeypatch.setattr(nabla, "uses_flex", lambda query: torch.compiler.is_compiling())
    real_block_mask = nabla.block_mask

    def block_mask_with_mask_mod(query, key, params):
        mask = real_block_mask(query, key, params)
        blocks = mask.to_dense().bool()
        return flex.BlockMask.from_kv_blocks(mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks,
                                             mask.full_kv_indices, BLOCK_SIZE=nabla.BLOCK,
                                             mask_mod=lambda b, h, q, kv: blocks[b, h, q // nabla.BLOCK, kv // nabla.BLOCK])

    monkeypatch.setattr(nabla, "block_mask", block_mask_with_mask_mod)


@pytest.mark.parametrize("checkpointing,offload", [("selective", False), ("full", False), ("selective", True)])
def test_compiled_blocks_train_as_eager_ones_and_keep_the_mask_for_backward(tiny_nabla_dir, monkeypatch,
                                                                           checkpointing, offload):
    """On the GPU NABLA's blocks compile whole: the mask's building and FlexAttention are traced into the
    block's graph, and the checkpointing policy keeps the mask (never rebuilt in backward) and, selective,
    FlexAttention's output (never recomputed). Here FlexAttention runs inside compiled blocks on the CPU
    through its reference maths (_flex_in_compiled_blocks_on_the_cpu); the LoRA gradients equal the eager
    blocks' (SDPA under the same mask). With activation
    offload (the Pro scenarios' setting) what the compiled blocks keep, the mask and FlexAttention's
    output with it, waits in CPU memory and comes back for backward."""
    import k5tune.train.activation_offload as activation_offload
    from tests.helpers import record_stashed_shapes

    torch._dynamo.reset()
    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)  # the tiny model's tensors are small
    stashed = record_stashed_shapes(monkeypatch)

    latents, text, noise = _inputs(3)
    sigmas = torch.tensor([0.45])
    runtime = Runtime.detect("no", "cpu")
    eager = _transformer(tiny_nabla_dir)
    compiled = copy.deepcopy(eager)
    backward_graphs: list = []
    lora = LoraSettings(4, 4, ("to_query", "to_key", "to_value", "out_layer"))
    build_training_model(eager, TrainingPlan(checkpointing=checkpointing, compile_kernels=False, nabla=SETTINGS),
                         lora, runtime)
    build_training_model(compiled, TrainingPlan(checkpointing=checkpointing, compile_blocks=True, compile_kernels=False,
                                                compile_backend=_capturing_backend(backward_graphs), nabla=SETTINGS,
                                                offload_activations=offload), lora, runtime)
    _flex_in_compiled_blocks_on_the_cpu(monkeypatch)
    gradients = []
    for model in (eager, compiled):
        with step_scope(model):
            flow_matching_step_loss(model, latents, text, noise, sigmas, PIXELS, runtime).backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch._dynamo.reset()
    assert backward_graphs and _calls(backward_graphs, "flex_attention_backward") == 2  # one per visual block
    assert not any(_calls(backward_graphs, f"aten.sort.{overload}") for overload in ("default", "stable"))
    assert _calls(backward_graphs, "flex_attention") == (0 if checkpointing == "selective" else 2)
    assert set(gradients[0]) == set(gradients[1])
    for name, expected in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], expected, atol=1e-5, rtol=1e-4, msg=name)
    # moved: per visual block (2) its input, FlexAttention's output and log-sum-exp (batch x heads x 768
    # tokens) and the mask (its block counts and indices, both ways: heads x 12 x 12 blocks)
    visual, kept = (1, 768, 96), (1, 6, 768, 16)
    assert not offload or (stashed.count(visual) == 2 and stashed.count(kept) == 2 and stashed.count(kept[:3]) == 2
                           and stashed.count((1, 6, 12, 12)) == 2 * 2)
    assert offload or not stashed


def test_a_compiled_nabla_block_compiles_once_per_bucket_whatever_the_caption_length(tiny_nabla_dir, monkeypatch):
    """A real run mixes caption lengths and buckets. A compiled NABLA block keeps its visual token count
    static (FlexAttention's kernels are chosen for the mask's block grid; at a dynamic count torch 2.11
    found no backward tiling on an H100) while the caption length goes dynamic: captions of new lengths
    reuse the block's graph, and each bucket compiles once."""
    torch._dynamo.reset()
    _flex_in_compiled_blocks_on_the_cpu(monkeypatch)
    forward_graphs: list = []
    transformer = _transformer(tiny_nabla_dir)
    runtime = Runtime.detect("no", "cpu")
    build_training_model(transformer, TrainingPlan(compile_blocks=True, compile_kernels=False, nabla=SETTINGS,
                                                   compile_backend=_capturing_backend([], forward_graphs)),
                         LoraSettings(4, 4, ("to_query", "to_key", "to_value")), runtime)
    generator = torch.Generator().manual_seed(0)
    # bucket 768 tokens (2 latent frames) with captions of 5, 7 and 9 tokens, then bucket 1152 (without the
    # static mark, this second count made the token dimension symbolic)
    for frames, caption in [(2, 5), (2, 7), (2, 9), (3, 11)]:
        latents = torch.randn(1, frames, *LATENT[2:], generator=generator)
        text = pad_prompts([torch.randn(caption, 32, generator=generator)], [torch.randn(32, generator=generator)])
        with step_scope(transformer):
            flow_matching_step_loss(transformer, latents, text, torch.randn_like(latents), torch.tensor([0.5]),
                                    PIXELS, runtime).backward()
    torch._dynamo.reset()
    visual = [g for g in forward_graphs if _calls([g], "flex_attention")]
    flex_tokens = [n.args[0].meta["val"].shape[-2] for g in visual for n in g.graph.nodes
                   if n.op == "call_function" and str(n.target) == "flex_attention"]
    assert flex_tokens and all(isinstance(t, int) for t in flex_tokens)  # never a symbolic token count
    assert sorted(set(flex_tokens)) == [768, 1152]
    # per bucket at most two graphs (the first block's input needs no gradient, the others' do), however
    # many caption lengths it saw (three at 768 tokens)
    assert all(flex_tokens.count(tokens) <= 2 for tokens in (768, 1152))


def test_a_run_of_many_buckets_keeps_a_compiled_nabla_graph_for_each(monkeypatch):
    """Past dynamo's recompile limit a compiled region runs eagerly for every later shape. A NABLA block
    compiles twice per bucket (the first block's input needs no gradient), so the limit follows the run's
    bucket count: 40 buckets keep their compiled graphs, where the fixed 64 served ~24."""
    from k5tune.train import speed

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(speed, "_compiled_regions", {})
    total = "accumulated_recompile_limit" if hasattr(config, "accumulated_recompile_limit") else \
        "accumulated_cache_size_limit"
    with config.patch({name: 8, total: 256}):  # (torch's own way to change its config for a while)
        speed._compiled_region(True, "aot_eager", None)
        assert getattr(config, name) == 16  # dense regions: dynamic lengths, a few graphs
        speed._compiled_region(True, "aot_eager", "heuristic")
        assert getattr(config, name) == 64
        speed.graphs_for_buckets(40)
        assert getattr(config, name) >= 2 * 40 + 4  # both graphs of each bucket, and the text blocks' few
        speed.graphs_for_buckets(150)  # past the cap over all of a code object's graphs too
        assert getattr(config, name) >= 2 * 150 + 4 and getattr(config, total) >= getattr(config, name)
        speed.graphs_for_buckets(3)
        assert getattr(config, name) >= 2 * 150 + 4  # never lowered within the process


def test_nabla_blocks_compile_as_dense_ones_do():
    """On a GPU NABLA's blocks compile whole by default, as dense ones do, with torch's FlexAttention tiling
    narrowed to the mask's blocks (no autotuning); `--no-compile-blocks` runs them eagerly and
    `--flex-tiling autotune` benchmarks the tilings instead."""
    import argparse

    from k5tune.commands import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    plans = {flags: bench._plan(parser.parse_args(["--flavour", "t2v-lite-sft-10s", *flags]))
             for flags in [(), ("--no-compile-blocks",), ("--flex-tiling", "autotune"), ("--sparse-attention", "dense")]}
    assert plans[()].nabla is not None and plans[()].compiles_blocks(True) and plans[()].flex_tiling == "heuristic"
    assert not plans[()].compiles_blocks(False)  # (on the CPU nothing compiles unless asked)
    assert not plans[("--no-compile-blocks",)].compiles_blocks(True)
    assert plans[("--flex-tiling", "autotune")].flex_tiling == "autotune"
    assert plans[("--sparse-attention", "dense")].compiles_blocks(True)
    assert TrainingPlan().flex_tiling == "heuristic"  # what `k5tune train` runs
    assert nabla.DEFAULT_FLEX_TILING == TrainingPlan().flex_tiling  # and generation (nabla.install's default)


@pytest.fixture
def torch_heuristics(monkeypatch):
    """Inductor's choices as torch ships them, restored after the test (clamp_flex_tiles is process-wide)."""
    from torch._inductor.choices import InductorChoices

    for name in ("get_flex_attention_fwd_configs", "get_flex_attention_bwd_configs"):
        monkeypatch.setattr(InductorChoices, name, getattr(InductorChoices, name))
    monkeypatch.setattr(InductorChoices, "_k5_flex_tile_limit", None, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))  # an H100's tilings
    return InductorChoices()


def _tiles(config) -> list[int]:
    return [getattr(config, name) for name in ("block_m", "block_n", "block_m1", "block_n1", "block_m2", "block_n2")
            if hasattr(config, name)]


def test_heuristic_tiling_narrows_torchs_flex_tiles_to_nablas_blocks(torch_heuristics):
    """In the default mode torch gives FlexAttention's backward on Hopper a tiling 128 tokens wide, which
    NABLA's 64-token blocks cannot take ("No choices to select" on the H100); flex_tiling "heuristic" keeps
    that tiling's stages and warps with every tile at most 64 tokens, for the forward and the backward."""
    stock = torch_heuristics.get_flex_attention_bwd_configs(64, torch.bfloat16, "cuda")
    assert any(t > nabla.BLOCK for c in stock for t in _tiles(c))  # why "heuristic" exists
    nabla.clamp_flex_tiles()
    nabla.clamp_flex_tiles()  # (idempotent)
    for head_dim in (64, 128):  # Lite, Pro
        for kind in ("fwd", "bwd"):
            configs = getattr(torch_heuristics, f"get_flex_attention_{kind}_configs")(head_dim, torch.bfloat16, "cuda")
            assert configs and all(nabla.BLOCK % t == 0 for c in configs for t in _tiles(c)), (kind, configs)
    clamped = torch_heuristics.get_flex_attention_bwd_configs(64, torch.bfloat16, "cuda")
    # the stages stay torch's; a narrowed tiling gets autotuning's warps at 64x64 (8 would starve: 9.63 s
    # a Lite 10 s step on an H100 against 6.79 s autotuned)
    assert [c.num_stages for c in clamped] == [c.num_stages for c in stock]
    for before, after in zip(stock, clamped, strict=True):
        narrowed = any(t > nabla.BLOCK for t in _tiles(before))
        assert after.num_warps == (min(before.num_warps, nabla.NARROWED_TILE_WARPS) if narrowed else before.num_warps)
    assert [(c.block_m1, c.block_n1, c.num_warps) for c in clamped] == [(64, 64, 4)]  # H100, head size 64


def test_flex_tiling_picks_the_compile_mode_of_flex_and_of_compiled_blocks(torch_heuristics, monkeypatch,
                                                                         tiny_nabla_dir):
    """`k5tune bench --flex-tiling` reaches the plan, the processors and torch.compile: autotuning for
    "autotune" (FlexAttention alone in max-autotune mode; in a compiled NABLA block, FlexAttention's
    autotuning only), the default mode with narrowed tiles for "heuristic"; dense compiled blocks keep
    the default mode."""
    import argparse

    from k5tune.commands import bench
    from k5tune.train import speed

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(kwargs) or fn)
    monkeypatch.setattr(nabla, "_compiled_flex", {})
    monkeypatch.setattr(speed, "_compiled_regions", {})
    nabla._flex_attention("autotune")
    speed._compiled_region(True, "inductor", "autotune")
    speed._compiled_region(True, "inductor", None)
    flex_alone, nabla_block, dense_block = compiled
    assert flex_alone["mode"] == "max-autotune-no-cudagraphs" and flex_alone["dynamic"] is False
    # a compiled NABLA block autotunes FlexAttention only (cuBLAS for its matmuls), at static shapes
    assert nabla_block == {"backend": "inductor",
                           "options": {"max_autotune": True, "max_autotune_gemm_backends": "ATEN"}}
    assert dense_block == {"backend": "inductor"}
    assert torch_heuristics._k5_flex_tile_limit is None  # autotune leaves torch's heuristics alone
    compiled.clear()
    nabla._flex_attention("heuristic")
    speed._compiled_region(False, "inductor", "heuristic")
    assert compiled[0]["mode"] is None and compiled[1] == {"backend": "inductor"}
    assert torch_heuristics._k5_flex_tile_limit == nabla.BLOCK
    with pytest.raises(ValueError, match="unknown flex_tiling 'fast'; valid: autotune, heuristic"):
        nabla.flex_compile_mode("fast")

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    # (the CLI names the tilings without importing torch: the same list)
    assert parser._option_string_actions["--flex-tiling"].choices == list(nabla.FLEX_TILINGS)
    plan = bench._plan(parser.parse_args(["--flavour", "t2v-lite-sft-10s", "--flex-tiling", "heuristic"]))
    assert plan.flex_tiling == "heuristic"
    transformer = _transformer(tiny_nabla_dir)
    nabla.install(transformer, SETTINGS, plan.flex_tiling)
    assert {a.processor.tiling for a in nabla.self_attentions(transformer)} == {"heuristic"}
