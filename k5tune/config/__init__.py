"""Typed configuration: the schema of config.json and of the dataset file, and their loading."""

from k5tune.config.datasets import DatasetBackend, ImageBackend, TextEmbedsBackend, VideoBackend, VideoOptions
from k5tune.config.loading import LoadedConfig, load_config, parse_overrides
from k5tune.config.schema import TrainConfig

__all__ = [
    "DatasetBackend",
    "ImageBackend",
    "LoadedConfig",
    "TextEmbedsBackend",
    "TrainConfig",
    "VideoBackend",
    "VideoOptions",
    "load_config",
    "parse_overrides",
]
