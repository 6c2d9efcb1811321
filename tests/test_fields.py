"""The one schema reader (k5tune.config.fields): sections, key mapping, and every view listing the same fields."""

from __future__ import annotations

import re

import pytest

from k5tune.config.fields import (
    canonical_config,
    canonical_key,
    config_field,
    config_fields,
    describe,
    known_keys,
)
from k5tune.config.schema import TrainConfig
from k5tune.config.sections import SECTIONS


def test_every_field_is_in_exactly_one_section():
    listed = [name for names in SECTIONS.values() for name in names]
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert duplicates == []
    assert sorted(set(listed) - set(TrainConfig.model_fields)) == []  # no section names a missing field
    assert sorted(set(TrainConfig.model_fields) - set(listed)) == []  # no field is left out


def test_sections_follow_the_declaration_order():
    """Each section is one run of consecutive fields, so the form and the reference read like the class."""
    listed = [name for names in SECTIONS.values() for name in names]
    assert listed == list(TrainConfig.model_fields)
    assert all(names for names in SECTIONS.values())


def test_settings_carry_the_schema_facts():
    rank = config_field("lora_rank")
    assert (rank.kind, rank.default, rank.section, rank.limits) == ("int", 16, "LoRA", {"gt": 0, "le": 1024})
    assert rank.description == TrainConfig.model_fields["lora_rank"].description
    frame_rate = config_field("frame_rate")
    assert frame_rate.aliases == ("framerate",) and frame_rate.section == "data"
    scheduler = config_field("lr_scheduler")
    assert scheduler.kind == "enum" and "cosine" in scheduler.choices
    assert config_field("max_train_steps").nullable
    assert config_field("tread_config").kind == "json"
    assert [s.name for s in config_fields()] == list(TrainConfig.model_fields)


def test_required_fields_have_no_default():
    from k5tune.config.datasets import VideoBackend

    by_name = {s.name: s for s in describe(VideoBackend)}
    assert by_name["id"].required and by_name["id"].default is None
    assert by_name["video"].default["num_frames"] == 61  # a nested model's default, dumped as JSON
    assert {s.section for s in by_name.values()} == {"settings"}


def test_one_key_mapping_for_prefixes_and_aliases():
    assert canonical_key("frame_rate") == "frame_rate"
    assert canonical_key("framerate") == "frame_rate"
    assert canonical_key("--framerate") == "frame_rate"
    assert canonical_key("--validation_step_interval") == "validation_steps"
    assert canonical_key("no_such_key") is None
    assert known_keys()["checkpoint_step_interval"] == "checkpointing_steps"
    raw = {"--lora_rank": 4, "framerate": 12, "--bogus": 1, "frame_rate": 30}
    # later spellings of one field win, in the first one's place; unknown keys stay for the loader to name
    assert canonical_config(raw) == {"lora_rank": 4, "frame_rate": 30, "bogus": 1}
    assert list(canonical_config(raw)) == ["lora_rank", "frame_rate", "bogus"]


def test_help_form_and_reference_list_the_same_fields(capsys):
    from k5tune.cli import build_parser
    from k5tune.config.reference import render
    from k5tune.server.forms import form_schema

    names = list(TrainConfig.model_fields)
    assert [f["name"] for f in form_schema()["config"]] == names
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out.split("config keys", 1)[1]
    assert re.findall(r"^  --(\w+) \(default", help_text, flags=re.M) == names
    page = render().split("## config/multidatabackend.json")[0]
    assert re.findall(r"^\| `(\w+)`", page, flags=re.M) == names
    sections = re.findall(r"^### (.+)$", page, flags=re.M)
    assert sections == list(SECTIONS) == list(dict.fromkeys(f["section"] for f in form_schema()["config"]))
