"""Config contract: the guide's keys and snippets load, overrides are typed, mistakes get one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from k5tune.cli import main
from k5tune.config import load_config, parse_overrides
from k5tune.config.loading import EXAMPLES_DIR, build_train_config
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError

GUIDE_DATASETS = [
    {
        "id": "my-video-dataset",
        "type": "local",
        "dataset_type": "video",
        "instance_data_dir": "datasets/videos",
        "caption_strategy": "textfile",
        "resolution": 512,
        "video": {"num_frames": 61, "min_frames": 61, "frame_rate": 24, "bucket_strategy": "aspect_ratio"},
        "repeats": 10,
    },
    {
        "id": "text-embeds",
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": "cache/text/kandinsky5",
        "disabled": False,
    },
]
GUIDE_OFFLOAD = {
    "enable_group_offload": True,
    "group_offload_type": "block_level",
    "group_offload_blocks_per_group": 1,
    "group_offload_use_stream": True,
}
GUIDE_TREAD = {"tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder laid out as in the guide: config/config.json + config/multidatabackend.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    write_config({})
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(GUIDE_DATASETS))
    return tmp_path


def write_config(values: dict) -> None:
    Path("config/config.json").write_text(json.dumps(values))


def error_for(config: dict | None = None, datasets=None, overrides=None) -> str:
    if config is not None:
        write_config(config)
    if datasets is not None:
        Path("config/multidatabackend.json").write_text(json.dumps(datasets))
    with pytest.raises(ConfigError) as info:
        load_config("config/config.json", overrides)
    return str(info.value)


# --- keys and defaults ------------------------------------------------------------------------------

SPEC_KEYS = [
    "model_family", "model_flavour", "train_batch_size", "validation_resolution", "validation_num_video_frames",
    "validation_guidance", "frame_rate", "offload_during_startup", "vae_enable_patch_conv", "enable_group_offload",
    "group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream", "tread_config",
    "crepa_enabled", "crepa_block_index", "crepa_lambda", "crepa_adjacent_distance", "crepa_adjacent_tau",
    "crepa_encoder", "crepa_encoder_image_size", "crepa_drop_vae_encoder", "scheduled_sampling_max_step_offset",
    "data_backend_config", "output_dir", "learning_rate", "lr_scheduler", "max_train_steps", "num_train_epochs",
    "gradient_accumulation_steps", "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint",
    "mixed_precision", "gradient_checkpointing", "seed", "report_to", "validation_prompt", "validation_steps",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "flow_schedule_shift", "max_grad_norm",
]


def test_every_spec_key_exists_with_a_documented_default():
    fields = TrainConfig.model_fields
    for key in SPEC_KEYS:
        assert key in fields, key
        assert fields[key].description, f"{key} has no description"
    config = TrainConfig()
    assert config.model_flavour == "t2v-lite-sft-5s"
    assert config.train_batch_size == 1
    assert config.validation_resolution == "512x768" and config.validation_size == (512, 768)
    assert config.validation_num_video_frames == 61
    assert config.validation_guidance == 5.0
    assert config.frame_rate == 24
    assert config.data_backend_config == "config/multidatabackend.json"


def test_every_field_has_a_description():
    undocumented = [name for name, info in TrainConfig.model_fields.items() if not info.description]
    assert undocumented == []


@pytest.mark.parametrize(
    ("alias", "name", "value"),
    [
        ("framerate", "frame_rate", 30),
        ("validation_step_interval", "validation_steps", 7),
        ("checkpoint_step_interval", "checkpointing_steps", 9),
    ],
)
def test_aliases(alias, name, value):
    config = build_train_config({alias: value}, "config.json")
    assert getattr(config, name) == value


def test_alias_and_name_together_is_an_error():
    with pytest.raises(ConfigError, match="given twice"):
        build_train_config({"frame_rate": 24, "framerate": 30}, "config.json")


def test_simpletuner_style_dashed_keys_are_accepted():
    assert build_train_config({"--lora_rank": 8}, "config.json").lora_rank == 8


def test_shipped_examples_load(project):
    Path("config/config.json").write_text((EXAMPLES_DIR / "config.json.example").read_text())
    Path("config/multidatabackend.json").write_text((EXAMPLES_DIR / "multidatabackend.json.example").read_text())
    loaded = load_config()
    assert loaded.train.model_family == "kandinsky5-video"
    assert [b.id for b in loaded.datasets] == ["my-video-dataset", "text-embeds"]
    assert loaded.notices() == []


def test_repository_examples_are_the_packaged_ones():
    root = Path(__file__).resolve().parents[1] / "config"
    for name in ("config.json.example", "multidatabackend.json.example"):
        assert (root / name).read_text() == (EXAMPLES_DIR / name).read_text()


def test_guide_offload_snippet_pasted_as_is_loads(project):
    write_config(GUIDE_OFFLOAD)
    assert load_config().train.model_dump(include=set(GUIDE_OFFLOAD)) == GUIDE_OFFLOAD


def test_guide_tread_snippet_pasted_as_is_loads(project):
    write_config(GUIDE_TREAD)
    route = load_config().train.tread_config.routes[0]
    assert (route.selection_ratio, route.start_layer_idx, route.end_layer_idx) == (0.5, 2, -2)


def test_guide_dataset_snippet(project):
    loaded = load_config()
    video = loaded.media_backends[0]
    assert video.video.num_frames == 61 and video.video.min_frames == 61 and video.repeats == 10
    assert video.video.bucket_strategy == "aspect_ratio"
    assert loaded.text_embeds_backend.cache_dir == "cache/text/kandinsky5"


def test_guide_resolutions_and_frames():
    config = build_train_config({"validation_resolution": "720x1280", "validation_num_video_frames": 49}, "c")
    assert config.validation_size == (720, 1280)
    assert build_train_config({"validation_resolution": "w768xh512"}, "c").validation_size == (512, 768)
    snapped = build_train_config({"validation_resolution": "480x854"}, "c")
    assert snapped.validation_size == (480, 848)
    assert any("480x848" in note for note in snapped.notices())


# --- command-line overrides -----------------------------------------------------------------------


def test_override_forms_are_typed():
    overrides = parse_overrides(
        ["--vae_enable_patch_conv=true", "--lora_rank", "8", "--enable_group_offload", "--learning_rate=1e-4",
         "--validation_prompt", "123", "--tread_config", json.dumps(GUIDE_TREAD["tread_config"])]
    )
    assert overrides["vae_enable_patch_conv"] is True
    assert overrides["lora_rank"] == 8
    assert overrides["enable_group_offload"] is True
    assert overrides["learning_rate"] == 1e-4
    assert overrides["validation_prompt"] == "123"  # text keys keep the raw text
    assert overrides["tread_config"]["routes"][0]["end_layer_idx"] == -2


def test_overrides_win_over_the_file_even_through_an_alias(project):
    write_config({"framerate": 30, "lora_rank": 4})
    loaded = load_config("config/config.json", parse_overrides(["--frame_rate=12", "--lora_rank", "32"]))
    assert loaded.train.frame_rate == 12 and loaded.train.lora_rank == 32


def test_relative_paths_are_relative_to_the_working_folder(project, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.json").write_text(json.dumps({"data_backend_config": "config/multidatabackend.json"}))
    loaded = load_config("elsewhere/c.json")
    assert loaded.dataset_path == Path("config/multidatabackend.json")


# --- error messages (one line: file, key, what is valid) ----------------------------------------


def test_unknown_key_suggests_the_closest(project):
    message = error_for({"validaton_guidance": 5.0})
    assert message == "config/config.json, key 'validaton_guidance': unknown key; did you mean 'validation_guidance'?"


def test_unknown_override_names_the_command_line(project):
    message = error_for({}, overrides={"validaton_guidance": 5.0})
    assert "command-line" in message and "did you mean 'validation_guidance'" in message


@pytest.mark.parametrize(
    ("values", "key", "fragment"),
    [
        ({"train_batch_size": "two"}, "train_batch_size", "valid integer"),
        ({"train_batch_size": 0}, "train_batch_size", "greater than 0"),
        ({"learning_rate": -1}, "learning_rate", "greater than 0"),
        ({"lr_scheduler": "cosine_restarts"}, "lr_scheduler", "'constant', 'constant_with_warmup', 'cosine' or 'linear'"),
        ({"validation_guidance": "high"}, "validation_guidance", "valid number"),
        ({"group_offload_type": "model_level"}, "group_offload_type", "'block_level' or 'leaf_level'"),
        ({"tread_config": {"routes": [{"selection_ratio": 1.5, "start_layer_idx": 2, "end_layer_idx": -2}]}},
         "tread_config.routes.0.selection_ratio", "less than 1"),
        ({"validation_resolution": "big"}, "validation_resolution", "HEIGHTxWIDTH"),
    ],
)
def test_wrong_type_or_range(project, values, key, fragment):
    message = error_for(values)
    assert message.startswith(f"config/config.json, key '{key}': ")
    assert fragment in message
    assert "\n" not in message


def test_frames_not_4k_plus_1_names_the_nearest_counts(project):
    message = error_for({"validation_num_video_frames": 60})
    assert "key 'validation_num_video_frames'" in message and "57 and 61" in message
    datasets = json.loads(json.dumps(GUIDE_DATASETS))
    datasets[0]["video"].update(num_frames=50, min_frames=50)
    message = error_for({}, datasets)
    assert "config/multidatabackend.json, key 'video.num_frames'" in message and "49 and 53" in message


def test_unknown_flavour_lists_the_valid_ones(project):
    message = error_for({"model_flavour": "t2v-lite-sft-7s"})
    assert "key 'model_flavour'" in message
    for name in ("t2v-lite-sft-5s", "t2v-pro-sft-10s-hd", "i2v-lite-5s", "i2v-pro-sft-5s"):
        assert name in message


def test_min_frames_below_num_frames(project):
    datasets = json.loads(json.dumps(GUIDE_DATASETS))
    datasets[0]["video"]["min_frames"] = 33
    message = error_for({}, datasets)
    assert "key 'video.min_frames'" in message and "backend 'my-video-dataset'" in message
    assert "min_frames (33) is smaller than num_frames (61)" in message


def test_missing_config_file_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith("config/config.json: config file not found")
    assert "k5tune configure" in message and "cp config/config.json.example" in message


def test_missing_dataset_file(project):
    Path("config/multidatabackend.json").unlink()
    message = error_for({})
    assert message.startswith("config/multidatabackend.json: dataset file (data_backend_config) not found")


@pytest.mark.parametrize(
    ("datasets", "fragment"),
    [
        ({"id": "x"}, "must be a JSON list of backends"),
        ([GUIDE_DATASETS[0], dict(GUIDE_DATASETS[0]), GUIDE_DATASETS[1]], "duplicate backend id(s) ['my-video-dataset']"),
        ([GUIDE_DATASETS[1]], "no video or image backend"),
        ([GUIDE_DATASETS[0]], "no text_embeds backend"),
        ([{**GUIDE_DATASETS[0], "dataset_type": "videos"}, GUIDE_DATASETS[1]], "use 'video', 'image' or 'text_embeds'"),
        ([{**GUIDE_DATASETS[0], "resolutoin": 512}, GUIDE_DATASETS[1]], "did you mean 'resolution'?"),
    ],
)
def test_dataset_file_errors(project, datasets, fragment):
    message = error_for({}, datasets)
    assert message.startswith("config/multidatabackend.json")
    assert fragment in message


def test_not_json(project):
    Path("config/config.json").write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config()


# --- the CLI turns errors into one line and exit code 2 ---------------------------------------------


def test_cli_error_is_one_line_exit_2(project, capsys):
    write_config({"validaton_guidance": 5.0})
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "did you mean 'validation_guidance'" in err


@pytest.mark.slow
def test_dry_run_prints_resolved_settings_and_loads_nothing(project):
    write_config({"lora_rank": 4, "validation_guidance": 8.0})
    # a fresh interpreter, so "nothing heavy was imported" is checked for real
    script = (
        "import sys; from k5tune.cli import main; "
        "code = main(['train', '--dry-run', '--vae_enable_patch_conv=true', '--validation_resolution', '720x1280']); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'peft', 'av')]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["config"]["lora_rank"] == 4
    assert resolved["config"]["vae_enable_patch_conv"] is True
    assert resolved["config"]["validation_resolution"] == "720x1280"
    assert resolved["datasets"][0]["id"] == "my-video-dataset"
    assert "outside 2-6" in result.stderr
    assert "HEAVY []" in result.stderr


def test_config_reference_page_is_up_to_date():
    from k5tune.config.reference import render

    page = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert page.read_text() == render(), "run: python -m k5tune.config.reference > docs/config-reference.md"


def test_config_error_keeps_its_bare_message_apart_from_file_and_key():
    error = ConfigError("must be greater than 0: got -1", file="config/config.json", key="lora_rank")
    assert str(error) == "config/config.json, key 'lora_rank': must be greater than 0: got -1"
    assert error.message == "must be greater than 0: got -1"
    assert ConfigError("plain").message == str(ConfigError("plain")) == "plain"
