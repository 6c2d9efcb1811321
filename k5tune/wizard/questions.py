"""The wizard's questions, apart from memory (memory.py): flavour, model override, dataset folder,
captions, resolution, frames, frame rate, validation, learning rate, steps, LoRA rank, output folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from k5tune.config.frames import MIN_I2V_FRAMES, parse_resolution, snap_resolution
from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS
from k5tune.wizard.answers import (
    Answers,
    FolderSurvey,
    check_video_backend,
    json_or_text,
    survey_folder,
    with_num_frames,
    with_value,
)
from k5tune.wizard.terminal import BadAnswer, show


class Questions(Answers):
    """One method a question (or a few that belong together); each stores its answer in the files."""

    survey: FolderSurvey
    folders_to_create: list[Path]
    old_frames: int | None

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
            self.video = with_value(self.video, ("caption_strategy",), strategy)
            self._ask_dataset(("instance_prompt",), "Caption for every clip (instance_prompt)",
                              self.video.get("instance_prompt") or "", convert=str)
        else:
            self.video = with_value(self.video, ("caption_strategy",), strategy)

    def ask_resolution(self) -> None:
        def one_number(text: str) -> Any:
            if re.search(r"\d\s*[xX×]\s*\d", text):
                raise BadAnswer("one number: the shorter edge in pixels (512 gives 512x768 for a 2:3 clip)")
            return json_or_text(text)

        self._ask_dataset(("resolution",), "Training resolution, shorter edge in pixels (resolution)",
                          self.video.get("resolution", 512), convert=one_number,
                          hint="512 is the guide's choice; 480 or 384 need less memory, 720 is 720p and heavy")

    def ask_frames(self) -> None:
        flavour = self.config["model_flavour"]
        fresh = not self.existing.datasets_found

        def check(text: str) -> int:
            value = json_or_text(text)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and FLAVOURS[flavour].is_i2v and \
                    0 < value < MIN_I2V_FRAMES and (value - 1) % 4 == 0:
                raise BadAnswer(f"{value} frames is too few for image-to-video: the I2V pipeline returns NaN "
                                f"frames at 13 or fewer; use {MIN_I2V_FRAMES} or more")
            candidate, _ = with_num_frames(self.video, value, fresh) if isinstance(value, int) else (
                with_value(self.video, ("video", "num_frames"), value), [])
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
        self.video = with_value(self.video, ("video", "frame_rate"), fps)
        frames = self.video["video"]["num_frames"]
        flavour = FLAVOURS[self.config["model_flavour"]]
        if frames / float(fps) > flavour.clip_seconds + 0.5:
            self.io.say(f"  note: {frames} frames at {show(fps)} fps is {frames / float(fps):.1f} s, longer than "
                        f"the ~{flavour.clip_seconds} s clips {flavour.name} was trained for")

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
                self.io.say(f"  lora_alpha: {show(alpha)} -> {rank} (it was equal to the rank; scale stays 1)")
            else:
                self.io.say(f"  note: lora_alpha stays {show(alpha)} (scale alpha/rank = {float(alpha) / rank:.3g})")
        self._ask_config("output_dir", "Output folder (output_dir)", extra=self._note_checkpoints,
                         prepare=os.path.expanduser,
                         hint="the LoRA, checkpoints, logs and validation videos go here")

    def _note_checkpoints(self, value: Any) -> None:
        folder = Path(str(value))
        if folder.is_dir() and any(folder.glob("checkpoint-*")):
            self.io.say("  note: it holds checkpoints; `k5tune train --resume_from_checkpoint latest` continues them")
