"""Schema of the dataset file (`config/multidatabackend.json`): a list of backends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from k5tune.config.frames import MAX_RESOLUTION, frame_count_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class VideoOptions(_Strict):
    """The `video` section of a video backend."""

    num_frames: int = Field(61, description="Frames per training sample; must be 4k+1 (33, 49, 61, ...).")
    min_frames: int | None = Field(
        None,
        description="Clips shorter than this (after resampling to frame_rate) are dropped and reported. "
        "Default: num_frames. Must be at least num_frames.",
    )
    max_frames: int | None = Field(
        None, description="Clips longer than this (after resampling) are dropped and reported. Default: no limit."
    )
    frame_rate: float | None = Field(
        None,
        description="Frames per second clips are resampled to before sampling frames. Default: the config's frame_rate.",
    )
    bucket_strategy: Literal["aspect_ratio", "resolution_frames"] = Field(
        "aspect_ratio",
        description="aspect_ratio: group by aspect only, fixed num_frames. resolution_frames: group by WxH@F "
        "(e.g. 1920x1080@61), frame counts rounded down to frame_interval.",
    )
    frame_interval: int = Field(
        4,
        ge=4,
        description="With resolution_frames: clip frame counts are rounded down to a multiple of this (then "
        "to 4k+1). Must be a multiple of 4.",
    )
    random_start: bool = Field(
        False, description="Take num_frames from a random start in each clip instead of from its first frame."
    )

    @field_validator("num_frames")
    @classmethod
    def _num_frames_4k1(cls, value: int) -> int:
        problem = frame_count_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("frame_interval")
    @classmethod
    def _interval_multiple_of_4(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"{value} is not a multiple of 4; use {value // 4 * 4 or 4} or {value // 4 * 4 + 4}")
        return value

    @field_validator("min_frames")
    @classmethod
    def _min_not_below_num(cls, value: int | None, info: ValidationInfo) -> int | None:
        num_frames = info.data.get("num_frames")
        if value is not None and num_frames is not None and value < num_frames:
            raise ValueError(
                f"min_frames ({value}) is smaller than num_frames ({num_frames}): a clip shorter than "
                f"num_frames cannot fill a sample; set min_frames to {num_frames} or more"
            )
        return value

    @field_validator("max_frames")
    @classmethod
    def _max_not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        floor = max(info.data.get("num_frames") or 0, info.data.get("min_frames") or 0)
        if value is not None and value < floor:
            raise ValueError(f"max_frames ({value}) is below num_frames/min_frames ({floor}): every clip would be dropped")
        return value

    @property
    def effective_min_frames(self) -> int:
        return self.min_frames if self.min_frames is not None else self.num_frames


class _MediaBackend(_Strict):
    id: str = Field(..., description="A unique name for this dataset; used in reports and cache folders.")
    type: Literal["local"] = Field("local", description="Where the files live; only 'local' folders.")
    instance_data_dir: str = Field(..., description="Folder scanned recursively for media files.")
    caption_strategy: Literal["textfile", "filename", "instanceprompt"] = Field(
        "textfile",
        description="textfile: same-named .txt beside each file (several lines = several captions). "
        "filename: the file name. instanceprompt: instance_prompt for every file.",
    )
    instance_prompt: str | None = Field(None, description="The caption for caption_strategy=instanceprompt.")
    resolution: int = Field(
        512, gt=0, le=MAX_RESOLUTION,
        description="Target size in pixels; see resolution_type for how it is measured."
    )
    resolution_type: Literal["pixel", "area"] = Field(
        "pixel",
        description="pixel: the shorter edge becomes `resolution` (512 -> 512x768 for 2:3). "
        "area: width*height ~= resolution^2 with the clip's aspect.",
    )
    crop_style: Literal["center", "random"] = Field(
        "center", description="How frames are cropped to their bucket after resizing."
    )
    repeats: int = Field(
        0, ge=0, description="Extra passes over this dataset per epoch: each clip is seen 1 + repeats times."
    )
    cache_dir_vae: str | None = Field(
        None, description="Where VAE latents are cached. Default: cache/vae/<id>."
    )
    disabled: bool = Field(False, description="Skip this backend entirely.")
    eval: bool = Field(
        False, description="Held out for the eval loss: cached like the others, evaluated every eval_steps, "
        "never trained on (see eval_holdout_fraction for a seeded split of the training clips instead).")

    @model_validator(mode="after")
    def _instance_prompt_needed(self):
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError("caption_strategy 'instanceprompt' needs 'instance_prompt' (the caption to use)")
        return self

    @property
    def vae_cache_dir(self) -> str:
        return self.cache_dir_vae or f"cache/vae/{self.id}"


class VideoBackend(_MediaBackend):
    """Video clips (.mp4, .mov, .mkv, .webm) with captions."""

    dataset_type: Literal["video"] = "video"
    video: VideoOptions = Field(default_factory=VideoOptions, description="Frame sampling and bucketing.")


class ImageBackend(_MediaBackend):
    """Still images, trained as 1-frame clips."""

    dataset_type: Literal["image"] = "image"


class TextEmbedsBackend(_Strict):
    """Where text embeddings are cached."""

    id: str = Field(..., description="A unique name for this backend.")
    type: Literal["local"] = "local"
    dataset_type: Literal["text_embeds"] = "text_embeds"
    default: bool = Field(False, description="The text-embedding cache used by every dataset.")
    cache_dir: str = Field("cache/text/kandinsky5", description="Folder of the text-embedding cache.")
    disabled: bool = Field(False, description="Ignore this backend.")


DatasetBackend = Annotated[VideoBackend | ImageBackend | TextEmbedsBackend, Field(discriminator="dataset_type")]
MEDIA_TYPES = ("video", "image")
