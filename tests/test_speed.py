"""The fast training path computes what the stock blocks compute; `k5tune bench` reports what it says."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from k5tune.bench import forward_flops, useful_flops
from k5tune.cli import main
from k5tune.lora.adapter import add_lora
from k5tune.models.flavours import LITE_TRANSFORMER
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.train.plan import TrainingPlan
from k5tune.train.speed import apply_speed_plan
from tests.helpers import eager_and_compiled_blocks, loss_and_grads, tiny_with_live_lora


@pytest.mark.parametrize("checkpointing", ["selective", "full", "none"])
def test_fast_path_equals_stock_forward_and_lora_gradients(tiny_model_dir, checkpointing):
    stock = tiny_with_live_lora(tiny_model_dir)
    fast = copy.deepcopy(stock)
    stock.enable_gradient_checkpointing()
    apply_speed_plan(fast, TrainingPlan(checkpointing=checkpointing, compile_kernels=False))
    stock_loss, stock_grads = loss_and_grads(stock.train(), torch.float32)
    fast_loss, fast_grads = loss_and_grads(fast.train(), torch.float32)
    torch.testing.assert_close(fast_loss, stock_loss, rtol=1e-5, atol=1e-6)
    assert stock_grads.keys() == fast_grads.keys() and len(stock_grads) == 26 * 2
    for name in stock_grads:
        torch.testing.assert_close(fast_grads[name], stock_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", ["selective", "full"])
def test_compiled_blocks_equal_the_eager_fast_path(tiny_model_dir, checkpointing):
    import torch._dynamo.utils

    torch._dynamo.reset()  # graphs other tests compiled for the same regions would be reused
    eager, compiled = eager_and_compiled_blocks(tiny_model_dir, checkpointing)
    torch._dynamo.utils.counters.clear()
    eager_loss, eager_grads = loss_and_grads(eager.train(), torch.float32)
    compiled_loss, compiled_grads = loss_and_grads(compiled.train(), torch.float32)
    # one graph per block kind (text, first visual block without an input gradient, the other visual
    # block): both visual blocks share a graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-7)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) == 26 * 2
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fast_path_in_bf16_stays_within_bf16_tolerance(tiny_model_dir):
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    stock = components.transformer(dtype=torch.bfloat16)
    add_lora(stock, 8, 8, 0.0, ["to_query", "to_key", "to_value", "out_layer"], seed=0)
    fast = copy.deepcopy(stock)
    apply_speed_plan(fast, TrainingPlan(compile_kernels=False))
    stock_loss, _ = loss_and_grads(stock.train(), torch.bfloat16)
    fast_loss, _ = loss_and_grads(fast.train(), torch.bfloat16)
    assert abs(fast_loss.item() - stock_loss.item()) <= 1e-2 * abs(stock_loss.item())


def test_useful_flops_match_the_published_count():
    """Lite at 512x768x61 (24,576 tokens): about 632 TFLOP of useful work per step."""
    assert useful_flops(LITE_TRANSFORMER, 24576, 128, 1) / 1e12 == pytest.approx(632, rel=0.01)
    attention = 32 * 2 * 2 * 24576**2 * 1792
    assert attention / forward_flops(LITE_TRANSFORMER, 24576, 128, 1) == pytest.approx(0.65, abs=0.02)


@pytest.mark.slow
def test_bench_on_cpu_with_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    tread = json.dumps({"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 1}]})
    assert main(["bench", "--model", tiny_model_dir, "--resolution", "32x48", "--frames", "9", "--steps", "2",
                 "--warmup", "1", "--compare-stock", "--tread", tread, "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["tokens"] == 3 * 2 * 3
    for name in ("ours", "stock", "ours_tread"):
        assert printed[name]["step_s"] > 0 and len(printed[name]["step_s_all"]) == 2
        assert len(printed[name]["warmup_s_all"]) == 1 and printed[name]["warmup_s_all"][0] > 0
        assert printed[name]["tflops"] > 0 if name != "ours_tread" else True
    assert printed["speedup_vs_stock"] == pytest.approx(printed["stock"]["step_s"] / printed["ours"]["step_s"])
    assert printed["tread_routes"] == [{"ratio": 0.5, "start": 0, "end": 1}]


def test_bench_with_leaf_level_offload_on_cpu(tiny_model_dir, capsys):
    assert main(["bench", "--model", tiny_model_dir, "--resolution", "32x48", "--frames", "9", "--steps", "1",
                 "--warmup", "1", "--group-offload", "1", "--leaf-level"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["plan"]["group_offload_leaf"] and printed["plan"]["offload_activations"] is True
    assert printed["ours"]["step_s"] > 0


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--flavour", "t2v-huge"]) == 2
    assert main(["bench", "--frames", "60"]) == 2
    assert main(["bench", "--tread", '{"routes": []}']) == 2
    assert "tread" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_times_nabla_rollout_and_a_forward_on_cpu(tiny_model_dir, capsys):
    """--sparse-attention nabla reports the masks' measured density; --rollout K adds K no-grad forwards per
    sample to the step; --forward times one no-grad forward (what a rollout step or an eval level costs)."""
    assert main(["bench", "--model", tiny_model_dir, "--resolution", "128x256", "--frames", "9", "--steps", "1",
                 "--warmup", "0", "--sparse-attention", "nabla", "--nabla-density", "0.25", "--rollout", "2",
                 "--forward"]) == 0
    printed = json.loads(capsys.readouterr().out)
    attention = printed["attention"]
    assert attention["attention"] == "nabla" and attention["fixed_density"] == 0.25
    assert len(attention["mask_density_by_layer"]) == 2 and 0 < attention["mask_density"] <= 1
    assert printed["plan"]["nabla"]["fixed_density"] == 0.25
    assert printed["rollout"]["steps"] == 2 and printed["ours_forward"]["step_s"] > 0
    assert main(["bench", "--model", tiny_model_dir, "--resolution", "32x48", "--frames", "9", "--steps", "1",
                 "--warmup", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["attention"] == {"attention": "dense"}


def test_bench_scenarios_rows_and_tables(tiny_model_dir, tmp_path, capsys):
    """Scenarios are data (`--list`); `--scenario` runs one with the given flags on top; `--results` appends
    a row naming the scenario, card, date, git sha and library versions; `--tables` makes one table per
    theme, card and date from the rows."""
    from k5tune.bench.scenarios import SCENARIOS, SUITES

    assert main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in SCENARIOS) and all(name in listing for name in SUITES)
    assert all(set(names) <= set(SCENARIOS) for names in SUITES.values())
    rows = tmp_path / "rows.jsonl"
    tiny = ["--model", tiny_model_dir, "--resolution", "32x48", "--frames", "9", "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--results", str(rows)]
    assert main(["bench", "--scenario", "lite-rollout-1", *tiny]) == 0
    assert main(["bench", "--scenario", "lite", *tiny]) == 0
    capsys.readouterr()
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["scenario"] for r in written] == ["lite-rollout-1", "lite"]
    first = written[0]
    assert first["theme"] == "rollout" and first["card"] == "cpu" and first["versions"]["torch"]
    assert first["report"]["rollout"]["steps"] == 1 and first["report"]["resolution"] == "32x48"  # flags on top
    assert "ours_forward" in written[1]["report"] and first["date"]
    # a row's flags reproduce the run: the scenario's, then those given on top (not where reports went)
    import argparse

    from k5tune.commands.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    replayed = parser.parse_args(first["args"])
    assert (replayed.model, replayed.resolution, replayed.frames, replayed.steps, replayed.warmup, replayed.device) == (
        tiny_model_dir, "32x48", 9, 1, 0, "cpu")
    assert replayed.rollout == 1 and "--results" not in first["args"]
    assert main(["bench", "--tables", str(rows)]) == 0
    tables = capsys.readouterr().out
    assert tables.count("## ") == 2 and "## rollout — cpu" in tables and "| lite-rollout-1 |" in tables
    assert main(["bench", "--scenario", "nope"]) == 2


def test_compiled_kernels_are_kept_beyond_the_temporary_folder(tmp_path, monkeypatch):
    """Inductor's cache (kernels, graphs, FlexAttention's autotuning choices) goes under the user's cache
    folder, so a shape autotuned once (2.5 minutes at Lite 10 s) is not autotuned again after a reboot; a
    folder the user named wins; an unwritable cache folder leaves torch's default."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from k5tune.runtime import COMPILE_CACHE_VARIABLE, keep_compiled_kernels

    monkeypatch.setenv(COMPILE_CACHE_VARIABLE, "")  # unset, and put back as it was after the test
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kept = tmp_path / "cache" / "k5tune" / "torchinductor"
    assert keep_compiled_kernels() == str(kept) and kept.is_dir()
    assert cache_dir() == str(kept)  # what inductor itself now uses
    assert keep_compiled_kernels({COMPILE_CACHE_VARIABLE: "/mine"}) == "/mine"
    (tmp_path / "file").write_text("not a folder")
    untouched: dict[str, str] = {"XDG_CACHE_HOME": str(tmp_path / "file")}
    assert keep_compiled_kernels(untouched) is None and COMPILE_CACHE_VARIABLE not in untouched
