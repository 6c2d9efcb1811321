"""Frame-count and resolution rules shared by the schema, the data pipeline and validation."""

from __future__ import annotations

import re

TEMPORAL_COMPRESSION = 4  # HunyuanVideo VAE: 4 pixel frames per latent frame (+1 for the first)
# upper bounds the schema gives sizes, so that an absurd value is refused with the valid range (far above
# what Kandinsky 5 makes: 10 s at 24 fps is 241 frames, Pro's largest side 1280)
MAX_FRAMES = 1021
MAX_RESOLUTION = 4096
SPATIAL_MULTIPLE = 16  # 8x VAE downscale times the transformer's 2x2 patch
# The I2V pipeline returns NaN frames for <= 4 latent frames (<= 13 pixel frames): std of an empty slice.
MIN_I2V_FRAMES = 17


def is_valid_frame_count(frames: int) -> bool:
    return frames >= 1 and (frames - 1) % TEMPORAL_COMPRESSION == 0


def nearest_valid_frame_counts(frames: int) -> tuple[int, int]:
    """The valid (4k+1) counts just below and just above `frames`."""
    lower = max(1, ((frames - 1) // TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION + 1)
    return lower, lower + TEMPORAL_COMPRESSION


def frame_count_problem(frames: int) -> str | None:
    """A message when `frames` is not 4k+1, else None."""
    if frames < 1:
        return f"{frames} frames is not a positive count; use 4k+1 frames such as 33, 49 or 61"
    if frames > MAX_FRAMES:
        return f"{frames} frames is too many (valid range: 1 to {MAX_FRAMES}, 4k+1)"
    if is_valid_frame_count(frames):
        return None
    low, high = nearest_valid_frame_counts(frames)
    return (
        f"{frames} frames is not 4k+1 (the VAE packs 4 frames per latent after the first); "
        f"the nearest valid counts are {low} and {high}"
    )


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_COMPRESSION + 1


_PLAIN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_TAGGED = re.compile(r"^\s*([hHwW])(\d+)\s*[xX×]\s*([hHwW])(\d+)\s*$")


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse a resolution into (height, width).

    `512x768` is HEIGHT x WIDTH, as in the guide's `720x1280` (720p) and the diffusers pipeline's
    defaults (height=512, width=768). The other order is written with letters, which cannot be
    misread: `w768xh512` (or `h512xw768`).
    """
    plain = _PLAIN.match(text)
    if plain:
        height, width = int(plain.group(1)), int(plain.group(2))
    else:
        tagged = _TAGGED.match(text)
        if not tagged or tagged.group(1).lower() == tagged.group(3).lower():
            raise ValueError(
                f"'{text}' is not a resolution; write HEIGHTxWIDTH such as 512x768 or 720x1280, "
                "or tag the sides, e.g. w768xh512"
            )
        sides = {tagged.group(1).lower(): int(tagged.group(2)), tagged.group(3).lower(): int(tagged.group(4))}
        height, width = sides["h"], sides["w"]
    if height <= 0 or width <= 0:
        raise ValueError(f"'{text}' has a zero side; write HEIGHTxWIDTH such as 512x768")
    if max(height, width) > MAX_RESOLUTION:
        raise ValueError(f"'{text}' is too large; each side must be 16 to {MAX_RESOLUTION} pixels")
    return height, width


def snap_resolution(height: int, width: int) -> tuple[int, int]:
    """Round each side down to a multiple of 16 (VAE 8x times patch 2x): 480x854 -> 480x848."""
    return (
        max(SPATIAL_MULTIPLE, height // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE),
        max(SPATIAL_MULTIPLE, width // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE),
    )
