"""Trackers (tensorboard, wandb offline) and the Hub upload, which happens only when asked."""

from __future__ import annotations

import pytest

from k5tune.config import load_config
from k5tune.workflow import train
from tests.helpers import make_project

VALIDATE = {"max_train_steps": 2, "validation_prompt": "a red circle moving to the right", "validation_steps": 1,
            "validation_resolution": "32x48", "validation_num_video_frames": 5, "validation_num_inference_steps": 2}


def test_tensorboard_gets_scalars_and_validation_videos(tmp_path, monkeypatch, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = make_project(tmp_path, tiny_model_dir, {**VALIDATE, "report_to": "tensorboard",
                                                      "tracker_run_name": "run1"})
    monkeypatch.chdir(folder)
    train(load_config())
    events = EventAccumulator(str(folder / "output" / "logs" / "run1"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for name in ("loss", "lr", "grad_norm", "step_seconds"):
        assert f"train/{name}" in tags["scalars"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    images = events.Images("validation/prompt-00")
    assert [i.step for i in images] == [1, 2]
    assert images[0].encoded_image_string[:6] == b"GIF89a"  # animated: TensorBoard plays it


@pytest.mark.slow
def test_wandb_offline(tmp_path, monkeypatch, tiny_model_dir):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = make_project(tmp_path, tiny_model_dir, {**VALIDATE, "report_to": "wandb", "tracker_run_name": "w1"})
    monkeypatch.chdir(folder)
    train(load_config())
    runs = list((folder / "output" / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds its log"


class FakeHub:
    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, exist_ok):
        FakeHub.calls.append(("create_repo", repo_id))

    def upload_folder(self, **kwargs):
        FakeHub.calls.append(("upload_folder", kwargs))
        return type("Info", (), {"commit_url": f"https://hub.example/{kwargs['repo_id']}/commit/1"})()


@pytest.mark.slow
def test_push_to_hub_only_when_asked(tmp_path, monkeypatch, tiny_model_dir):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls = []
    folder = make_project(tmp_path, tiny_model_dir, {"max_train_steps": 1})
    monkeypatch.chdir(folder)
    assert train(load_config()).hub_url is None
    assert FakeHub.calls == []
    result = train(load_config("config/config.json", {"push_to_hub": True, "hub_model_id": "me/my-lora",
                                                       "output_dir": "output-hub"}))
    assert FakeHub.calls[0] == ("create_repo", "me/my-lora")
    upload = FakeHub.calls[1][1]
    assert upload["repo_id"] == "me/my-lora" and "pytorch_lora_weights.safetensors" in upload["allow_patterns"]
    assert result.hub_url.endswith("/commit/1")


def test_push_to_hub_needs_a_repository():
    from k5tune.config.loading import build_train_config
    from k5tune.errors import ConfigError

    with pytest.raises(ConfigError, match="hub_model_id"):
        build_train_config({"push_to_hub": True}, "config.json")

