"""Flavour registry, tiny model and component loading."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from k5tune.models.flavours import FLAVOURS, LITE_TRANSFORMER, PRO_TRANSFORMER
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.components import ModelLoadError
from k5tune.models.tiny import PROMPT_INDEX_FILE, make_tiny_model

SPEC_FLAVOURS = {
    "t2v-lite-sft-5s": "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers",
    "t2v-lite-pretrain-5s": "kandinskylab/Kandinsky-5.0-T2V-Lite-pretrain-5s-Diffusers",
    "t2v-lite-sft-10s": "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers",
    "t2v-lite-pretrain-10s": "kandinskylab/Kandinsky-5.0-T2V-Lite-pretrain-10s-Diffusers",
    "t2v-pro-sft-5s-hd": "kandinskylab/Kandinsky-5.0-T2V-Pro-sft-5s-Diffusers",
    "t2v-pro-sft-10s-hd": "kandinskylab/Kandinsky-5.0-T2V-Pro-sft-10s-Diffusers",
    "t2v-pro-pretrain-5s-hd": "kandinskylab/Kandinsky-5.0-T2V-Pro-pretrain-5s-Diffusers",
    "t2v-pro-pretrain-10s-hd": "kandinskylab/Kandinsky-5.0-T2V-Pro-pretrain-10s-Diffusers",
    "i2v-lite-5s": "kandinskylab/Kandinsky-5.0-I2V-Lite-5s-Diffusers",
    "i2v-pro-sft-5s": "kandinskylab/Kandinsky-5.0-I2V-Pro-sft-5s-Diffusers",
}


def test_registry_has_the_ten_flavours_of_the_spec():
    assert {name: f.hub_id for name, f in FLAVOURS.items()} == SPEC_FLAVOURS
    for name, flavour in FLAVOURS.items():
        assert flavour.task == name[:3]
        assert flavour.size == ("pro" if "-pro-" in name else "lite")
        assert flavour.clip_seconds == (10 if "10s" in name else 5)
        # 10 s and Pro HD checkpoints use sparse nabla attention (SPEC §2)
        assert flavour.attention == ("nabla" if ("10s" in name or name.endswith("-hd")) else "regular")
        assert flavour.transformer_config["attention_type" if flavour.attention == "nabla" else "model_dim"]


def _parameter_count(config: dict) -> int:
    from diffusers import Kandinsky5Transformer3DModel

    with torch.device("meta"):
        model = Kandinsky5Transformer3DModel(**config)
    return sum(p.numel() for p in model.parameters())


def test_full_size_configs_have_the_published_sizes():
    lite = _parameter_count(LITE_TRANSFORMER)
    pro = _parameter_count(PRO_TRANSFORMER)
    assert 1.7e9 < lite < 2.2e9, lite  # "Lite ≈ 2B"
    assert 18.5e9 < pro < 20e9, pro  # "Pro ≈ 19B" (19.3B)


def test_make_tiny_model_is_fast_and_loads_in_the_diffusers_pipeline(tmp_path):
    from diffusers import Kandinsky5T2VPipeline

    start = time.perf_counter()
    make_tiny_model(tmp_path / "tiny")
    assert time.perf_counter() - start < 10
    pipe = Kandinsky5T2VPipeline.from_pretrained(tmp_path / "tiny")
    pipe.prompt_template_encode_start_idx = json.loads((tmp_path / "tiny" / PROMPT_INDEX_FILE).read_text())[
        "prompt_template_encode_start_idx"
    ]
    video = pipe(
        prompt="a red circle moves right", height=32, width=48, num_frames=9, num_inference_steps=2,
        output_type="np", generator=torch.Generator().manual_seed(0),
    ).frames
    assert video.shape == (1, 9, 32, 48, 3)
    assert np.isfinite(video).all()


def test_tiny_i2v_model_runs_in_the_i2v_pipeline(tiny_i2v_model_dir):
    from diffusers import Kandinsky5I2VPipeline
    from PIL import Image

    pipe = Kandinsky5I2VPipeline.from_pretrained(tiny_i2v_model_dir)
    components = Kandinsky5Components(resolve_model_source("i2v-lite-5s", tiny_i2v_model_dir))
    pipe.prompt_template_encode_start_idx = components.prompt_start_index
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    video = pipe(image=image, prompt="a cat", height=32, width=48, num_frames=17, num_inference_steps=2,
                 output_type="np").frames
    assert video.shape == (1, 17, 32, 48, 3) and np.isfinite(video).all()


def test_tiny_transformer_is_alive(tiny_model_dir):
    """Modulation is randomised, so LoRA on the attentions gets a non-zero gradient."""
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    transformer = components.transformer()
    for name, module in transformer.named_modules():
        if name.endswith("modulation.out_layer"):
            assert module.weight.abs().sum() > 0, name
    x = torch.randn(1, 2, 4, 4, 33)
    out = transformer(
        hidden_states=x, encoder_hidden_states=torch.randn(1, 5, 32), timestep=torch.tensor([500.0]),
        pooled_projections=torch.randn(1, 32), visual_rope_pos=[torch.arange(2), torch.arange(2), torch.arange(2)],
        text_rope_pos=torch.arange(5), return_dict=False,
    )
    assert out.shape == (1, 2, 4, 4, 16)
    out.square().mean().backward()
    grad = transformer.visual_transformer_blocks[0].self_attention.to_query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_prompt_start_index_cuts_exactly_the_template(tiny_model_dir):
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    pipe = components.pipeline()
    tokenizer = components.tokenizer()
    caption = "a green square bounces"
    ids = tokenizer([pipe.prompt_template.format(caption)])["input_ids"][0]
    kept = tokenizer.decode(ids[components.prompt_start_index:])
    assert kept.startswith(caption)


def test_components_load_lazily_in_the_dtype_asked(tiny_model_dir):
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", tiny_model_dir))
    assert components.loaded() == []
    transformer = components.transformer(dtype=torch.bfloat16)
    assert components.loaded() == ["transformer"]
    assert transformer.visual_transformer_blocks[0].self_attention.to_query.weight.dtype == torch.bfloat16
    # diffusers keeps the modulation and time embeddings in fp32 (_keep_in_fp32_modules)
    assert transformer.time_embeddings.in_layer.weight.dtype == torch.float32
    assert components.vae(dtype=torch.bfloat16).dtype == torch.bfloat16
    assert components.text_encoder(dtype=torch.bfloat16).dtype == torch.bfloat16
    assert components.text_encoder_2(dtype=torch.float32).dtype == torch.float32
    assert type(components.tokenizer()).__name__ == "Qwen2Tokenizer"
    assert type(components.tokenizer_2()).__name__ == "CLIPTokenizer"
    assert components.scheduler_shift() == 5.0
    assert components.vae_scaling_factor() == pytest.approx(0.476986)
    components.unload("vae")
    assert "vae" not in components.loaded()


def test_hub_id_is_used_when_no_override():
    source = resolve_model_source("t2v-pro-sft-10s-hd")
    assert source.path_or_id == "kandinskylab/Kandinsky-5.0-T2V-Pro-sft-10s-Diffusers"
    assert not source.is_local


def test_unreachable_hub_id_is_a_clear_error():
    components = Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s"))  # HF_HUB_OFFLINE=1 in tests
    with pytest.raises(ModelLoadError) as info:
        components.scheduler()
    assert "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers" in str(info.value)
    assert "pretrained_model_name_or_path" in str(info.value)


def test_a_hub_config_is_fetched_once_per_run_and_an_offline_failure_waits_once(tmp_path, monkeypatch):
    """Training reads the transformer's config from several places; each hub read is a network round trip."""
    import huggingface_hub

    from k5tune.models import source as source_module
    from k5tune.models.source import transformer_config_of

    monkeypatch.setattr(source_module, "_hub_configs", {})
    downloads: list[str] = []
    written = tmp_path / "config.json"
    written.write_text(json.dumps({"attention_type": "nabla", "P": 0.9}))

    def download(repo_id, filename, subfolder=None, revision=None):
        downloads.append(repo_id)
        if repo_id.endswith("Pro-sft-10s-Diffusers"):
            raise OSError("offline")
        return str(written)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    lite = type("Cfg", (), {"model_flavour": "t2v-lite-sft-10s", "pretrained_model_name_or_path": None,
                            "revision": None})()
    for _ in range(3):
        config, where = transformer_config_of(lite)
        assert config == {"attention_type": "nabla", "P": 0.9}
        assert where.endswith("Lite-sft-10s-Diffusers/transformer/config.json")
        config["P"] = 0.5  # a caller's edit stays its own
    pro = type("Cfg", (), {"model_flavour": "t2v-pro-sft-10s-hd", "pretrained_model_name_or_path": None,
                           "revision": None})()
    for _ in range(2):
        assert transformer_config_of(pro)[1] == "flavour t2v-pro-sft-10s-hd"  # the registry's, read offline
    assert len(downloads) == 2
