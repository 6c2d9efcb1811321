"""Streaming Qwen2.5-VL through the device a layer at a time while caching prompts.

On the CPU the onload device is the CPU too, but every part still goes through diffusers' group
offload hooks, so the tests see the same module calls, the same order and the same embeddings as a
GPU run; they check the embeddings are exactly those of the model held whole, and that the decoder
layers are brought in one at a time.
"""

from __future__ import annotations

import pytest
import torch

from k5tune.models.fullsize import (
    CLIP_L_TEXT,
    HUNYUAN_VIDEO_VAE,
    clip_l_text_config,
    meta_parameter_bytes,
    qwen25_vl_7b_config,
)
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.encoding import MAX_CAPTION_TOKENS, encode_prompts, text_pipeline
from k5tune.models.kandinsky5.text_stream import (
    GIB,
    TEXT_ACTIVATION_HEADROOM,
    should_stream_text_encoder,
    stream_text_encoder,
)

CAPTIONS = [
    "a red circle moving to the right",
    "",
    "two  words &amp; <b>markup</b>",
    "a long caption " + " ".join(f"word{i}" for i in range(300)),  # truncated by the pipeline: encoded alone
    "a blue square sliding downwards across a dark, empty background, slowly",
]


class GroupRecorder:
    """Calls the real diffusers ModuleGroup.onload_/offload_ and records which layers were resident."""

    def __init__(self, monkeypatch, model):
        from diffusers.hooks.group_offloading import ModuleGroup

        self.layer_ids = {id(layer): i for i, layer in enumerate(model.model.language_model.layers)}
        self.named = {id(model.model.language_model.embed_tokens): "embed_tokens", id(model.lm_head): "lm_head",
                      id(model.model.visual): "visual"}
        self.resident: set[int] = set()
        self.max_resident = 0
        self.onloads: list[str] = []
        real_onload, real_offload = ModuleGroup.onload_, ModuleGroup.offload_

        def onload(group):
            self.onloads.append(self._name(group))
            self.resident |= self._layers(group)
            self.max_resident = max(self.max_resident, len(self.resident))
            return real_onload(group)

        def offload(group):
            self.resident -= self._layers(group)
            return real_offload(group)

        monkeypatch.setattr(ModuleGroup, "onload_", onload)
        monkeypatch.setattr(ModuleGroup, "offload_", offload)

    def _layers(self, group) -> set[int]:
        return {self.layer_ids[id(m)] for m in group.modules if id(m) in self.layer_ids}

    def _name(self, group) -> str:
        layers = sorted(self._layers(group))
        if layers:
            return f"layers.{layers[0]}"
        leader = id(group.onload_leader)
        return self.named.get(leader, type(group.onload_leader).__name__)


def _components(model_dir: str) -> Kandinsky5Components:
    return Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", model_dir))


def test_streamed_encoding_equals_the_whole_model_and_holds_one_layer_at_a_time(tiny_model_dir, monkeypatch):
    cpu = torch.device("cpu")
    plain_parts = _components(tiny_model_dir)
    plain = encode_prompts(text_pipeline(plain_parts, plain_parts.text_encoder(), plain_parts.text_encoder_2()),
                           CAPTIONS, cpu, torch.float32)

    parts = _components(tiny_model_dir)
    qwen = parts.text_encoder()
    stream_text_encoder(qwen, cpu)
    recorder = GroupRecorder(monkeypatch, qwen)
    streamed = encode_prompts(text_pipeline(parts, qwen, parts.text_encoder_2()), CAPTIONS, cpu, torch.float32)

    for caption, ours, reference in zip(CAPTIONS, streamed, plain, strict=True):
        assert torch.equal(ours.qwen, reference.qwen), caption[:40]
        assert torch.equal(ours.clip, reference.clip), caption[:40]
    assert streamed[3].qwen.shape[0] == MAX_CAPTION_TOKENS
    # two forward passes (the batch, then the truncated caption alone); each brings the embedding,
    # every decoder layer in order, the model's final norm/rotary and the head; never the vision tower
    layers = [f"layers.{i}" for i in range(len(qwen.model.language_model.layers))]
    one_pass = ["embed_tokens", "Qwen2_5_VLTextModel", *layers, "lm_head"]
    assert recorder.onloads == one_pass * 2
    assert recorder.max_resident == 1 and not recorder.resident


def test_streaming_rule():
    gib15 = int(15.4 * GIB)
    assert should_stream_text_encoder(True, gib15, None)  # asked for: streamed, GPU or not
    assert should_stream_text_encoder(True, gib15, 80 * GIB)
    assert not should_stream_text_encoder(False, gib15, None)  # CPU run, not asked for
    assert not should_stream_text_encoder(False, gib15, 79 * GIB)  # an 80 GB card holds it
    assert should_stream_text_encoder(False, gib15, 16 * GIB)  # weights fit, activations would not
    assert not should_stream_text_encoder(False, gib15, gib15 + TEXT_ACTIVATION_HEADROOM + 1)


def test_streaming_refuses_a_model_of_another_layout():
    with pytest.raises(TypeError, match="cannot stream"):
        stream_text_encoder(torch.nn.Linear(2, 2), "cpu")


def test_released_component_sizes():
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import CLIPTextModel, Qwen2_5_VLForConditionalGeneration

    # Qwen2.5-VL-7B-Instruct has 8.29B parameters (vision tower included); CLIP-L's text tower 123M
    qwen = meta_parameter_bytes(lambda: Qwen2_5_VLForConditionalGeneration(qwen25_vl_7b_config()), 1)
    assert qwen == 8_292_166_656
    assert meta_parameter_bytes(lambda: CLIPTextModel(clip_l_text_config()), 1) == 123_060_480
    assert clip_l_text_config().hidden_size == CLIP_L_TEXT["hidden_size"] == 768
    # diffusers' defaults are the released HunyuanVideo VAE: the folder scripts rely on either
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo()
    config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vae.config.items() if k in HUNYUAN_VIDEO_VAE}
    assert config == HUNYUAN_VIDEO_VAE
