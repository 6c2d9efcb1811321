"""Group offload that trains: the same LoRA as without offload, and no block weight used while away."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from k5tune.config import load_config
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.train.offload import enable_group_offload
from k5tune.workflow import train
from tests.helpers import OFFLOAD_RUN as RUN
from tests.helpers import assert_same_training, make_project, record_stashed_shapes, train_lora


@pytest.mark.slow
@pytest.mark.parametrize("blocks_per_group", [1, 2])
def test_offloaded_training_gives_the_same_lora_after_3_steps(tmp_path, monkeypatch, tiny_model_dir,
                                                               blocks_per_group):
    expected = train_lora(tmp_path / "plain", tiny_model_dir, {**RUN, "gradient_checkpointing_policy": "full"},
                          monkeypatch)
    offloaded = make_project(tmp_path / "offloaded", tiny_model_dir, {
        **RUN, "enable_group_offload": True, "group_offload_type": "block_level",
        "group_offload_blocks_per_group": blocks_per_group, "group_offload_use_stream": True,
    })
    monkeypatch.chdir(offloaded)
    result = train(load_config())  # validation ran too: inference through the offloaded blocks
    assert_same_training(load_file(result.lora_path), expected)
    assert result.videos and result.videos[-1].path.is_file()


def test_offloaded_weights_are_really_away_between_uses(tiny_model_dir):
    """While a block's group is offloaded its frozen weights are empty stand-ins: any use would fail."""
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    from k5tune.lora.adapter import add_lora

    add_lora(transformer, 4, 4, 0.0, ["to_query"], seed=0)
    key = transformer.visual_transformer_blocks[1].self_attention.to_key.weight.detach().clone()
    offloader = enable_group_offload(transformer, blocks_per_group=1)
    block = transformer.visual_transformer_blocks[1]
    assert block.self_attention.to_key.weight.numel() == 0  # offloaded
    # the home copies share slabs (one pinned request per weight would be rounded up to a power of two)
    homes = [home for group in offloader.groups for home in group.home]
    assert len({home.untyped_storage().data_ptr() for home in homes}) == 1 < len(homes)
    assert block.self_attention.to_query.lora_A["default"].weight.numel() > 0  # LoRA stays
    offloader.enter(block, +1)
    assert torch.equal(block.self_attention.to_key.weight, key)  # back from its home, unchanged
    offloader.enter(transformer.text_transformer_blocks[0], +1)
    assert block.self_attention.to_key.weight.numel() == 0  # only the current group (and the next) stay


@pytest.mark.slow
def test_leaf_level_offload_gives_the_same_lora(tmp_path, monkeypatch, tiny_model_dir):
    """leaf_level: each layer's weights come in before it runs, and backward fetches the weights it
    saved again; training ends where block_level offload does, and where plain full checkpointing
    does up to float-order noise (validation ran through the layers too)."""
    targets = {"lora_target_modules": ["to_query", "to_value", "feed_forward"]}
    runs = {}
    for name, extra in [("plain", {"gradient_checkpointing_policy": "full"}),
                        ("block", {"enable_group_offload": True, "group_offload_use_stream": True}),
                        ("leaf", {"enable_group_offload": True, "group_offload_use_stream": True,
                                  "group_offload_type": "leaf_level"})]:
        monkeypatch.chdir(make_project(tmp_path / name, tiny_model_dir, {**RUN, **targets, **extra}))
        result = train(load_config())
        runs[name] = load_file(result.lora_path)
    assert result.videos and result.videos[-1].path.is_file()
    assert_same_training(runs["leaf"], runs["plain"])
    for key in runs["plain"]:
        assert torch.equal(runs["leaf"][key], runs["block"][key]), key


def one_step_backward(transformer, dtype: torch.dtype) -> None:
    """Loss and backward of one tiny batch in `dtype` (CPU autocast when it is not fp32)."""
    from k5tune.models.kandinsky5.model_input import pad_prompts
    from k5tune.runtime import Runtime
    from k5tune.train.step import flow_matching_step_loss

    transformer.train()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 2, 4, 6, 16, generator=generator)
    text = pad_prompts([torch.randn(5, 32, generator=generator)], [torch.randn(32, generator=generator)])
    runtime = Runtime(torch.device("cpu"), dtype, dtype, dtype)
    loss = flow_matching_step_loss(transformer, latents, text, torch.randn(latents.shape, generator=generator),
                                   torch.tensor([0.5]), (32, 48), runtime)
    loss.backward()


def test_leaf_level_keeps_at_most_two_layers_and_saves_weights_by_reference(tiny_model_dir, monkeypatch):
    """During a leaf_level step no more than two layers' weights are resident at any time, and the
    recomputation for backward saves references instead of the weights."""
    import k5tune.train.offload as offload
    from k5tune.lora.adapter import add_lora, lora_parameters

    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    add_lora(transformer, 4, 4, 0.0, ["to_query", "out_layer"], seed=0)
    offloader = enable_group_offload(transformer, leaf_level=True)
    assert len(offloader.groups) > 2 * (1 + 2)  # several layers per block
    most = 0
    references = []
    original_enter, original_ref = offloader.enter, offload._WeightRef.__init__

    def counting_enter(module, direction):
        nonlocal most
        group = original_enter(module, direction)
        most = max(most, sum(g.resident for g in offloader.groups))
        return group

    def counting_ref(self, group, index, view):
        references.append(view.shape)
        original_ref(self, group, index, view)

    monkeypatch.setattr(offloader, "enter", counting_enter)
    monkeypatch.setattr(offload._WeightRef, "__init__", counting_ref)
    one_step_backward(transformer, torch.float32)
    assert most <= 2
    # each visual block saves (at least) its self-attention and feed-forward weights for backward
    assert len(references) >= 2 * (4 + 2)
    assert all(p.grad is not None for p in lora_parameters(transformer))


def test_offloaded_backward_recomputes_under_the_same_autocast(tiny_model_dir):
    """bf16 weights with fp32 modulation under autocast (the GPU set-up), here with CPU autocast: the
    recomputation in backward must run under the forward's autocast or the dtypes clash."""
    from k5tune.lora.adapter import add_lora, lora_parameters

    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer(
        dtype=torch.bfloat16)
    assert transformer.visual_transformer_blocks[0].visual_modulation.out_layer.weight.dtype == torch.float32
    add_lora(transformer, 4, 4, 0.0, ["to_query", "to_value"], seed=0)
    for p in lora_parameters(transformer):
        p.data = p.data.float()
    enable_group_offload(transformer, blocks_per_group=1)
    one_step_backward(transformer, torch.bfloat16)
    grads = [p.grad for p in lora_parameters(transformer)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("with_weights", [False, True])
def test_activation_offload_gives_the_same_lora(tmp_path, monkeypatch, tiny_model_dir, with_weights):
    """The saved block inputs travel through CPU memory (every one, for the tiny model) and training
    ends where plain full checkpointing does."""
    import k5tune.train.activation_offload as activation_offload

    monkeypatch.setattr(activation_offload, "MIN_OFFLOADED_ELEMENTS", 1)
    stashed = record_stashed_shapes(monkeypatch)
    expected = train_lora(tmp_path / "plain", tiny_model_dir, {**RUN, "gradient_checkpointing_policy": "full"},
                          monkeypatch)
    assert not stashed
    got = train_lora(tmp_path / "moved", tiny_model_dir, {
        **RUN, "offload_activations": True, "enable_group_offload": with_weights}, monkeypatch)
    blocks = 1 + 2  # text + visual blocks of the tiny model; each forward stashes every block's input
    assert len(stashed) >= 3 * blocks
    assert_same_training(got, expected)


def test_offload_activations_needs_gradient_checkpointing(tmp_path, monkeypatch, tiny_model_dir):
    from k5tune.errors import ConfigError

    folder = make_project(tmp_path, tiny_model_dir, {"offload_activations": True, "gradient_checkpointing": False})
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match="offload_activations needs gradient_checkpointing"):
        load_config()
