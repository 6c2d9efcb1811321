"""`k5tune configure`: the terminal wizard that writes config/config.json and the dataset file.

Questions: flavour, model override, dataset folder, captions, resolution, frames, frame rate, a memory
preset picked from the GPU's memory, validation, learning rate, steps, LoRA rank, output folder.
Existing files are read tolerantly and their values offered as defaults; keys the wizard does not ask
about are kept. Every answer is checked with the real schema (the code `k5tune train` uses) and asked
again with its message; both files are validated together with `load_config` before anything is
written, then written atomically.

Terminal I/O goes through a `Terminal` so tests can script the answers; `--yes` is a terminal that
answers every question with its default.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from k5tune.atomic import atomic_write_json
from k5tune.config.datasets import ImageBackend, TextEmbedsBackend, VideoBackend
from k5tune.config.fields import bare_key, canonical_config, canonical_key, config_field
from k5tune.config.frames import MIN_I2V_FRAMES, parse_resolution, snap_resolution
from k5tune.config.loading import (
    EXAMPLES_DIR,
    LoadedConfig,
    build_datasets,
    build_train_config,
    load_config,
    parse_overrides,
)
from k5tune.config.schema import TrainConfig
from k5tune.errors import ConfigError
from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS

DEFAULT_DIRECTORY = "config"
NONE_WORDS = frozenset({"none", "null", "-"})
GIB = 2**30
LONG_DEFAULT = 40  # characters; longer defaults are printed on their own line


class BadAnswer(ValueError):
    """An answer the schema (or the wizard) rejects; the question is asked again with this message."""


class Aborted(Exception):
    """The user declined to write the files."""


# --------------------------------------------------------------------------------------------------
# terminal


class Terminal(Protocol):
    interactive: bool

    def ask(self, prompt: str) -> str:
        """One line of input (raises EOFError at end of input, KeyboardInterrupt on Ctrl-C)."""

    def say(self, text: str = "") -> None: ...


class ConsoleTerminal:
    """stdin/stdout; line editing with readline where the platform has it."""

    interactive = True

    def __init__(self) -> None:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (imported for its side effect: arrow keys and history in input())
            except ImportError:
                pass

    def ask(self, prompt: str) -> str:
        return input(prompt)

    def say(self, text: str = "") -> None:
        print(text, flush=True)


class DefaultsTerminal:
    """`--yes`: every question takes its default; the question and the choice are still printed."""

    interactive = False

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self._say = say or (lambda text: print(text, flush=True))

    def ask(self, prompt: str) -> str:
        self._say(prompt.rstrip() + " (default)")
        return ""

    def say(self, text: str = "") -> None:
        self._say(text)


# --------------------------------------------------------------------------------------------------
# GPU and memory presets


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_gib: float
    count: int = 1


def detect_gpu() -> GpuInfo | None:
    """The first CUDA GPU's name and memory, or None without one (or without a CUDA build)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        _free, total = torch.cuda.mem_get_info(0)
        return GpuInfo(torch.cuda.get_device_properties(0).name, total / GIB, torch.cuda.device_count())
    except Exception:  # a broken driver must not stop the wizard: it asks for the memory instead
        return None


@dataclass(frozen=True)
class MemoryPreset:
    name: str
    title: str
    settings: dict[str, Any]
    note: str
    requires: str | None = None  # an optional package the preset needs (offered only when importable)


# Measured on an H100 (benchmarks/results/2026-11-27-h100.md), Lite at 512x768, 61 frames, LoRA rank 32 on
# attention + feed-forward: selective checkpointing 1.73 s/step, 12.5 GiB; with activation offload 1.74 s,
# 7.2 GiB (`k5tune train`, run 25); full 2.03 s, 10.4 GiB; int8 base 1.96 s, 10.4 GiB; group offload 1
# block/group + stream (+ activation offload) 2.17 s, 4.1 GiB. Caching: VAE encode of one clip 12.2 GiB
# plain, 10.4 with patch conv, 2.6 with tiling (blended, not exact); Qwen2.5-VL streamed from CPU memory
# with offload_during_startup (1.6 GiB).
# Each preset leaves ~1 GiB spare on the smallest card of its row.
_GROUP_OFFLOAD = {"enable_group_offload": True, "group_offload_type": "block_level",
                  "group_offload_blocks_per_group": 1, "group_offload_use_stream": True}
MEMORY_PRESETS: dict[str, MemoryPreset] = {
    p.name: p
    for p in (
        MemoryPreset(
            "up-to-12gb", "12 GB card or smaller (RTX 3060 12GB, 4070, 8 GB cards)",
            {"offload_during_startup": True, "vae_enable_tiling": True, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "full", **_GROUP_OFFLOAD},
            "least memory: group offload (one block on the GPU at a time, the next copied on a side stream) and "
            "activation offload, Lite 512x768x61 in 4.1 GiB at 2.17 s/step; caching encodes in VAE tiles "
            "(2.6 GiB; blended tiles, not exact: patch conv would need ~10.4 GiB)",
        ),
        MemoryPreset(
            "16gb", "16 GB card (RTX 4060 Ti 16GB, 4080, 5080)",
            {"offload_during_startup": True, "vae_enable_patch_conv": True, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "selective", "offload_activations": True},
            "activation offload: what each block keeps for backward waits in CPU memory, Lite 512x768x61 in "
            "7.2 GiB at 1.74 s/step (as fast as without; 6 GiB of pinned CPU memory); sliced VAE convolutions "
            "(caching 10.4 GiB)",
        ),
        MemoryPreset(
            "16gb-int8", "16 GB card, int8 base (torchao installed)",
            {"offload_during_startup": True, "vae_enable_patch_conv": True, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "selective", "base_model_precision": "int8"},
            "faster: the frozen transformer in int8 (output ~1 % off fp32; bf16: 0.7 %), Lite 512x768x61 in "
            "10.4 GiB at 1.96 s/step; the LoRA still loads into a bf16 pipeline",
            requires="torchao",
        ),
        MemoryPreset(
            "24-32gb", "24-32 GB card (RTX 3090/4090/5090, A5000)",
            {"offload_during_startup": True, "vae_enable_patch_conv": True, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "selective"},
            "selective checkpointing keeps attention outputs, Lite 512x768x61 in 12.5 GiB at 1.73 s/step; "
            "streamed text encoder and sliced VAE convolutions (caching 10.4 GiB)",
        ),
        MemoryPreset(
            "40-48gb", "40-48 GB card (A100 40GB, A6000, L40S)",
            {"offload_during_startup": True, "vae_enable_patch_conv": False, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "selective"},
            "selective checkpointing, streamed text encoder, plain VAE (caching 12.2 GiB)",
        ),
        MemoryPreset(
            "80gb", "80 GB or more (A100/H100 80GB, H200)",
            {"offload_during_startup": False, "vae_enable_patch_conv": False, "gradient_checkpointing": True,
             "gradient_checkpointing_policy": "selective"},
            "fastest: everything stays on the GPU, selective checkpointing",
        ),
    )
}
KEEP_PRESET = "keep"
# the keys a preset decides: those it does not set go back to the schema's default
PRESET_KEYS = ("offload_during_startup", "vae_enable_patch_conv", "vae_enable_tiling", "gradient_checkpointing",
               "gradient_checkpointing_policy", "base_model_precision", "enable_group_offload",
               "group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream",
               "offload_activations", "fsdp_enable")
PRO_MIN_GIB = 70.0  # one 80 GB card reports ~79 GiB; Pro selective, weights on the GPU: 66.2 GiB measured
# Pro selective + activation offload: 45.1 GiB measured (run 24); 48 GB cards report ~47.4 GiB
PRO_ACTIVATION_OFFLOAD_MIN_GIB = 47.0
PRO_OFFLOAD_MIN_GIB = 13.0  # Pro with group offload + stream: 11.4 GiB measured
PRO_FSDP_MIN_GIB = 42.0  # FSDP2 on 2 GPUs: 38.7 GiB per GPU with offload_activations; a 40 GB card (~39.4 GiB)
# leaves too little for the CUDA context and fragmentation, so those get group offload (still listed)
PRO_FSDP_OFFLOAD_BELOW_GIB = 44.0  # FSDP2 without offload_activations: 40.7 GiB (48 GB cards report ~47.5)
LITE_MIN_GIB = 5.5  # Lite with group offload: 4.1 GiB measured at 512x768x61


def preset_available(preset: MemoryPreset) -> bool:
    return preset.requires is None or importlib.util.find_spec(preset.requires) is not None


def recommended_preset(total_gib: float) -> str:
    if total_gib < 13:  # caching with patch conv alone needs ~10.4 GiB
        return "up-to-12gb"
    if total_gib < 18:
        return "16gb"
    if total_gib < 38:
        return "24-32gb"
    if total_gib < PRO_MIN_GIB:
        return "40-48gb"
    return "80gb"


def pro_presets(total_gib: float, processes: int) -> list[MemoryPreset]:
    """Pro (≈19B, 40 GiB of bf16 weights): measured on H100s at 512x768x61, rank 32."""
    low = {"offload_during_startup": True, "vae_enable_patch_conv": True, "gradient_checkpointing": True,
           "gradient_checkpointing_policy": "full"}
    presets = [MemoryPreset(
        "pro-group-offload", "Pro on one card of 16 GB or more",
        {**low, **_GROUP_OFFLOAD},
        "group offload + side stream + activation offload: 11.4 GiB at 9.3 s/step; the 40 GiB of weights wait "
        "in pinned CPU memory",
    )]
    if processes > 1:
        fsdp = {**low, "fsdp_enable": True}
        if total_gib < PRO_FSDP_OFFLOAD_BELOW_GIB:
            fsdp["offload_activations"] = True
        presets.append(MemoryPreset(
            "pro-fsdp2", f"Pro sharded over the {processes} GPUs (FSDP2)", fsdp,
            "each GPU holds its share of the weights: on 2 H100s 40.7 GiB per GPU (38.7 with "
            "offload_activations), 6.3 s per clip",
        ))
    selective = {**low, "gradient_checkpointing_policy": "selective"}
    presets.append(MemoryPreset(
        "pro-48gb", "Pro on one card of 48 GB or more", {**selective, "offload_activations": True},
        "weights on the GPU, what each block keeps for backward in pinned CPU memory (24 GiB per process): "
        "45.1 GiB at 7.7 s/step",
    ))
    presets.append(MemoryPreset(
        "pro-80gb", "Pro on 80 GB cards", selective,
        "everything on the GPU, selective checkpointing: 66.2 GiB at 7.7 s/step",
    ))
    return presets


def recommended_pro_preset(total_gib: float, processes: int) -> str:
    if total_gib >= PRO_MIN_GIB:
        return "pro-80gb"
    # (FSDP2 is measured on several GPUs; compiled blocks with data-parallel Pro are not yet)
    if processes > 1 and total_gib >= PRO_FSDP_MIN_GIB:
        return "pro-fsdp2"
    if total_gib >= PRO_ACTIVATION_OFFLOAD_MIN_GIB:
        return "pro-48gb"
    return "pro-group-offload"


# --------------------------------------------------------------------------------------------------
# reading existing files, tolerantly


def _example(name: str) -> Any:
    return json.loads((EXAMPLES_DIR / f"{name}.example").read_text(encoding="utf-8"))


def _read_json(path: Path, notes: list[str]) -> tuple[Any, bool]:
    """(content or None, whether the file exists but cannot be used as JSON)."""
    if not path.is_file():
        return None, False
    try:
        return json.loads(path.read_text(encoding="utf-8")), False
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path} cannot be read ({exc}); starting from defaults (the old file is kept as "
                     f"{path.name}.bak when the new one is written)")
        return None, True


def _drop_invalid(entry: dict[str, Any], model: type[BaseModel], what: str,
                  notes: list[str]) -> tuple[dict[str, Any], bool]:
    """Remove the keys the schema rejects (one note each). Returns the entry and whether it is now valid
    (not when a required key is missing or a rule spans several keys: the final check then reports it)."""
    entry = copy.deepcopy(entry)
    for _ in range(100):  # each pass removes at least one key
        try:
            model.model_validate(entry)
            return entry, True
        except ValidationError as exc:
            removed = False
            for error in exc.errors():
                loc = [str(part) for part in error["loc"]]
                if not loc or loc[0] not in entry:
                    continue
                holder, key = entry, loc[0]
                if len(loc) > 1 and isinstance(entry[loc[0]], dict) and loc[1] in entry[loc[0]]:
                    holder, key = entry[loc[0]], loc[1]
                if key in holder:
                    notes.append(f"{what}: dropped '{'.'.join(loc[:2])}' ({error['msg']})")
                    del holder[key]
                    removed = True
            if not removed:
                return entry, False
    return entry, False


def _canonical_config(raw: dict[str, Any], notes: list[str], where: str) -> dict[str, Any]:
    """Keys as field names: `--key` and aliases (`framerate`) become the one name the schema declares."""
    for key in raw:
        name = canonical_key(key) or bare_key(key)
        if name != key:
            notes.append(f"{where}: key '{key}' is written as '{name}'")
    return canonical_config(raw)


@dataclass
class Existing:
    """What is on disk, cleaned so that every key left is valid on its own."""

    config: dict[str, Any]
    datasets: list[dict[str, Any]]
    config_found: bool
    datasets_found: bool
    damaged: list[Path] = field(default_factory=list)  # replaced files that get a .bak copy
    notes: list[str] = field(default_factory=list)


def load_existing_config(path: Path, notes: list[str]) -> tuple[dict[str, Any] | None, bool]:
    raw, broken = _read_json(path, notes)
    if raw is None:
        return None, broken
    if not isinstance(raw, dict):
        notes.append(f"{path} is not a JSON object of settings; starting from defaults")
        return None, True
    canonical = _canonical_config(raw, notes, str(path))
    cleaned, valid = _drop_invalid(canonical, TrainConfig, str(path), notes)
    if not valid:  # a rule across keys (push_to_hub without hub_model_id): say so before any question
        build_train_config(cleaned, str(path))
    return cleaned, cleaned != canonical


_BACKEND_MODELS: dict[str, type[BaseModel]] = {
    "video": VideoBackend, "image": ImageBackend, "text_embeds": TextEmbedsBackend,
}


def load_existing_datasets(path: Path, notes: list[str]) -> tuple[list[dict[str, Any]] | None, bool]:
    raw, broken = _read_json(path, notes)
    if raw is None:
        return None, broken
    if not isinstance(raw, list):
        notes.append(f"{path} is not a JSON list of backends; starting from the example")
        return None, True
    kept: list[dict[str, Any]] = []
    damaged = False
    for position, entry in enumerate(raw):
        label = f"{path}, backend '{entry.get('id', position + 1) if isinstance(entry, dict) else position + 1}'"
        model = _BACKEND_MODELS.get(entry.get("dataset_type")) if isinstance(entry, dict) else None
        cleaned, valid = _drop_invalid(entry, model, label, notes) if model else (None, False)
        if cleaned is None or not valid:
            notes.append(f"{label}: dropped (not a usable backend)")
            damaged = True
            continue
        damaged = damaged or cleaned != entry
        kept.append(cleaned)
    return kept, damaged


def load_existing(config_path: Path, datasets_path: Path) -> Existing:
    notes: list[str] = []
    config, config_damaged = load_existing_config(config_path, notes)
    datasets, datasets_damaged = load_existing_datasets(datasets_path, notes)
    existing = Existing(
        config=config if config is not None else _example("config.json"),
        datasets=datasets if datasets is not None else _example("multidatabackend.json"),
        config_found=config is not None,
        datasets_found=datasets is not None,
        notes=notes,
    )
    existing.damaged = [p for p, bad in ((config_path, config_damaged), (datasets_path, datasets_damaged)) if bad]
    return existing


def datasets_path_for(config_path: Path, explicit: str | None, directory: str) -> Path:
    """The dataset file: --datasets, else the one the existing config names, else <directory>/multidatabackend.json."""
    if explicit:
        return Path(explicit)
    if config_path.is_file():
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
            named = raw.get("data_backend_config") or raw.get("--data_backend_config")
            if isinstance(named, str) and named:
                return Path(named)
        except (OSError, ValueError, AttributeError):
            pass
    return Path(directory) / "multidatabackend.json"


# --------------------------------------------------------------------------------------------------
# checking answers with the schema


def _bare_message(exc: ConfigError, keep_backend: bool = False) -> str:
    """The message without the 'file, key ...:' lead (and 'backend ...:': the question already says it)."""
    return exc.message if keep_backend else re.sub(r"^backend '[^']*': ", "", exc.message)


def _json_or_text(text: str) -> Any:
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
        raise BadAnswer(_bare_message(exc)) from None
    return value


_TEXT_EMBEDS_PROBE = {"id": "__wizard-text-embeds__", "type": "local", "dataset_type": "text_embeds", "default": True}


def check_video_backend(video: dict[str, Any]) -> None:
    """Validate one video backend as the dataset file's loader does."""
    try:
        build_datasets([video, _TEXT_EMBEDS_PROBE], "")
    except ConfigError as exc:
        raise BadAnswer(_bare_message(exc)) from None


def _with(entry: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    updated = copy.deepcopy(entry)
    holder = updated
    for part in path[:-1]:
        holder = holder.setdefault(part, {})
    holder[path[-1]] = value
    return updated


def with_num_frames(video: dict[str, Any], frames: int, fresh: bool) -> tuple[dict[str, Any], list[str]]:
    """Set video.num_frames and keep min_frames/max_frames consistent with it."""
    updated = _with(video, ("video", "num_frames"), frames)
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


# --------------------------------------------------------------------------------------------------
# the dataset folder


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


# --------------------------------------------------------------------------------------------------
# before writing: both files checked together


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
            raise ConfigError(_bare_message(exc, keep_backend=True), file=str(real), key=exc.key) from None
    loaded.train.data_backend_config = config["data_backend_config"]
    loaded.config_path, loaded.dataset_path = config_path, datasets_path
    return loaded


# --------------------------------------------------------------------------------------------------
# the wizard


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass
class WizardResult:
    config_path: Path
    datasets_path: Path
    loaded: LoadedConfig
    written: bool


class Wizard:
    """Asks the questions, builds both files in memory, validates and writes them."""

    def __init__(self, terminal: Terminal, config_path: Path, datasets_path: Path,
                 gpu_detector: Callable[[], GpuInfo | None] = detect_gpu) -> None:
        self.io = terminal
        self.config_path = config_path
        self.datasets_path = datasets_path
        self.detect_gpu = gpu_detector
        self.existing = load_existing(config_path, datasets_path)
        self.config: dict[str, Any] = copy.deepcopy(self.existing.config)
        self.datasets: list[dict[str, Any]] = copy.deepcopy(self.existing.datasets)
        self.video_index = self._video_backend_index()
        self.folders_to_create: list[Path] = []
        self.survey = FolderSurvey()
        self.old_frames: int | None = None  # the dataset's frame count before the wizard's answer

    # --- plumbing ------------------------------------------------------------------------------
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
        template = next(e for e in _example("multidatabackend.json") if e["dataset_type"] == "video")
        taken = {e.get("id") for e in self.datasets}
        if template["id"] in taken:
            template["id"] = "videos"
        self.datasets.insert(0, template)
        return 0

    def _ensure_text_embeds(self) -> None:
        if not any(e.get("dataset_type") == "text_embeds" and not e.get("disabled") for e in self.datasets):
            self.datasets.append(next(e for e in _example("multidatabackend.json") if e["dataset_type"] == "text_embeds"))
            self.io.say("  (added the text_embeds backend the trainer needs)")

    def ask(self, question: str, default: Any, check: Callable[[str], Any], hint: str | None = None) -> Any:
        """Ask until `check` accepts the answer; an empty answer takes the default."""
        if hint:
            self.io.say(f"  {hint}")
        shown = _show(default)
        if len(shown) > LONG_DEFAULT:  # a long prompt line scrolls or wraps badly: show the default above it
            self.io.say(f"  default: {shown}")
        while True:
            bracket = "Enter = the default above" if len(shown) > LONG_DEFAULT else shown
            raw = self.io.ask(f"{question} [{bracket}]: " if shown else f"{question}: ").strip()
            text = raw if raw else shown
            try:
                return check(text)
            except BadAnswer as exc:
                if not self.io.interactive:
                    raise ConfigError(f"{question}: the default {_show(default)!r} is not valid: {exc}") from None
                self.io.say(f"  ! {exc}")

    def choose(self, question: str, options: list[tuple[str, str]], default: str) -> str:
        """A numbered list; the answer is a number or a name."""
        self.io.say(f"{question}:")
        width = max(len(name) for name, _ in options)
        for number, (name, text) in enumerate(options, 1):
            if self.io.interactive:  # --yes: the list is noise in a script's log
                self.io.say(f"  {number:>2}. {name:<{width}}  {text}")
        names = [name for name, _ in options]

        def check(text: str) -> str:
            if text.isdigit() and 1 <= int(text) <= len(names):
                return names[int(text) - 1]
            if text in names:
                return text
            raise BadAnswer(f"'{text}' is not one of the choices; type a number 1-{len(names)} or a name")

        return self.ask(f"{question}, 1-{len(names)} or a name", default, check)

    def confirm(self, question: str, default: bool) -> bool:
        def check(text: str) -> bool:
            lowered = text.lower()
            if lowered in ("y", "yes"):
                return True
            if lowered in ("n", "no"):
                return False
            raise BadAnswer("answer y or n")

        return self.ask(f"{question} (y/n)", "y" if default else "n", check)

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
                     convert: Callable[[str], Any] = _json_or_text) -> Any:
        """Ask for one key of the video backend: `convert` types the text (or raises BadAnswer), then the
        dataset schema checks the backend with it."""
        def check(text: str) -> Any:
            value = convert(text)
            check_video_backend(_with(self.video, path, value))
            return value

        value = self.ask(question, default, check, hint)
        self.video = _with(self.video, path, value)
        return value

    # --- questions -----------------------------------------------------------------------------
    def ask_flavour(self) -> str:
        options = [(f.name, f.description) for f in FLAVOURS.values()]
        current = self.config.get("model_flavour", DEFAULT_FLAVOUR)
        flavour = self.choose("Model flavour (model_flavour)", options, current)
        self.config["model_family"] = "kandinsky5-video"
        self.config["model_flavour"] = flavour
        return flavour

    def ask_model_path(self) -> None:
        flavour = FLAVOURS[self.config["model_flavour"]]

        def extra(value: Any) -> None:
            local = Path(os.path.expanduser(str(value)))
            if local.is_dir() and not (local / "model_index.json").is_file():
                raise BadAnswer(f"{value} is a folder without model_index.json; a local model must be in diffusers layout")
            if not local.exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(value)):
                self.io.say(f"  note: {value} is neither a folder here nor a hub id (owner/name); kept as given")

        self._ask_config(
            "pretrained_model_name_or_path", "Model path or hub id override (pretrained_model_name_or_path)",
            optional=True, extra=extra, prepare=os.path.expanduser,
            hint=f"empty: the flavour's repository {flavour.hub_id}; a local folder in diffusers layout "
            "works like a hub id; 'none' clears an override",
        )

    def ask_dataset_folder(self) -> None:
        def folder_path(text: str) -> str:
            expanded = os.path.expanduser(text)  # training reads the path as written: no '~' there
            if Path(expanded).exists() and not Path(expanded).is_dir():
                raise BadAnswer(f"{text} is a file; give the folder that holds the clips")
            return expanded

        folder = self._ask_dataset(
            ("instance_data_dir",), "Dataset folder (instance_data_dir)",
            self.video.get("instance_data_dir", "datasets/videos"),
            hint=".mp4/.mov clips, each with a same-named .txt caption; searched recursively",
            convert=folder_path,
        )
        path = Path(os.path.expanduser(folder))
        if path.is_dir():
            self._report_folder(path)
        else:
            self.io.say(f"  ! {folder} does not exist yet")
            if self.confirm(f"Create {folder}?", True):
                self.folders_to_create.append(path)
                self.io.say("  it will be created when the files are written; put your clips there before training")

    def _report_folder(self, path: Path) -> None:
        self.survey = survey_folder(path)
        survey = self.survey
        if not survey.clips:
            self.io.say("  ! no clips there yet: add .mp4/.mov files with same-named .txt captions before training")
            return
        self.io.say(f"  found {survey.clips} clip{'s' * (survey.clips != 1)}, {survey.captioned} with a .txt caption")
        if survey.uncaptioned:
            listed = ", ".join(survey.uncaptioned[:3]) + (" ..." if len(survey.uncaptioned) > 3 else "")
            self.io.say(f"  ! without caption: {listed} (skipped by the textfile strategy)")

    def ask_captions(self) -> None:
        options = [
            ("textfile", "a same-named .txt beside each clip (several lines = several captions)"),
            ("filename", "the file name: red_ball-rolling.mp4 -> 'red ball rolling'"),
            ("instanceprompt", "one caption (instance_prompt) for every clip"),
        ]
        if self.survey.clips and not self.survey.captioned:
            self.io.say("  note: no .txt captions found; 'filename' or 'instanceprompt' work without them")
        strategy = self.choose("Caption strategy (caption_strategy)", options, self.video.get("caption_strategy", "textfile"))
        if strategy == "instanceprompt":
            # set both at once: the schema needs the prompt as soon as the strategy is instanceprompt
            self.video = _with(self.video, ("caption_strategy",), strategy)
            self._ask_dataset(("instance_prompt",), "Caption for every clip (instance_prompt)",
                              self.video.get("instance_prompt") or "", convert=str)
        else:
            self.video = _with(self.video, ("caption_strategy",), strategy)

    def ask_resolution(self) -> None:
        def one_number(text: str) -> Any:
            if re.search(r"\d\s*[xX×]\s*\d", text):
                raise BadAnswer("one number: the shorter edge in pixels (512 gives 512x768 for a 2:3 clip)")
            return _json_or_text(text)

        self._ask_dataset(("resolution",), "Training resolution, shorter edge in pixels (resolution)",
                          self.video.get("resolution", 512), convert=one_number,
                          hint="512 is the guide's choice; 480 or 384 need less memory, 720 is 720p and heavy")

    def ask_frames(self) -> None:
        flavour = self.config["model_flavour"]
        fresh = not self.existing.datasets_found

        def check(text: str) -> int:
            value = _json_or_text(text)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and FLAVOURS[flavour].is_i2v and \
                    0 < value < MIN_I2V_FRAMES and (value - 1) % 4 == 0:
                raise BadAnswer(f"{value} frames is too few for image-to-video: the I2V pipeline returns NaN "
                                f"frames at 13 or fewer; use {MIN_I2V_FRAMES} or more")
            candidate, _ = with_num_frames(self.video, value, fresh) if isinstance(value, int) else (
                _with(self.video, ("video", "num_frames"), value), [])
            check_video_backend(candidate)
            return value

        self.old_frames = self.video.get("video", {}).get("num_frames", 61)
        frames = self.ask("Frames per sample, 4k+1 (video.num_frames)", self.old_frames, check,
                          hint="33, 49 or 61 for ~5 s models; fewer frames need less memory")
        self.video, notes = with_num_frames(self.video, frames, fresh)
        for note in notes:
            self.io.say(f"  {note}")

    def ask_frame_rate(self) -> None:
        default = self.video.get("video", {}).get("frame_rate") or self.config.get("frame_rate", 24)
        fps = self._ask_config("frame_rate", "Frame rate in fps (frame_rate, also the dataset's video.frame_rate)",
                               default=default, hint="clips are resampled to it; Kandinsky 5 was trained at 24")
        self.video = _with(self.video, ("video", "frame_rate"), fps)
        frames = self.video["video"]["num_frames"]
        flavour = FLAVOURS[self.config["model_flavour"]]
        if frames / float(fps) > flavour.clip_seconds + 0.5:
            self.io.say(f"  note: {frames} frames at {_show(fps)} fps is {frames / float(fps):.1f} s, longer than "
                        f"the ~{flavour.clip_seconds} s clips {flavour.name} was trained for")

    def ask_memory(self) -> None:
        gpu = self.detect_gpu()
        if gpu:
            self.io.say(f"GPU: {gpu.name}, {gpu.total_gib:.1f} GiB" + (f" (x{gpu.count})" if gpu.count > 1 else ""))
            total = gpu.total_gib
            if gpu.count > 1:
                self._ask_processes(gpu.count)
        else:
            total = self.ask("GPU memory in GiB (no CUDA GPU found here)", 24, _positive_number,
                             hint="the memory of the card you will train on, e.g. 16, 24, 48 or 80")
        self._warn_small_or_pro(total)
        self._choose_preset(total)

    def _ask_processes(self, count: int) -> None:
        def at_most_count(value: Any) -> None:
            if value > count:
                raise BadAnswer(f"this machine has {count} GPUs")

        self._ask_config("num_processes", f"GPUs to train on, data-parallel (num_processes, 1-{count})",
                         default=self.config.get("num_processes", count), extra=at_most_count,
                         hint="each GPU holds the whole model and trains its share of every batch: faster, "
                         + ("or Pro sharded over them with FSDP2 (a memory preset below)"
                            if FLAVOURS[self.config["model_flavour"]].size == "pro" else "not less memory per GPU"))

    def _warn_small_or_pro(self, total: float) -> None:
        flavour = FLAVOURS[self.config["model_flavour"]]
        if flavour.size == "pro" and total < PRO_OFFLOAD_MIN_GIB:
            lite = "i2v-lite-5s" if flavour.is_i2v else DEFAULT_FLAVOUR
            self.io.say(f"  ! {flavour.name} is Pro (≈19B): even with group offload it needs ~11.4 GiB per GPU, "
                        f"more than a {total:.0f} GiB card has.")
            self.io.say(f"    Recommended: the Lite flavour {lite}.")
            if self.confirm(f"Switch to {lite}?", False):
                self.config["model_flavour"] = lite
                self.io.say(f"  model_flavour: {lite}")
        elif flavour.size != "pro" and total < LITE_MIN_GIB:
            self.io.say(f"  ! {total:.0f} GiB is below the ~4.1 GiB Lite needed at 512x768x61 with group offload "
                        "(plus the CUDA context): use a lower resolution (384) and fewer frames (33)")

    def _presets(self, total: float) -> tuple[list[MemoryPreset], str]:
        """The presets offered for the flavour and card, and the recommended one's name."""
        if FLAVOURS[self.config["model_flavour"]].size == "pro":
            processes = self.config.get("num_processes", 1)
            recommended = recommended_pro_preset(total, processes)
            self.io.say("  Pro (≈19B): " + {
                "pro-80gb": f"it fits a {total:.0f} GiB card whole (66.2 GiB, 7.7 s/step measured on an H100)",
                "pro-48gb": f"its weights fit a {total:.0f} GiB card; activation offload keeps the peak at "
                            "45.1 GiB (7.7 s/step measured on an H100)",
                "pro-fsdp2": f"FSDP2 shards it over the {processes} GPUs (fsdp_enable"
                             + (" + offload_activations: 38.7 GiB per GPU on 2 H100s)"
                                if total < PRO_FSDP_OFFLOAD_BELOW_GIB else ": 40.7 GiB per GPU on 2 H100s)"),
                "pro-group-offload": f"on a {total:.0f} GiB card group offload streams its blocks from CPU "
                                     "memory (11.4 GiB, 9.3 s/step measured on an H100)",
            }[recommended])
            return pro_presets(total, processes), recommended
        return [p for p in MEMORY_PRESETS.values() if preset_available(p)], recommended_preset(total)

    def _choose_preset(self, total: float) -> None:
        presets, recommended = self._presets(total)
        options = []
        has_current = self.existing.config_found and any(k in self.existing.config for k in PRESET_KEYS)
        if has_current:
            current = ", ".join(f"{k}={_show(self.existing.config[k])}" for k in PRESET_KEYS if k in self.existing.config)
            options.append((KEEP_PRESET, f"keep the current settings ({current})"))
        for preset in presets:
            mark = " (recommended)" if preset.name == recommended else ""
            options.append((preset.name, f"{preset.title}{mark}: {preset.note}"))
        choice = self.choose("Memory preset", options, KEEP_PRESET if has_current else recommended)
        if choice == KEEP_PRESET:
            return
        settings = next(p for p in presets if p.name == choice).settings
        for key in PRESET_KEYS:
            if key in settings:
                self.config[key] = settings[key]
            else:
                self.config.pop(key, None)

    def ask_validation(self) -> None:
        default = self.config.get("validation_prompt")
        if not self.existing.config_found or "validation_prompt" not in self.config:
            default = self.survey.first_caption or default
        prompt = self._ask_config(
            "validation_prompt", "Validation prompt (validation_prompt)", optional=True, default=default,
            hint="a video is made with it every validation_steps; 'none' = no validation videos. "
            "Describe motion (\"the camera pans right\")",
        )
        if prompt is None:
            return

        def snapped_note(value: Any) -> None:
            height, width = parse_resolution(value)
            if snap_resolution(height, width) != (height, width):
                self.io.say("  note: sides are rounded down to multiples of 16: {}x{}".format(*snap_resolution(height, width)))

        self._ask_config("validation_resolution", "Validation resolution HEIGHTxWIDTH (validation_resolution)",
                         extra=snapped_note, hint="512x768 is safe, 720x1280 (720p) is heavy; w768xh512 = width first")
        frames = self.video["video"]["num_frames"]
        current = self.config.get("validation_num_video_frames") if self.existing.config_found else None
        # follow the training frame count unless the file chose a different one on purpose
        default = frames if current is None or current == self.old_frames else current
        self._ask_config("validation_num_video_frames", "Frames of validation videos, 4k+1 (validation_num_video_frames)",
                         default=default)
        if FLAVOURS[self.config["model_flavour"]].is_i2v and not self.config.get("validation_image"):
            self.io.say("  note: image-to-video: set validation_image to a first frame, else the first frame of a "
                        "text-to-video generation is used")

    def ask_training(self) -> None:
        def warn_high(value: Any) -> None:
            if float(value) > 1e-3:
                self.io.say(f"  note: {value} is high for LoRA; 1e-4 is the usual start")

        self._ask_config("learning_rate", "Learning rate (learning_rate)", extra=warn_high)
        epochs = self.config.get("num_train_epochs")

        def steps_or_epochs(value: Any) -> None:
            if value is None and not epochs:
                raise BadAnswer("give a step count (or set num_train_epochs in the file first)")

        default_steps = self.config.get("max_train_steps", None if epochs else 2000)
        self._ask_config("max_train_steps", "Training steps (max_train_steps)", optional=True,
                         extra=steps_or_epochs, default=default_steps,
                         hint=f"'none' trains num_train_epochs={epochs} instead" if epochs else None)
        old_rank = self.config.get("lora_rank")
        rank = self._ask_config("lora_rank", "LoRA rank (lora_rank)", hint="16 is a good start; 32-64 learn more detail")
        alpha = self.config.get("lora_alpha")
        if alpha is not None and rank != old_rank:
            if alpha == old_rank:  # alpha = rank (scale 1) was the intent: keep the scale
                self.config["lora_alpha"] = rank
                self.io.say(f"  lora_alpha: {_show(alpha)} -> {rank} (it was equal to the rank; scale stays 1)")
            else:
                self.io.say(f"  note: lora_alpha stays {_show(alpha)} (scale alpha/rank = {float(alpha) / rank:.3g})")
        self._ask_config("output_dir", "Output folder (output_dir)", extra=self._note_checkpoints,
                         prepare=os.path.expanduser,
                         hint="the LoRA, checkpoints, logs and validation videos go here")

    def _note_checkpoints(self, value: Any) -> None:
        folder = Path(str(value))
        if folder.is_dir() and any(folder.glob("checkpoint-*")):
            self.io.say("  note: it holds checkpoints; `k5tune train --resume_from_checkpoint latest` continues them")

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> WizardResult:
        self._greet()
        self.ask_flavour()
        self.ask_model_path()
        self.ask_dataset_folder()
        self.ask_captions()
        self.ask_resolution()
        self.ask_frames()
        self.ask_frame_rate()
        self.ask_memory()
        self.ask_validation()
        self.ask_training()
        return self.finish()

    def _greet(self) -> None:
        self.io.say("k5tune configure: writes the training config and the dataset file.")
        self.io.say(f"  config:   {self.config_path}" + (" (existing values are the defaults)"
                                                         if self.existing.config_found else " (new)"))
        self.io.say(f"  datasets: {self.datasets_path}" + (" (existing values are the defaults)"
                                                            if self.existing.datasets_found else " (new)"))
        self.io.say("  Enter keeps the value in [brackets]; Ctrl-C stops without writing anything.")
        for note in self.existing.notes:
            self.io.say(f"  note: {note}")
        if len([e for e in self.datasets if e.get("dataset_type") in ("video", "image")]) > 1:
            self.io.say(f"  editing backend '{self.video.get('id')}'; the other backends are kept unchanged")
        self.io.say()

    def finish(self) -> WizardResult:
        self.config["data_backend_config"] = str(self.datasets_path)
        self._ensure_text_embeds()
        loaded = validate_together(self.config, self.datasets, self.config_path, self.datasets_path)
        self._print_changes()
        if not self.confirm(f"Write {self.config_path} and {self.datasets_path}?", True):
            raise Aborted()
        self._write()
        self._print_next_steps(loaded)
        return WizardResult(self.config_path, self.datasets_path, loaded, True)

    def _print_changes(self) -> None:
        self.io.say()
        self.io.say("Summary:")
        before = self.existing.config if self.existing.config_found else {}
        for key, value in self.config.items():
            if before.get(key, ...) != value:
                old = f"{_show(before[key])} -> " if key in before else ""
                self.io.say(f"  {key}: {old}{_show(value)}")
        for key in before:
            if key not in self.config:
                self.io.say(f"  {key}: removed")
        video = self.video
        self.io.say(f"  dataset '{video['id']}': {video['instance_data_dir']}, {video['caption_strategy']} captions, "
                    f"resolution {video['resolution']}, {video['video']['num_frames']} frames at "
                    f"{_show(video['video'].get('frame_rate'))} fps")

    def _write(self) -> None:
        for folder in self.folders_to_create:
            folder.mkdir(parents=True, exist_ok=True)
            self.io.say(f"created {folder}")
        for path in self.existing.damaged:
            if path.is_file():
                shutil.copy2(path, path.with_name(path.name + ".bak"))
                self.io.say(f"kept the old {path} as {path.name}.bak")
        atomic_write_json(self.datasets_path, self.datasets)  # indent 2, UTF-8 as typed, final newline
        atomic_write_json(self.config_path, self.config)
        self.io.say(f"wrote {self.config_path} and {self.datasets_path}")

    def _print_next_steps(self, loaded: LoadedConfig) -> None:
        for notice in loaded.notices():
            self.io.say(f"note: {notice}")
        flag = "" if str(self.config_path) == "config/config.json" else f" --config {self.config_path}"
        self.io.say("next:")
        self.io.say(f"  k5tune train --dry-run{flag}   # check both files, print the resolved settings")
        self.io.say(f"  k5tune train{flag}             # cache, train, validate, save")


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadAnswer(f"'{text}' is not a number; give the card's memory in GiB, e.g. 24") from None
    if value <= 0:
        raise BadAnswer("the memory must be more than 0 GiB")
    return value


def run_wizard(terminal: Terminal, config_path: str | Path, datasets_path: str | Path | None = None,
               directory: str = DEFAULT_DIRECTORY,
               gpu_detector: Callable[[], GpuInfo | None] = detect_gpu) -> WizardResult:
    """Ask, validate and write. Raises Aborted (declined), EOFError / KeyboardInterrupt (input ended)."""
    config_path = Path(config_path)
    resolved = datasets_path_for(config_path, str(datasets_path) if datasets_path else None, directory)
    return Wizard(terminal, config_path, resolved, gpu_detector).run()


def run_command(*, yes: bool, directory: str = DEFAULT_DIRECTORY, config: str | None = None,
                datasets: str | None = None) -> int:
    """`k5tune configure` without --example: the exit code (0 written, 1 declined or input ended, 130 Ctrl-C)."""
    terminal: Terminal = DefaultsTerminal() if yes else ConsoleTerminal()
    try:
        run_wizard(terminal, config or str(Path(directory) / "config.json"), datasets, directory)
    except Aborted:
        print("nothing written")
        return 1
    except EOFError:
        # piped answers ran out (or Ctrl-D): stop before writing anything
        print("\nk5tune: configure: input ended; nothing written (--yes takes every default without input)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nk5tune: configure: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0
