"""LoRA key layouts: detection, exact diffusers <-> ComfyUI conversion, normalization, `k5tune convert-lora`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from k5tune.cli import main
from k5tune.errors import K5TuneError
from k5tune.lora.adapter import add_lora
from k5tune.lora.convert import (
    convert_file,
    load_lora_into_transformer,
    normalize_for_diffusers,
    to_comfyui,
    to_diffusers,
)
from k5tune.lora.files import read_lora, save_lora
from k5tune.lora.layouts import detect_format
from k5tune.lora.scale import unpack_adapter_config
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.model_input import pad_prompts, transformer_kwargs, with_conditioning_channels

TARGETS = ["to_query", "to_key", "to_value", "out_layer", "feed_forward"]
RANK, ALPHA = 4, 8  # alpha != rank, so a lost alpha shows as a wrong scale (2 instead of 1)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A LoRA saved by k5tune's own save_lora on the tiny transformer, with random (non-zero) B matrices."""
    transformer = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir)).transformer()
    modules = add_lora(transformer, RANK, ALPHA, 0.0, TARGETS, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    folder = tmp_path_factory.mktemp("lora") / "output"
    facts = {"flavour": "t2v-lite-sft-5s", "rank": RANK, "alpha": ALPHA, "steps": 2, "trigger_word": "sks"}
    save_lora(transformer, folder, facts)
    return folder / "pytorch_lora_weights.safetensors", modules


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from diffusers import Kandinsky5T2VPipeline

    return Kandinsky5T2VPipeline.from_pretrained(tiny_model_dir)


def forward(transformer) -> torch.Tensor:
    """The transformer's prediction on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    latents = with_conditioning_channels(torch.randn(1, 2, 4, 6, 16, generator=generator))
    text = pad_prompts([torch.randn(5, 32, generator=generator)], [torch.randn(32, generator=generator)])
    kwargs = transformer_kwargs(transformer, latents, text, torch.tensor([0.6]), (32, 48))
    with torch.no_grad():
        return transformer(**kwargs, return_dict=False)


def lora_layers(transformer, adapter: str) -> dict[str, tuple[int, float]]:
    """module name -> (rank, scale) of every LoRA layer peft built for the adapter."""
    return {name: (module.r[adapter], module.scaling[adapter])
            for name, module in transformer.named_modules() if hasattr(module, "scaling") and adapter in module.r}


# --- layouts and the exact round trip ------------------------------------------------------------------


def test_comfyui_layout_uses_native_module_names_and_alpha(trained, tmp_path):
    source, modules = trained
    written, layout, count = convert_file(source, tmp_path / "comfy.safetensors", "comfyui")
    tensors, header = read(written)
    assert layout == "diffusers" and detect_format(tensors) == "comfyui" and count == len(modules) == 26
    # ComfyUI's native Kandinsky5 names = the original repo's = diffusers' module names (no renames)
    for name in modules:
        assert tensors[f"diffusion_model.{name}.alpha"].dtype == torch.float32
        assert tensors[f"diffusion_model.{name}.alpha"].item() == ALPHA
        assert tensors[f"diffusion_model.{name}.lora_down.weight"].shape[0] == RANK  # down = A (rank, in)
        assert tensors[f"diffusion_model.{name}.lora_up.weight"].shape[1] == RANK  # up = B (out, rank)
    assert len(tensors) == 3 * len(modules)
    assert json.loads(header["k5tune.steps"]) == 2 and header["k5tune.trigger_word"] == "sks"


def test_diffusers_comfyui_diffusers_round_trip_is_exact(trained, tmp_path):
    source, _ = trained
    comfy, _, _ = convert_file(source, tmp_path / "comfy.safetensors", "comfyui")
    (tmp_path / "back").mkdir()
    back, layout, _ = convert_file(comfy, tmp_path / "back", "diffusers")  # a folder: the diffusers file name
    assert layout == "comfyui" and back == tmp_path / "back" / "pytorch_lora_weights.safetensors"
    original, original_header = read(source)
    result, result_header = read(back)
    assert result.keys() == original.keys()
    for key, tensor in original.items():
        assert result[key].dtype == tensor.dtype and torch.equal(result[key], tensor), key
    assert result_header == original_header  # same peft config (rank 4, alpha 8) and k5tune.* facts


def test_round_tripped_file_loads_in_the_pipeline_like_the_original(trained, tmp_path, pipe):
    source, modules = trained
    comfy, _, _ = convert_file(source, tmp_path / "comfy.safetensors", "comfyui")
    back, _, _ = convert_file(comfy, tmp_path / "back.safetensors", "diffusers")

    base = forward(pipe.transformer)
    pipe.load_lora_weights(str(source), adapter_name="original")
    with_original = forward(pipe.transformer)
    assert set(lora_layers(pipe.transformer, "original").values()) == {(RANK, ALPHA / RANK)}
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(back), adapter_name="round_trip")
    layers = lora_layers(pipe.transformer, "round_trip")
    with_round_trip = forward(pipe.transformer)
    pipe.unload_lora_weights()

    assert set(layers) == set(modules) and set(layers.values()) == {(RANK, ALPHA / RANK)}
    assert torch.equal(with_round_trip, with_original)
    assert (with_original - base).abs().max() > 1e-3  # the LoRA really changes the output


def test_per_module_alpha_and_rank_survive_both_ways(trained, tmp_path, pipe):
    """Alphas/ranks that differ per module go to peft's alpha_pattern/rank_pattern, which diffusers applies."""
    source, modules = trained
    comfy, _ = to_comfyui(*read(source))
    odd_alpha, low_rank = modules[0], modules[-1]
    comfy[f"diffusion_model.{odd_alpha}.alpha"] = torch.tensor(3.0)
    down, up = f"diffusion_model.{low_rank}.lora_down.weight", f"diffusion_model.{low_rank}.lora_up.weight"
    comfy[down], comfy[up] = comfy[down][:2].clone(), comfy[up][:, :2].clone()

    state, header = to_diffusers(comfy, {})  # no header: everything comes from the tensors
    config = unpack_adapter_config(header)
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    assert len(config["alpha_pattern"]) == 1 and len(config["rank_pattern"]) == 1
    path = tmp_path / "patterns.safetensors"
    save_file(state, path, metadata=header)
    pipe.load_lora_weights(str(path), adapter_name="patterns")
    layers = lora_layers(pipe.transformer, "patterns")
    pipe.unload_lora_weights()
    assert layers[odd_alpha] == (RANK, 3.0 / RANK)
    assert layers[low_rank] == (2, ALPHA / 2)
    assert all(layers[n] == (RANK, ALPHA / RANK) for n in modules if n not in (odd_alpha, low_rank))

    again, _ = to_comfyui(state, header)
    assert again.keys() == comfy.keys()
    assert all(torch.equal(again[k], comfy[k]) for k in comfy)


# --- other layouts, normalization, errors --------------------------------------------------------------


def test_peft_and_unprefixed_files_are_detected_and_normalized(trained):
    source, _ = trained
    original, header = read(source)
    assert detect_format(original) == "diffusers"
    for prefix, layout in (("base_model.model.", "peft"), ("", "original")):
        renamed = {prefix + k.removeprefix("transformer."): v for k, v in original.items()}
        assert detect_format(renamed) == layout
        state, new_header = normalize_for_diffusers(renamed, header, source="x.safetensors")
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], v) for k, v in original.items())
        assert new_header == {"format": "pt", **header}


def test_peft_save_pretrained_file_takes_alpha_from_adapter_config(trained, tmp_path, pipe):
    """PEFT keeps lora_alpha in adapter_config.json: without it the scale would silently be 1, not 2."""
    source, modules = trained
    original, header = read(source)
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file({"base_model.model." + k.removeprefix("transformer."): v for k, v in original.items()},
              folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = unpack_adapter_config(header)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    name = load_lora_into_transformer(pipe.transformer, folder / "adapter_model.safetensors")
    layers = lora_layers(pipe.transformer, name)
    pipe.unload_lora_weights()
    assert set(layers) == set(modules) and set(layers.values()) == {(RANK, ALPHA / RANK)}


def test_k5tune_alpha_is_used_without_a_peft_config(trained):
    original, header = read(trained[0])
    facts_only = {k: v for k, v in header.items() if k.startswith("k5tune.")}
    comfy, _ = to_comfyui(original, facts_only)
    assert {v.item() for k, v in comfy.items() if k.endswith(".alpha")} == {ALPHA}
    comfy, _ = to_comfyui(original, {})  # nothing says otherwise: alpha = rank (scale 1, diffusers' default)
    assert {v.item() for k, v in comfy.items() if k.endswith(".alpha")} == {RANK}


def test_unknown_layout_raises_a_clear_error():
    weird = {"lora_unet_blocks_0_attn.lora_down.weight": torch.zeros(2, 4),
             "lora_unet_blocks_0_attn.lora_up.weight": torch.zeros(4, 2)}
    assert detect_format(weird) == "unknown"
    with pytest.raises(K5TuneError) as info:
        normalize_for_diffusers(weird, {}, source="my_lora.safetensors")
    message = str(info.value)
    assert "my_lora.safetensors" in message and "\n" not in message
    assert all(f"'{key}'" in message for key in weird)
    mixed = {"transformer.out_layer.out_layer.lora_A.weight": torch.zeros(2, 4),
             "diffusion_model.out_layer.out_layer.lora_up.weight": torch.zeros(4, 2)}
    assert detect_format(mixed) == "unknown" and detect_format({}) == "unknown"
    with pytest.raises(K5TuneError, match="lacks"):
        to_comfyui({"transformer.out_layer.out_layer.lora_A.weight": torch.zeros(2, 4)}, {})


# --- the command -----------------------------------------------------------------------------------------


def test_convert_lora_command_both_ways(trained, tmp_path, capsys):
    source, _ = trained
    comfy = tmp_path / "comfy.safetensors"
    assert main(["convert-lora", str(source.parent), str(comfy), "--to", "comfyui"]) == 0
    assert str(comfy) in capsys.readouterr().out
    assert detect_format(load_file(comfy)) == "comfyui"
    out = tmp_path / "out"
    out.mkdir()
    assert main(["convert-lora", str(comfy), str(out), "--to", "diffusers"]) == 0
    state, _, _ = read_lora(out)  # a folder works as input: pytorch_lora_weights.safetensors inside
    original = load_file(source)
    assert state.keys() == original.keys() and all(torch.equal(state[k], v) for k, v in original.items())


@pytest.mark.parametrize("case", ["missing", "not_safetensors", "unknown_layout", "empty_folder"])
def test_convert_lora_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    source = tmp_path / "in.safetensors"
    if case == "not_safetensors":
        source.write_bytes(b"this is not a safetensors file")
    elif case == "unknown_layout":
        save_file({"model.layers.0.weight": torch.zeros(2, 2)}, source)
    elif case == "empty_folder":
        source = tmp_path
    assert main(["convert-lora", str(source), str(tmp_path / "out.safetensors"), "--to", "comfyui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("k5tune: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()
