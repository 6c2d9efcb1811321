"""`k5tune configure`: the wizard with scripted answers, `--yes`, and the real command in a pseudo-terminal."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pty
import select
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from k5tune.cli import main
from k5tune.config import load_config
from k5tune.errors import ConfigError
from k5tune.hostmem import HostMemory
from k5tune.wizard import Aborted, DefaultsTerminal, GpuInfo, run_wizard

# The questions in order (fragment of the prompt each one shows); optional ones are marked below.
STEPS = [
    ("flavour", "Model flavour"),
    ("model_path", "pretrained_model_name_or_path"),
    ("folder", "instance_data_dir"),
    ("captions", "caption_strategy"),
    ("resolution", "(resolution)"),
    ("frames", "video.num_frames"),
    ("fps", "frame_rate"),
    ("gpu", "GPU memory"),  # only without a detected GPU
    ("gpus", "num_processes"),  # only with several GPUs: asked only when given below
    ("preset", "Memory preset"),
    ("prompt", "validation_prompt"),
    ("val_res", "validation_resolution"),  # only with a validation prompt
    ("val_frames", "validation_num_video_frames"),  # only with a validation prompt
    ("lr", "learning_rate"),
    ("steps", "max_train_steps"),
    ("rank", "lora_rank"),
    ("output", "output_dir"),
    ("write", "Write "),
]


def script(skip: tuple[str, ...] = (), after: dict[str, list[tuple[str, str]]] | None = None,
           **replies: str | list[str]) -> list[tuple[str, str]]:
    """(prompt fragment, answer) pairs for the whole flow: "" (the default) unless given; a list re-answers."""
    pairs: list[tuple[str, str]] = []
    for step, fragment in STEPS:
        if step in skip or (step == "gpus" and step not in replies):
            continue
        reply = replies.get(step, "")
        for answer in reply if isinstance(reply, list) else [reply]:
            pairs.append((fragment, answer))
        pairs.extend((after or {}).get(step, []))
    return pairs


class ScriptedTerminal:
    """Answers questions from a script, checking that each prompt is the expected one."""

    interactive = True

    def __init__(self, answers: list[tuple[str, str]]):
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.lines: list[str] = []

    def ask(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        fragment, answer = self.answers.pop(0)
        assert fragment in prompt, f"expected a question about {fragment!r}, got {prompt!r}"
        return answer

    def say(self, text: str = "") -> None:
        self.lines.append(text)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def no_gpu() -> None:
    return None


def gpu(gib: float, count: int = 1):
    return lambda: GpuInfo("Test GPU", gib, count)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A project folder with two captioned clips (never decoded: the wizard only counts them)."""
    monkeypatch.chdir(tmp_path)
    clips = tmp_path / "datasets" / "videos"
    clips.mkdir(parents=True)
    for name, caption in (("fox", "a red fox runs through snow"), ("cat", "a cat jumps")):
        (clips / f"{name}.mp4").write_bytes(b"not decoded")
        (clips / f"{name}.txt").write_text(caption + "\n")
    return tmp_path


def wizard(answers, gpu_detector=no_gpu, config="config/config.json", datasets=None,
           host: HostMemory | None = None) -> ScriptedTerminal:
    """The wizard with scripted answers; `host`: this machine's CPU memory as the wizard sees it (None:
    unknown, so no preset is held back for its pinned memory)."""
    terminal = ScriptedTerminal(answers)
    run_wizard(terminal, config, datasets, gpu_detector=gpu_detector, host_detector=lambda: host)
    assert not terminal.answers, f"unused answers: {terminal.answers}"
    return terminal


def read(path: str) -> object:
    return json.loads(Path(path).read_text())


def test_answers_are_written_and_load_with_load_config(workdir):
    terminal = wizard(script(flavour="9", folder="datasets/videos", resolution="480", frames="49", fps="24",
                             gpu="24", prompt="a dog runs on a beach", val_res="480x848", val_frames="49",
                             lr="2e-4", steps="300", rank="32", output="output/dog"))
    assert "found 2 clips, 2 with a .txt caption" in terminal.output
    loaded = load_config("config/config.json")
    train, video = loaded.train, loaded.media_backends[0]
    assert train.model_flavour == "i2v-lite-5s"
    assert (train.learning_rate, train.max_train_steps, train.lora_rank) == (2e-4, 300, 32)
    assert train.effective_lora_alpha == 32  # the example's alpha followed the rank
    assert train.output_dir == "output/dog"
    assert (train.validation_prompt, train.validation_resolution) == ("a dog runs on a beach", "480x848")
    assert (video.instance_data_dir, video.resolution, video.video.num_frames) == ("datasets/videos", 480, 49)
    assert video.video.min_frames == 49 and video.video.frame_rate == 24
    assert loaded.text_embeds_backend.cache_dir == "cache/text/kandinsky5"
    # the 24-32 GB preset: selective checkpointing (12.7 GiB measured) fits; caching streams Qwen2.5-VL and
    # slices the VAE's convolutions; nothing of the training is offloaded
    assert train.offload_during_startup and train.vae_enable_patch_conv and not train.vae_enable_tiling
    assert train.gradient_checkpointing and train.gradient_checkpointing_policy == "selective"
    assert not train.enable_group_offload and not train.activations_offloaded
    assert "k5tune train --dry-run" in terminal.output
    assert Path("config/config.json").read_text().startswith('{\n  "')  # pretty-printed
    for name in ("config/config.json", "config/multidatabackend.json"):  # the wizard's format, byte for byte
        text = Path(name).read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_a_wrong_frame_count_is_asked_again_with_the_nearest_counts(workdir):
    terminal = wizard(script(frames=["60", "sixty", "61"]))
    frame_prompts = [p for p in terminal.prompts if "video.num_frames" in p]
    assert len(frame_prompts) == 3
    assert "the nearest valid counts are 57 and 61" in terminal.output
    assert "valid integer" in terminal.output
    assert read("config/multidatabackend.json")[0]["video"]["num_frames"] == 61


def test_image_to_video_rejects_too_few_frames(workdir):
    terminal = wizard(script(flavour="i2v-lite-5s", frames=["13", "17"], val_frames=""))
    assert "too few for image-to-video" in terminal.output
    assert read("config/config.json")["validation_num_video_frames"] == 17  # follows the training count


def test_bad_resolutions_are_asked_again(workdir):
    terminal = wizard(script(resolution=["512x768", "0", "384"], val_res=["512 by 768", "480x854"]))
    out = terminal.output
    assert "one number: the shorter edge" in out
    assert "greater than 0" in out
    assert "is not a resolution; write HEIGHTxWIDTH" in out
    assert "rounded down to multiples of 16: 480x848" in out
    assert read("config/multidatabackend.json")[0]["resolution"] == 384
    assert read("config/config.json")["validation_resolution"] == "480x854"


def test_bad_numbers_and_choices_are_asked_again(workdir):
    terminal = wizard(script(flavour=["99", "t2v-ultra", "t2v-lite-sft-10s"], gpu=["lots", "48"],
                             lr=["-1", "1e-4"], rank=["0", "8"], write=["maybe", "y"]))
    out = terminal.output
    assert "'99' is not one of the choices" in out and "'t2v-ultra' is not one of the choices" in out
    assert "'lots' is not a number" in out
    assert out.count("greater than 0") == 2
    assert "answer y or n" in out
    config = read("config/config.json")
    assert (config["model_flavour"], config["lora_rank"]) == ("t2v-lite-sft-10s", 8)
    assert config["gradient_checkpointing_policy"] == "selective"  # the 40-48 GB preset


EXISTING_CONFIG = {
    "model_family": "kandinsky5-video",
    "--model_flavour": "t2v-lite-sft-10s",  # SimpleTuner-style key
    "data_backend_config": "config/multidatabackend.json",
    "framerate": 30,  # alias of frame_rate
    "learning_rate": 5e-5,
    "max_train_steps": 750,
    "lora_rank": 8,
    "lora_alpha": 4,
    "validation_prompt": "a sailboat on a lake, the camera pans left",
    "validation_resolution": "720x1280",
    "validation_num_video_frames": 33,
    "validation_guidance": 4.5,  # not asked: kept
    "seed": 1234,  # not asked: kept
    "report_to": "none",  # not asked: kept
    "offload_during_startup": False,
    "gradient_checkpointing_policy": "selective",
    "output_dir": "runs/boat",
}
EXISTING_DATASETS = [
    {"id": "boats", "type": "local", "dataset_type": "video", "instance_data_dir": "datasets/videos",
     "caption_strategy": "filename", "resolution": 384, "repeats": 3, "crop_style": "random",
     "video": {"num_frames": 33, "min_frames": 41, "frame_rate": 30, "bucket_strategy": "resolution_frames",
               "frame_interval": 8}},
    {"id": "stills", "type": "local", "dataset_type": "image", "instance_data_dir": "datasets/stills"},
    {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/t"},
]


def write_existing(config=EXISTING_CONFIG, datasets=EXISTING_DATASETS) -> None:
    Path("config").mkdir(exist_ok=True)
    Path("config/config.json").write_text(json.dumps(config, indent=4))
    Path("config/multidatabackend.json").write_text(json.dumps(datasets, indent=4))


def test_existing_values_are_offered_as_defaults_and_kept(workdir):
    write_existing()
    terminal = wizard(script())
    shown = "\n".join(terminal.prompts) + terminal.output
    for default in ("[t2v-lite-sft-10s]", "[datasets/videos]", "[filename]", "[384]", "[33]", "[30]", "[keep]",
                    "default: a sailboat on a lake, the camera pans left", "[720x1280]", "[5e-05]", "[750]", "[8]",
                    "[runs/boat]"):
        assert default in shown, default
    assert "editing backend 'boats'" in terminal.output
    config = read("config/config.json")
    expected = {("model_flavour" if k == "--model_flavour" else "frame_rate" if k == "framerate" else k): v
                for k, v in EXISTING_CONFIG.items()}
    assert config == expected  # same values, canonical key names, nothing added or lost
    assert read("config/multidatabackend.json") == EXISTING_DATASETS
    load_config("config/config.json")


def test_changing_frames_keeps_the_dataset_consistent(workdir):
    write_existing()
    terminal = wizard(script(frames="49", rank="16"))
    video = read("config/multidatabackend.json")[0]["video"]
    assert (video["num_frames"], video["min_frames"]) == (49, 49)
    assert "min_frames 41 -> 49" in terminal.output
    config = read("config/config.json")
    assert config["validation_num_video_frames"] == 49  # it followed the old training count (33)
    assert config["lora_alpha"] == 4 and "scale alpha/rank = 0.25" in terminal.output


def test_yes_writes_valid_files_without_any_input(workdir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # nothing to read: --yes must not ask
    assert main(["configure", "--yes"]) == 0
    loaded = load_config("config/config.json")
    assert loaded.train.model_flavour == "t2v-lite-sft-5s"
    assert loaded.train.validation_prompt == "a cat jumps"  # the first caption found (cat.txt sorts first)
    assert loaded.media_backends[0].video.num_frames == 61
    assert "wrote config/config.json and config/multidatabackend.json" in capsys.readouterr().out


def test_yes_keeps_existing_values(workdir):
    write_existing()
    run_wizard(DefaultsTerminal(say=lambda text: None), "config/config.json", gpu_detector=gpu(80.0))
    assert read("config/multidatabackend.json") == EXISTING_DATASETS
    config = read("config/config.json")
    assert config["model_flavour"] == "t2v-lite-sft-10s" and config["frame_rate"] == 30
    assert config["offload_during_startup"] is False and "vae_enable_patch_conv" not in config  # preset: keep
    before = Path("config/config.json").read_text()
    run_wizard(DefaultsTerminal(say=lambda text: None), "config/config.json", gpu_detector=gpu(80.0))
    assert Path("config/config.json").read_text() == before  # a second --yes run changes nothing


def test_memory_preset_follows_the_detected_gpu(workdir):
    terminal = wizard(script(skip=("gpu",)), gpu_detector=gpu(79.2))
    assert "GPU: Test GPU, 79.2 GiB" in terminal.output
    assert "[80gb]" in next(p for p in terminal.prompts if "Memory preset" in p)
    config = read("config/config.json")
    assert config["offload_during_startup"] is False and config["gradient_checkpointing_policy"] == "selective"


def test_several_gpus_offer_data_parallel_training(workdir):
    terminal = wizard(script(skip=("gpu",), gpus=["8", ""]), gpu_detector=gpu(79.2, count=4))
    assert "this machine has 4 GPUs" in terminal.output
    assert read("config/config.json")["num_processes"] == 4


def test_small_cards_get_group_offload_and_vae_tiling(workdir):
    terminal = wizard(script(gpu="8"))
    assert "[up-to-12gb]" in next(p for p in terminal.prompts if "Memory preset" in p)
    assert "below the" not in terminal.output  # 8 GiB is enough for Lite with group offload (4.1 GiB)
    train = load_config("config/config.json").train
    assert train.enable_group_offload and train.group_offload_type == "block_level"
    assert train.group_offload_blocks_per_group == 1 and train.group_offload_use_stream
    assert train.activations_offloaded  # the default with group offload
    # caching: patch conv would need ~10.4 GiB, tiles need 2.6 GiB
    assert train.vae_enable_tiling and not train.vae_enable_patch_conv and train.offload_during_startup
    assert not [n for n in train.notices() if "no effect" in n]


def test_a_very_small_card_is_told_to_lower_the_shape(workdir):
    terminal = wizard(script(gpu="4"))
    assert "below the ~4.1 GiB Lite needed at 512x768x61 with group offload" in terminal.output
    assert read("config/config.json")["enable_group_offload"] is True


def test_a_16gb_card_gets_activation_offload(workdir, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real_find_spec(name, *a))
    terminal = wizard(script(gpu="15.7"))
    assert "[16gb]" in next(p for p in terminal.prompts if "Memory preset" in p)
    assert "16gb-int8" not in terminal.output  # not offered without torchao
    train = load_config("config/config.json").train
    assert train.offload_activations is True and not train.enable_group_offload
    assert train.vae_enable_patch_conv and train.base_model_precision == "no_change"


def test_the_int8_preset_is_offered_only_with_torchao(workdir, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchao" else real_find_spec(name, *a))
    terminal = wizard(script(gpu="15.7", preset="16gb-int8"))
    assert "16 GB card, int8 base" in terminal.output
    assert "[16gb]" in next(p for p in terminal.prompts if "Memory preset" in p)  # still the recommendation
    train = load_config("config/config.json").train
    assert train.base_model_precision == "int8" and train.gradient_checkpointing_policy == "selective"
    assert train.offload_activations is None


def test_a_preset_resets_the_memory_keys_it_does_not_set(workdir):
    write_existing({**EXISTING_CONFIG, "enable_group_offload": True, "group_offload_use_stream": True,
                    "offload_activations": True, "vae_enable_patch_conv": True, "base_model_precision": "int8"})
    terminal = wizard(script(skip=("gpu",), preset="80gb"), gpu_detector=gpu(79.2))
    assert "[keep]" in next(p for p in terminal.prompts if "Memory preset" in p)
    config = read("config/config.json")
    for key in ("enable_group_offload", "group_offload_use_stream", "offload_activations", "base_model_precision",
                "vae_enable_tiling", "fsdp_enable"):
        assert key not in config, key
    assert config["offload_during_startup"] is False and config["vae_enable_patch_conv"] is False
    assert config["gradient_checkpointing_policy"] == "selective"
    assert "enable_group_offload: removed" in terminal.output


def test_ten_second_clips_get_the_preset_their_predicted_peak_fits(workdir):
    """The presets are measured at 512x768x61; at the 10 s flavour's 241 frames under NABLA the wizard
    recommends by the estimator's peaks (shown with each preset): activation offload on a 48 GB card,
    where `40-48gb` is predicted past the card."""
    terminal = wizard(script(flavour="t2v-lite-sft-10s", frames="241", skip=("gpu",)), gpu_detector=gpu(47.5))
    assert "Training 512x768, 241 frames, NABLA attention" in terminal.output
    assert "[16gb]" in next(p for p in terminal.prompts if "Memory preset" in p)
    listed = {line.split()[1]: line for line in terminal.lines if line.strip()[:2].rstrip(".").isdigit()}
    assert "at your shape: ~15.0 GiB predicted" in listed["16gb"]
    assert float(listed["40-48gb"].split("at your shape: ~")[1].split()[0]) > 47.5
    assert read("config/config.json")["offload_activations"] is True


def test_a_preset_that_pins_more_cpu_memory_than_the_machine_has_is_not_recommended(workdir):
    """Activation offload at 241 frames pins ~38 GiB of CPU memory; on a machine of 32 GB (~22 GiB for
    pinning) the wizard says so and recommends group offload (~15 GiB pinned), which the card also fits."""
    terminal = wizard(script(flavour="t2v-lite-sft-10s", frames="241", skip=("gpu",)), gpu_detector=gpu(47.5),
                      host=HostMemory(31.3, 28.0))
    assert "CPU memory: 31 GiB, ~22 GiB of it for offloading's pinned memory; not recommended, they pin more: " \
           "16gb (~38 GiB)" in terminal.output
    assert "[up-to-12gb]" in next(p for p in terminal.prompts if "Memory preset" in p)
    # a machine of 64 GB holds it (asked afresh: no files written yet)
    shutil.rmtree("config")
    terminal = wizard(script(flavour="t2v-lite-sft-10s", frames="241", skip=("gpu",)), gpu_detector=gpu(47.5),
                      host=HostMemory(62.6, 50.0))
    assert "not recommended, they pin more" not in terminal.output
    assert "[16gb]" in next(p for p in terminal.prompts if "Memory preset" in p)


def test_pro_group_offload_on_a_machine_too_small_for_its_pinned_weights_is_warned(workdir):
    """Pro's group offload keeps its 37 GiB of weights (and the activations: ~49 GiB in all) in pinned CPU
    memory: on a machine of 32 GB it is still the only preset for a 24 GB card, and the wizard says the
    run would be killed (not that the card is too small)."""
    terminal = wizard(script(flavour="t2v-pro-sft-5s-hd", skip=("gpu",)), gpu_detector=gpu(23.5),
                      host=HostMemory(31.3, 28.0))
    assert "! nothing else fits the card, but pro-group-offload needs ~49 GiB of pinned CPU memory" in terminal.output
    assert "no preset fits this shape within this machine's CPU memory" in terminal.output
    assert "no preset fits this shape on 23.5 GiB" not in terminal.output  # (the card is not what is short)
    assert "[pro-group-offload]" in next(p for p in terminal.prompts if "Memory preset" in p)


def test_cpu_memory_too_small_for_any_preset_at_the_shape_gets_the_shorter_clip(workdir):
    """Two 48 GB cards on a 15 GB machine: at 241 frames the presets the cards hold pin more than the
    machine spares, so the recommendation is for the shorter clip whose preset fits both."""
    terminal = wizard(script(flavour="t2v-lite-sft-10s", frames="241", skip=("gpu",), gpus="2"),
                      gpu_detector=gpu(47.5, count=2), host=HostMemory(15.0, 12.0))
    assert "! no preset fits this shape within this machine's CPU memory" in terminal.output
    advice = next(line for line in terminal.lines if "(recommended below) fits 512x768 with" in line)
    recommended, frames = advice.split()[0], int(advice.split(" with ")[1].split()[0])
    assert frames < 241 and f"set video.num_frames {frames} in the dataset file" in advice
    assert f"[{recommended}]" in next(p for p in terminal.prompts if "Memory preset" in p)


def test_a_shape_no_preset_fits_is_told_the_shorter_clip_that_fits(workdir):
    terminal = wizard(script(flavour="t2v-lite-sft-10s", frames="241", skip=("gpu",)), gpu_detector=gpu(11.6))
    assert "! no preset fits this shape on 11.6 GiB" in terminal.output
    assert "up-to-12gb (recommended below) fits 512x768 with 97 frames" in terminal.output
    assert "set video.num_frames 97 in the dataset file" in terminal.output
    assert "[up-to-12gb]" in next(p for p in terminal.prompts if "Memory preset" in p)


def test_pro_on_a_card_too_small_even_for_group_offload_recommends_lite(workdir):
    switch = {"gpu": [("Switch to t2v-lite-sft-5s", "y")]}
    terminal = wizard(script(flavour="t2v-pro-sft-5s-hd", gpu="12", after=switch))
    assert "even with group offload it needs ~11.4 GiB per GPU" in terminal.output
    config = read("config/config.json")
    assert config["model_flavour"] == "t2v-lite-sft-5s" and config["enable_group_offload"] is True  # up-to-12gb


@pytest.mark.parametrize(
    ("memory", "count", "advice", "preset", "expected"),
    [
        (23.5, 1, "group offload streams its blocks from CPU memory (11.4 GiB", "pro-group-offload",
         {"enable_group_offload": True, "group_offload_use_stream": True, "group_offload_blocks_per_group": 1}),
        (79.2, 1, "it fits a 79 GiB card whole", "pro-80gb",
         {"offload_activations": None, "enable_group_offload": None, "fsdp_enable": None}),
        (47.5, 1, "its weights fit a 48 GiB card; activation offload keeps the peak at 45.1 GiB", "pro-48gb",
         {"offload_activations": True, "enable_group_offload": None, "fsdp_enable": None}),
        (39.4, 2, "group offload streams its blocks from CPU memory (11.4 GiB", "pro-group-offload",
         {"enable_group_offload": True, "fsdp_enable": None, "num_processes": 2}),
        (43.0, 2, "FSDP2 shards it over the 2 GPUs (fsdp_enable + offload_activations: 38.7 GiB", "pro-fsdp2",
         {"fsdp_enable": True, "offload_activations": True, "enable_group_offload": None, "num_processes": 2}),
        (47.5, 2, "FSDP2 shards it over the 2 GPUs (fsdp_enable: 40.7 GiB", "pro-fsdp2",
         {"fsdp_enable": True, "offload_activations": None}),
        (79.2, 2, "it fits a 79 GiB card whole", "pro-80gb", {"fsdp_enable": None, "num_processes": 2}),
    ],
    ids=["1x24GB", "1x80GB", "1x48GB", "2x40GB", "2x43GB", "2x48GB", "2x80GB"],
)
def test_pro_advice_follows_the_gpus(workdir, memory, count, advice, preset, expected):
    gpus = {"gpus": "2"} if count > 1 else {}
    terminal = wizard(script(flavour="t2v-pro-sft-5s-hd", skip=("gpu",), **gpus), gpu_detector=gpu(memory, count))
    assert advice in terminal.output
    assert "Switch to" not in "\n".join(terminal.prompts)
    assert f"[{preset}]" in next(p for p in terminal.prompts if "Memory preset" in p)
    config = read("config/config.json")
    assert config["model_flavour"] == "t2v-pro-sft-5s-hd"
    # the presets that keep the weights on the GPU keep selective checkpointing (compiled blocks)
    policy = "selective" if preset in ("pro-80gb", "pro-48gb") else "full"
    assert config["gradient_checkpointing_policy"] == policy and config["offload_during_startup"] is True
    for key, value in expected.items():
        assert config.get(key) == value, key
    load_config("config/config.json")


def test_pro_fsdp2_is_offered_only_with_several_gpus(workdir):
    terminal = wizard(script(flavour="i2v-pro-sft-5s", gpu="40"))
    assert "pro-fsdp2" not in terminal.output and "pro-group-offload" in terminal.output
    config = read("config/config.json")
    assert config["model_flavour"] == "i2v-pro-sft-5s" and config["enable_group_offload"] is True


def test_a_missing_dataset_folder_is_created_only_when_the_files_are_written(workdir):
    answers = script(folder="datasets/new", after={"folder": [("Create datasets/new", "y")]})
    with pytest.raises(Aborted):
        wizard(answers[:-1] + [("Write ", "n")])
    assert not Path("datasets/new").exists() and not Path("config").exists()
    terminal = wizard(answers)
    assert "does not exist yet" in terminal.output
    assert Path("datasets/new").is_dir()


def test_instance_prompt_strategy_needs_the_prompt(workdir):
    after = {"captions": [("instance_prompt", ""), ("instance_prompt", "sks dog running")]}
    terminal = wizard(script(captions="3", after=after))
    assert "needs 'instance_prompt'" in terminal.output
    video = read("config/multidatabackend.json")[0]
    assert (video["caption_strategy"], video["instance_prompt"]) == ("instanceprompt", "sks dog running")


def test_optional_answers_can_be_cleared(workdir):
    write_existing({**EXISTING_CONFIG, "pretrained_model_name_or_path": "someone/model"})
    wizard(script(model_path="none", prompt="none", skip=("val_res", "val_frames")))
    config = read("config/config.json")
    assert "pretrained_model_name_or_path" not in config and "validation_prompt" not in config


def test_a_local_model_folder_must_be_in_diffusers_layout(workdir):
    Path("mymodel").mkdir()
    terminal = wizard(script(model_path=["mymodel", "none"]))
    assert "without model_index.json" in terminal.output


def test_broken_existing_files_are_read_tolerantly_and_backed_up(workdir):
    config = {**EXISTING_CONFIG, "lora_rank": 0, "validaton_guidance": 3.0}
    write_existing(config)
    Path("config/multidatabackend.json").write_text("[{not json")
    terminal = wizard(script())
    out = terminal.output
    assert "dropped 'lora_rank'" in out and "dropped 'validaton_guidance'" in out
    assert "cannot be read" in out
    assert read("config/config.json")["lora_rank"] == 16  # the schema default replaced the bad value
    assert Path("config/config.json.bak").read_text() == json.dumps(config, indent=4)
    assert Path("config/multidatabackend.json.bak").read_text() == "[{not json"
    load_config("config/config.json")


def test_paths_can_be_chosen(workdir):
    wizard(script(), config="other/train.json", datasets="other/data.json")
    assert read("other/train.json")["data_backend_config"] == "other/data.json"
    load_config("other/train.json")


def test_end_of_input_writes_nothing(workdir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n\n"))
    assert main(["configure"]) == 1
    assert "input ended; nothing written" in capsys.readouterr().err
    assert not Path("config").exists()


def test_yes_fails_cleanly_when_a_default_is_invalid(workdir):
    write_existing({**EXISTING_CONFIG, "push_to_hub": True})  # needs hub_model_id: no key to drop
    with pytest.raises(ConfigError, match="push_to_hub needs hub_model_id"):
        run_wizard(DefaultsTerminal(say=lambda text: None), "config/config.json", gpu_detector=no_gpu)
    assert json.loads(Path("config/config.json").read_text())["push_to_hub"] is True  # untouched


# --------------------------------------------------------------------------------------------------
# the real command, through a pseudo-terminal


class PseudoTerminal:
    """`k5tune configure` on the slave side of a pty; we read its screen and type answers."""

    def __init__(self, args: list[str], cwd: Path):
        executable = Path(sys.executable).with_name("k5tune")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TERM": "dumb"}  # no GPU: the memory is asked
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes the command at once
            # as in a login shell: Ctrl-C interrupts (a background test runner may have SIGINT ignored)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(cwd)
            os.execve(str(executable), [str(executable), *args], env)
        self.pid, self.fd, self.screen = pid, fd, ""

    def expect(self, text: str, timeout: float = 15.0, at_end: bool = False) -> str:
        """Read until `text` is on the screen (with at_end: until the screen ends with it); consume it."""
        deadline = time.monotonic() + timeout
        while not (self.screen.endswith(text) if at_end else text in self.screen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not shown; the screen:\n{self.screen[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the command exited
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not shown before exit; the screen:\n{self.screen[-2000:]}")
                self.screen += chunk.decode(errors="replace")
        end = len(self.screen) if at_end else self.screen.index(text) + len(text)
        shown, self.screen = self.screen[:end], self.screen[end:]
        return shown

    def answer(self, question: str, reply: str) -> str:
        shown = self.expect(question)
        shown += self.expect(": ", at_end=True)  # the prompt's end: the command now waits for input
        os.write(self.fd, reply.encode() + b"\r")
        return shown

    def exit_code(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # keep draining so the child never blocks on a full pty
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"the command did not exit; the screen:\n{self.screen[-2000:]}")


@pytest.mark.slow
def test_the_real_command_in_a_pseudo_terminal(workdir):
    session = PseudoTerminal(["configure"], workdir)
    shown = session.answer("Model flavour (model_flavour), 1-10 or a name [t2v-lite-sft-5s]", "9")
    assert "i2v-lite-5s" in shown and "Lite image-to-video" in shown  # the numbered list
    session.answer("pretrained_model_name_or_path", "")
    session.answer("instance_data_dir", "")
    assert "found 2 clips" in session.answer("caption_strategy", "")
    session.answer("(resolution)", "")
    session.answer("video.num_frames", "60")
    assert "the nearest valid counts are 57 and 61" in session.answer("video.num_frames", "33")
    session.answer("frame_rate", "")
    session.answer("GPU memory in GiB (no CUDA GPU found here) [24]", "24")
    session.answer("Memory preset", "")
    session.answer("validation_prompt", "a fox jumps over a log, the camera follows")
    session.answer("validation_resolution", "")
    session.answer("validation_num_video_frames", "")
    session.answer("learning_rate", "")
    session.answer("max_train_steps", "10")
    session.answer("lora_rank", "")
    session.answer("output_dir", "")
    session.answer("Write config/config.json and config/multidatabackend.json?", "y")
    session.expect("k5tune train --dry-run")
    assert session.exit_code() == 0
    loaded = load_config(workdir / "config" / "config.json")
    assert loaded.train.model_flavour == "i2v-lite-5s" and loaded.train.max_train_steps == 10
    assert loaded.train.validation_prompt == "a fox jumps over a log, the camera follows"
    assert loaded.media_backends[0].video.num_frames == 33


@pytest.mark.slow
def test_ctrl_c_in_the_real_command_writes_nothing(workdir):
    session = PseudoTerminal(["configure"], workdir)
    session.answer("Model flavour", "2")
    session.expect("pretrained_model_name_or_path")
    session.expect(": ", at_end=True)
    for _ in range(20):
        # Ctrl-C: the terminal sends SIGINT. One sent in the instant between the prompt and readline's wait
        # is only seen at the next key, so press again, as a person would.
        os.write(session.fd, b"\x03")
        try:
            session.expect("interrupted; nothing written", timeout=0.5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"Ctrl-C did not stop the wizard; the screen:\n{session.screen}")
    assert session.exit_code() == 130
    assert not (workdir / "config").exists()


def test_the_advanced_view_asks_nabla_eval_rollout_and_crepa_keys_with_their_help(workdir):
    """`k5tune configure --advanced`: after the usual questions, each advanced section on request; its keys
    with their --help text, checked by the schema (a bad answer is asked again)."""
    advanced = [("attention", "y"), ("attention_backend", ""), ("sparse_attention", "nabla"),
                ("nabla_threshold", "2"), ("nabla_threshold", "0.8"), ("nabla_window", "11x3x3"),
                ("nabla_add_sta", ""), ("evaluation", "n"), ("rollout", "n"), ("CREPA", "n")]
    answers = script(folder="datasets/videos", gpu="24", resolution="512", val_res="512x768")
    answers[-1:-1] = advanced  # before "Write ...?"
    terminal = ScriptedTerminal(answers)
    run_wizard(terminal, "config/config.json", None, gpu_detector=no_gpu, advanced=True)
    assert not terminal.answers
    assert "NABLA" in terminal.output  # the keys' help text is shown
    assert any("! " in line for line in terminal.lines)  # 2 is no share: asked again
    config = read("config/config.json")
    assert config["sparse_attention"] == "nabla" and config["nabla_threshold"] == 0.8
    assert load_config("config/config.json").train.nabla_window == "11x3x3"
