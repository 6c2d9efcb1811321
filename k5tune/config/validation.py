"""The validation prompts, negative prompt and conditioning images a config asks for (read and checked
here, before any model loads)."""

from __future__ import annotations

from pathlib import Path

from k5tune.errors import ConfigError

# The negative prompt the diffusers pipeline uses when none is given.
PIPELINE_NEGATIVE_PROMPT = (
    "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, ugly, "
    "deformed, walking backwards"
)


def validation_prompts(train_config) -> list[str]:
    prompts: list[str] = []
    if train_config.validation_prompt:
        prompts.append(train_config.validation_prompt)
    if train_config.validation_prompt_library:
        library = Path(train_config.validation_prompt_library)
        if not library.is_file():
            raise ConfigError(f"{library} is not a file of prompts", key="validation_prompt_library")
        prompts += [line.strip() for line in library.read_text(encoding="utf-8").splitlines() if line.strip()]
    return prompts


def negative_prompt(train_config) -> str:
    return train_config.validation_negative_prompt or PIPELINE_NEGATIVE_PROMPT


def validation_image_paths(train_config, prompt_count: int) -> list[Path] | None:
    """One image path per prompt, or None when none is configured."""
    value = train_config.validation_image
    if value is None:
        return None
    paths = [Path(value)] * prompt_count if isinstance(value, str) else [Path(v) for v in value]
    if len(paths) != prompt_count:
        raise ConfigError(
            f"{len(paths)} validation images for {prompt_count} validation prompts; give one image for all "
            "prompts or exactly one per prompt", key="validation_image")
    return paths


def check_validation_images(train_config) -> None:
    """Fail before training, not at the first validation, when an image is missing."""
    if train_config.disable_validation:
        return
    paths = validation_image_paths(train_config, len(validation_prompts(train_config))) or []
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"image not found: {missing[0]}", key="validation_image")
