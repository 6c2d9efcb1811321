"""Image-to-video: the first frame is placed exactly as Kandinsky5I2VPipeline places its image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.config.loading import build_train_config
from k5tune.errors import ConfigError
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5.encoding import encode_video
from k5tune.models.kandinsky5.model_input import first_frame_loss_weights, with_first_frame_condition
from k5tune.train import objective, trainer
from k5tune.validate.media import read_video_info
from k5tune.workflow import train
from tests.helpers import make_i2v_project


def i2v_pipeline(model_dir: str):
    from diffusers import Kandinsky5I2VPipeline

    pipe = Kandinsky5I2VPipeline.from_pretrained(model_dir)
    pipe.prompt_template_encode_start_idx = Kandinsky5Components(
        resolve_model_source("i2v-lite-5s", model_dir)).prompt_start_index
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_first_frame_placement_equals_the_pipeline_prepare_latents(tiny_i2v_model_dir):
    pipe = i2v_pipeline(tiny_i2v_model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    reference = pipe.prepare_latents(image, 1, 16, 32, 48, 17, torch.float32, torch.device("cpu"),
                                     torch.Generator().manual_seed(5))
    # the same draws in the same order: the noise, then the image posterior sample
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 5, 4, 6, 16, generator=generator)
    pixels = pipe.video_processor.preprocess(image, height=32, width=48).unsqueeze(2)
    image_latent = pipe.vae.encode(pixels).latent_dist.sample(generator=generator) * pipe.vae.config.scaling_factor
    ours = with_first_frame_condition(noise, image_latent.permute(0, 2, 3, 4, 1))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert ours[..., 32].flatten(1).amax(1).item() == 1 and ours[:, 1:, ..., 32].abs().sum() == 0
    assert ours[..., 16:32].abs().sum() == 0  # conditioning channels stay zero


def test_cached_first_frame_is_the_image_encoding(tiny_i2v_model_dir):
    """The first frame of a clip, encoded alone, as the pipeline encodes an image (posterior mean)."""
    pipe = i2v_pipeline(tiny_i2v_model_dir)
    clip = torch.rand(1, 3, 17, 32, 48) * 2 - 1
    ours = encode_video(pipe.vae, clip[:, :, :1])
    reference = pipe.vae.encode(clip[:, :, :1]).latent_dist.mode() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(ours, reference.permute(0, 2, 3, 4, 1))


def test_frame_zero_is_out_of_the_loss():
    prediction, target = torch.randn(2, 5, 2, 2, 16), torch.randn(2, 5, 2, 2, 16)
    weights = first_frame_loss_weights(2, 5)
    loss = objective.flow_matching_loss(prediction, target, weights)
    changed = prediction.clone()
    changed[:, 0] += 100
    assert objective.flow_matching_loss(changed, target, weights) == loss
    torch.testing.assert_close(loss, (prediction[:, 1:] - target[:, 1:]).square().mean())


class ForwardSpy:
    """Records the visual input of every transformer call (training steps and denoising steps)."""

    def __init__(self, transformer):
        self.inputs: list[torch.Tensor] = []
        self.handle = transformer.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.inputs.append(kwargs["hidden_states"].detach().float().clone())


def test_i2v_train_and_validate_with_an_image(tmp_path, monkeypatch, tiny_i2v_model_dir):
    image_path = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(image_path)
    folder = make_i2v_project(tmp_path / "p", tiny_i2v_model_dir, {"validation_image": str(image_path)})
    monkeypatch.chdir(folder)
    spies: list[ForwardSpy] = []
    vae_loaded_in_steps = []
    real_setup, real_step = trainer.Trainer.setup, trainer.Trainer.train_step

    trainers = []

    def setup(self, stage):
        real_setup(self, stage)
        trainers.append(self)
        spies.append(ForwardSpy(self.transformer))

    def train_step(self, group):
        vae_loaded_in_steps.append("vae" in self.components.loaded())
        return real_step(self, group)

    monkeypatch.setattr(trainer.Trainer, "setup", setup)
    monkeypatch.setattr(trainer.Trainer, "train_step", train_step)
    result = train(load_config())
    assert vae_loaded_in_steps == [False, False]  # nothing is encoded or decoded at train time

    training_inputs, validation_inputs = spies[0].inputs[:2], spies[0].inputs[2:]
    # training: frame 0 is the cached clean first-frame latent, mask 1 at frame 0 only
    run = trainers[0]
    cached_first_frames = [run.cache.sample(r.key, r.backend_id)["first_frame"] for r in run.records]
    for model_input in training_inputs:
        assert any(torch.equal(model_input[0, :1, ..., :16], f) for f in cached_first_frames)  # clean, not noised
        assert torch.all(model_input[:, 0, ..., 32] == 1) and torch.all(model_input[:, 1:, ..., 32] == 0)
        assert model_input[..., 16:32].abs().sum() == 0
    # validation: at every denoising step the image latent sits at frame 0 with the mask set
    assert len(validation_inputs) == 3 * 2  # 3 steps, conditional + unconditional pass
    pipe = i2v_pipeline(tiny_i2v_model_dir)
    generator = torch.Generator().manual_seed(42)  # validation_seed + prompt index
    torch.randn(1, 5, 4, 6, 16, generator=generator)
    pixels = pipe.video_processor.preprocess(Image.open(image_path).convert("RGB"), height=32, width=48)
    image_latent = pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.sample(generator=generator)
    image_latent = (image_latent * pipe.vae.config.scaling_factor).permute(0, 2, 3, 4, 1)
    for model_input in validation_inputs:
        torch.testing.assert_close(model_input[:, :1, ..., :16], image_latent, atol=1e-5, rtol=1e-5)
        assert torch.all(model_input[:, 0, ..., 32] == 1) and torch.all(model_input[:, 1:, ..., 32] == 0)
    info = read_video_info(result.videos[-1].path)
    assert (info["frames"], info["height"], info["width"]) == (17, 32, 48)
    assert result.videos[-1].image == image_path


def test_i2v_validation_without_an_image_uses_a_text_to_video_first_frame(tmp_path, monkeypatch,
                                                                          tiny_i2v_model_dir):
    folder = make_i2v_project(tmp_path, tiny_i2v_model_dir, {"max_train_steps": 1})
    monkeypatch.chdir(folder)
    video = train(load_config()).videos[-1]
    assert video.image.name == "prompt-00-first-frame.png"
    assert Image.open(video.image).size == (48, 32)
    assert read_video_info(video.path)["frames"] == 17


def test_i2v_rejects_13_frames_or_fewer(tmp_path, monkeypatch, tiny_i2v_model_dir):
    with pytest.raises(ConfigError, match="too few for image-to-video"):
        build_train_config({"model_flavour": "i2v-lite-5s", "validation_num_video_frames": 13}, "config.json")
    assert build_train_config({"validation_num_video_frames": 13}, "config.json")  # T2V is fine
    folder = make_i2v_project(tmp_path, tiny_i2v_model_dir, {})
    datasets = json.loads((folder / "config" / "multidatabackend.json").read_text())
    datasets[0]["video"]["num_frames"] = 13
    (folder / "config" / "multidatabackend.json").write_text(json.dumps(datasets))
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match="key 'video.num_frames'"):
        load_config()


def test_generate_t2v_and_i2v(tmp_path, tiny_model_dir, tiny_i2v_model_dir, capsys):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(image)
    common = ["--resolution", "32x48", "--steps", "2", "--prompt", "a cat"]
    assert main(["generate", "--model", tiny_model_dir, "--frames", "9", *common,
                 "--output", str(tmp_path / "t2v.mp4")]) == 0
    assert read_video_info(tmp_path / "t2v.mp4")["frames"] == 9
    assert main(["generate", "--model", tiny_i2v_model_dir, "--image", str(image), "--frames", "17", *common,
                 "--output", str(tmp_path / "i2v.mp4")]) == 0
    info = read_video_info(tmp_path / "i2v.mp4")
    assert (info["frames"], info["height"], info["width"]) == (17, 32, 48)
    capsys.readouterr()
    assert main(["generate", "--model", tiny_i2v_model_dir, "--frames", "17", *common,
                 "--output", str(tmp_path / "x.mp4")]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["generate", "--model", tiny_i2v_model_dir, "--image", str(image), "--frames", "13", *common,
                 "--output", str(tmp_path / "x.mp4")]) == 2
