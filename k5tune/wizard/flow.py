"""The question order, and the run: greet, ask, check both files together, show the changes, write.

Questions: flavour, model override, dataset folder, captions, resolution, frames, frame rate, a memory
preset picked from the GPU's memory, validation, learning rate, steps, LoRA rank, output folder.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k5tune.config.loading import LoadedConfig
from k5tune.hostmem import HostMemory, host_memory
from k5tune.wizard.advanced import AdvancedQuestions
from k5tune.wizard.answers import FolderSurvey, validate_together
from k5tune.wizard.files import datasets_path_for, load_existing, write_files
from k5tune.wizard.memory import GpuInfo, MemoryQuestions, detect_gpu
from k5tune.wizard.questions import Questions
from k5tune.wizard.terminal import Aborted, ConsoleTerminal, DefaultsTerminal, Terminal, show

DEFAULT_DIRECTORY = "config"


@dataclass
class WizardResult:
    config_path: Path
    datasets_path: Path
    loaded: LoadedConfig
    written: bool


class Wizard(Questions, MemoryQuestions, AdvancedQuestions):
    """Asks the questions, builds both files in memory, validates and writes them."""

    def __init__(self, terminal: Terminal, config_path: Path, datasets_path: Path,
                 gpu_detector: Callable[[], GpuInfo | None] = detect_gpu, advanced: bool = False,
                 host_detector: Callable[[], HostMemory | None] = host_memory) -> None:
        self.io = terminal
        self.advanced = advanced
        self.config_path = config_path
        self.datasets_path = datasets_path
        self.detect_gpu = gpu_detector
        self.detect_host = host_detector
        self.existing = load_existing(config_path, datasets_path)
        self.config: dict[str, Any] = copy.deepcopy(self.existing.config)
        self.datasets: list[dict[str, Any]] = copy.deepcopy(self.existing.datasets)
        self.video_index = self._video_backend_index()
        self.folders_to_create: list[Path] = []
        self.survey = FolderSurvey()
        self.old_frames: int | None = None  # the dataset's frame count before the wizard's answer

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
        if self.advanced:
            self.ask_advanced()
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
                old = f"{show(before[key])} -> " if key in before else ""
                self.io.say(f"  {key}: {old}{show(value)}")
        for key in before:
            if key not in self.config:
                self.io.say(f"  {key}: removed")
        video = self.video
        self.io.say(f"  dataset '{video['id']}': {video['instance_data_dir']}, {video['caption_strategy']} captions, "
                    f"resolution {video['resolution']}, {video['video']['num_frames']} frames at "
                    f"{show(video['video'].get('frame_rate'))} fps")

    def _write(self) -> None:
        write_files(self.io.say, self.config_path, self.config, self.datasets_path, self.datasets,
                    self.folders_to_create, self.existing.damaged)

    def _print_next_steps(self, loaded: LoadedConfig) -> None:
        for notice in loaded.notices():
            self.io.say(f"note: {notice}")
        flag = "" if str(self.config_path) == "config/config.json" else f" --config {self.config_path}"
        self.io.say("next:")
        self.io.say(f"  k5tune train --dry-run{flag}   # check both files, print the resolved settings")
        self.io.say(f"  k5tune train{flag}             # cache, train, validate, save")


def run_wizard(terminal: Terminal, config_path: str | Path, datasets_path: str | Path | None = None,
               directory: str = DEFAULT_DIRECTORY,
               gpu_detector: Callable[[], GpuInfo | None] = detect_gpu, advanced: bool = False,
               host_detector: Callable[[], HostMemory | None] = host_memory) -> WizardResult:
    """Ask, validate and write. Raises Aborted (declined), EOFError / KeyboardInterrupt (input ended)."""
    config_path = Path(config_path)
    resolved = datasets_path_for(config_path, str(datasets_path) if datasets_path else None, directory)
    return Wizard(terminal, config_path, resolved, gpu_detector, advanced, host_detector).run()


def run_command(*, yes: bool, directory: str = DEFAULT_DIRECTORY, config: str | None = None,
                datasets: str | None = None, advanced: bool = False) -> int:
    """`k5tune configure` without --example: the exit code (0 written, 1 declined or input ended, 130 Ctrl-C)."""
    terminal: Terminal = DefaultsTerminal() if yes else ConsoleTerminal()
    try:
        run_wizard(terminal, config or str(Path(directory) / "config.json"), datasets, directory, advanced=advanced)
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
