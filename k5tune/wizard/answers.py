"""Answers checked with the real schema (the code `k5tune train` uses) and kept in the two files in memory.

A config.json answer is typed as the command line types `--key=text` and validated by TrainConfig; a
dataset answer by the dataset file's loader, with the backend it changes; both files together with
`load_config` before anything is written. The dataset folder is surveyed for clips and captions.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k5tune.config.fields import config_field
from k5tune.config.loading import (
    LoadedConfig,
    build_datasets,
    build_train_config,
    load_config,
    parse_overrides,
)
from k5tune.errors import ConfigError
from k5tune.models.flavours import DEFAULT_FLAVOUR
from k5tune.wizard.files import Existing, example
from k5tune.wizard.terminal import BadAnswer, Prompter, Terminal

NONE_WORDS = frozenset({"none", "null", "-"})


def bare_message(exc: ConfigError, keep_backend: bool = False) -> str:
    """The message without the 'file, key ...:' lead (and 'backend ...:': the question already says it)."""
    return exc.message if keep_backend else re.sub(r"^backend '[^']*': ", "", exc.message)


def json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_config_value(key: str, text: str, context: dict[str, Any] | None = None) -> Any:
    """`text` typed as the command line types it (`--key=text`), validated by TrainConfig."""
    value = parse_overrides([f"--{key}={text}"])[key]
    try:
        build_train_config({**(context or {}), key: value}, "")
    except ConfigError as exc:
        raise BadAnswer(bare_message(exc)) from None
    return value


_TEXT_EMBEDS_PROBE = {"id": "__wizard-text-embeds__", "type": "local", "dataset_type": "text_embeds", "default": True}


def check_video_backend(video: dict[str, Any]) -> None:
    """Validate one video backend as the dataset file's loader does."""
    try:
        build_datasets([video, _TEXT_EMBEDS_PROBE], "")
    except ConfigError as exc:
        raise BadAnswer(bare_message(exc)) from None


def with_value(entry: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    updated = copy.deepcopy(entry)
    holder = updated
    for part in path[:-1]:
        holder = holder.setdefault(part, {})
    holder[path[-1]] = value
    return updated


def with_num_frames(video: dict[str, Any], frames: int, fresh: bool) -> tuple[dict[str, Any], list[str]]:
    """Set video.num_frames and keep min_frames/max_frames consistent with it."""
    updated = with_value(video, ("video", "num_frames"), frames)
    options = updated["video"]
    old = video.get("video", {}).get("num_frames")
    notes: list[str] = []
    minimum = options.get("min_frames")
    # the guide writes min_frames = num_frames; follow it when the old value followed it too
    if fresh or (isinstance(minimum, int) and (minimum < frames or minimum == old)):
        if minimum != frames:
            options["min_frames"] = frames
            if minimum is not None and not fresh:
                notes.append(f"video.min_frames {minimum} -> {frames} (clips shorter than a sample are dropped)")
    maximum = options.get("max_frames")
    if isinstance(maximum, int) and maximum < max(frames, options.get("min_frames") or 0):
        del options["max_frames"]
        notes.append(f"video.max_frames {maximum} removed: it was below the new frame count")
    return updated, notes


@dataclass
class FolderSurvey:
    clips: int = 0
    captioned: int = 0
    uncaptioned: list[str] = field(default_factory=list)
    first_caption: str | None = None


def survey_folder(folder: Path) -> FolderSurvey:
    """Clips (the extensions training scans) and their same-named .txt captions."""
    from k5tune.data.discovery import caption_file_for, discover_media

    survey = FolderSurvey()
    for clip in discover_media(folder, "video"):
        survey.clips += 1
        caption = caption_file_for(clip)
        if caption is None:
            survey.uncaptioned.append(clip.relative_to(folder).as_posix())
            continue
        survey.captioned += 1
        if survey.first_caption is None:
            lines = [" ".join(x.split()) for x in caption.read_text(encoding="utf-8-sig", errors="replace").splitlines()]
            survey.first_caption = next((x for x in lines if x), None)
    return survey


def validate_together(config: dict[str, Any], datasets: list[dict[str, Any]], config_path: Path,
                      datasets_path: Path) -> LoadedConfig:
    """Run both files through load_config (written to a temporary folder) before the real write."""
    with tempfile.TemporaryDirectory(prefix="k5tune-configure-") as folder:
        staged_datasets = Path(folder) / "datasets.json"
        staged_config = Path(folder) / "config.json"
        staged_datasets.write_text(json.dumps(datasets), encoding="utf-8")
        staged_config.write_text(json.dumps({**config, "data_backend_config": str(staged_datasets)}), encoding="utf-8")
        try:
            loaded = load_config(staged_config)
        except ConfigError as exc:
            real = datasets_path if exc.file and exc.file.startswith(str(staged_datasets)) else config_path
            raise ConfigError(bare_message(exc, keep_backend=True), file=str(real), key=exc.key) from None
    loaded.train.data_backend_config = config["data_backend_config"]
    loaded.config_path, loaded.dataset_path = config_path, datasets_path
    return loaded


class Answers(Prompter):
    """The two files in memory, and the questions that set one of their keys."""

    io: Terminal
    existing: Existing
    config: dict[str, Any]
    datasets: list[dict[str, Any]]
    video_index: int

    @property
    def video(self) -> dict[str, Any]:
        return self.datasets[self.video_index]

    @video.setter
    def video(self, value: dict[str, Any]) -> None:
        self.datasets[self.video_index] = value

    def _video_backend_index(self) -> int:
        """The first enabled video backend is the one the wizard edits; one is added when there is none."""
        for index, entry in enumerate(self.datasets):
            if entry.get("dataset_type") == "video" and not entry.get("disabled"):
                return index
        template = next(e for e in example("multidatabackend.json") if e["dataset_type"] == "video")
        taken = {e.get("id") for e in self.datasets}
        if template["id"] in taken:
            template["id"] = "videos"
        self.datasets.insert(0, template)
        return 0

    def _ensure_text_embeds(self) -> None:
        if not any(e.get("dataset_type") == "text_embeds" and not e.get("disabled") for e in self.datasets):
            self.datasets.append(next(e for e in example("multidatabackend.json") if e["dataset_type"] == "text_embeds"))
            self.io.say("  (added the text_embeds backend the trainer needs)")

    def _config_default(self, key: str) -> Any:
        if key in self.config:
            return self.config[key]
        return config_field(key).default

    def _set_config(self, key: str, value: Any) -> None:
        if value is None:
            self.config.pop(key, None)
        else:
            self.config[key] = value

    def _ask_config(self, key: str, question: str, *, optional: bool = False, hint: str | None = None,
                    extra: Callable[[Any], None] | None = None, default: Any = ...,
                    prepare: Callable[[str], str] = str) -> Any:
        """Ask for one config.json key, checked by the schema (and by `extra`, which may raise BadAnswer);
        `prepare` rewrites the text first."""
        context = {"model_flavour": self.config.get("model_flavour", DEFAULT_FLAVOUR)}

        def check(text: str) -> Any:
            if optional and text.lower() in NONE_WORDS:
                return None
            value = check_config_value(key, prepare(text), context)
            if extra:
                extra(value)
            return value

        shown_default = self._config_default(key) if default is ... else default
        value = self.ask(question, shown_default, check, hint)
        self._set_config(key, value)
        return value

    def _ask_dataset(self, path: tuple[str, ...], question: str, default: Any, hint: str | None = None,
                     convert: Callable[[str], Any] = json_or_text) -> Any:
        """Ask for one key of the video backend: `convert` types the text (or raises BadAnswer), then the
        dataset schema checks the backend with it."""
        def check(text: str) -> Any:
            value = convert(text)
            check_video_backend(with_value(self.video, path, value))
            return value

        value = self.ask(question, default, check, hint)
        self.video = with_value(self.video, path, value)
        return value
