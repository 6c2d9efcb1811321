"""modulation_precision: the modulation layers stored in the compute dtype change no training step."""

from __future__ import annotations

import copy

import pytest
import torch

from k5tune.lora.adapter import add_lora
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.modulation import (
    modulation_layers,
    modulation_storage_dtype,
    store_modulation_in,
)
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan
from tests.helpers import loss_and_grads


@pytest.mark.parametrize("fast_path", [True, False])
def test_bf16_storage_gives_the_training_step_bit_for_bit(tiny_model_dir, fast_path):
    # the tiny checkpoint is fp32, so its modulation weights are not bf16 numbers: only autocast's own
    # rounding of them at every product makes the two steps equal
    stock = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer(
        dtype=torch.bfloat16)
    assert {p.dtype for layer in modulation_layers(stock) for p in layer.parameters()} == {torch.float32}
    add_lora(stock, 8, 8, 0.0, ["to_query", "to_key", "to_value", "out_layer"], seed=0)
    apply_speed_plan(stock, TrainingPlan(fused_kernels=fast_path, compile_kernels=False))
    stored = copy.deepcopy(stock)
    fp32_bytes = sum(p.numel() * 4 for layer in modulation_layers(stock) for p in layer.parameters())
    assert len(modulation_layers(stock)) == 1 + 2 + 1  # the text block, 2 visual blocks, the out layer
    assert store_modulation_in(stored, torch.bfloat16) == fp32_bytes // 2
    assert {p.dtype for layer in modulation_layers(stored) for p in layer.parameters()} == {torch.bfloat16}
    stock_loss, stock_grads = loss_and_grads(stock.train(), torch.bfloat16)
    stored_loss, stored_grads = loss_and_grads(stored.train(), torch.bfloat16)
    assert torch.equal(stored_loss, stock_loss)
    assert stock_grads.keys() == stored_grads.keys() and stock_grads
    for name in stock_grads:
        assert torch.equal(stored_grads[name], stock_grads[name]), name


def test_outside_autocast_the_layers_still_compute_in_fp32(tiny_model_dir):
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer(
        dtype=torch.bfloat16)
    layer = modulation_layers(transformer)[0]
    x = torch.randn(2, layer.in_features)
    exact = layer(x)
    store_modulation_in(transformer, torch.bfloat16)
    upcast = layer(x)
    assert upcast.dtype == torch.float32
    rounded = torch.nn.functional.linear(x, layer.weight.float(), layer.bias.float())
    assert torch.equal(upcast, rounded)  # fp32 maths on the stored (bf16) values
    assert ((upcast - exact).norm() / exact.norm()).item() < 1e-2  # bf16 rounding of the weights only


def test_auto_follows_the_compute_dtype():
    assert modulation_storage_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert modulation_storage_dtype("auto", torch.float16) == torch.float16
    assert modulation_storage_dtype("auto", torch.float32) is None  # fp32 training (CPU): nothing to save
    assert modulation_storage_dtype("fp32", torch.bfloat16) is None
