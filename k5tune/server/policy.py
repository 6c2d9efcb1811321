"""The one path policy of the web UI, applied at Save and at Start alike: every path a setting of
config.json or of the dataset file names lies inside the project, or under a root allowed with
`--allow-root`; otherwise a PathRefused that names the key.

Relative paths are taken from the project folder (where runs start), logging_dir from output_dir. A
model given by hub id is no path; pretrained_model_name_or_path is checked when it names a local folder.
At Start (and Preview) a dataset folder is also searched for symlinks that lead out.
"""

from __future__ import annotations

import os
from pathlib import Path

from k5tune.server.paths import PathRefused, ProjectPaths

CONFIG_PATH_KEYS = ("data_backend_config", "output_dir", "validation_prompt_library", "resume_from_checkpoint",
                    "validation_image", "pretrained_model_name_or_path")
BACKEND_PATH_KEYS = ("instance_data_dir", "cache_dir_vae", "cache_dir")


def _local(paths: ProjectPaths, value: str) -> bool:
    """Whether a model setting names a local folder rather than a hub id."""
    return value.startswith(("/", ".", "~")) or (paths.root / value).exists()


def check_config(paths: ProjectPaths, values: dict, file: str = "config.json") -> None:
    """Every path key of config.json (values already in canonical names)."""
    for key in CONFIG_PATH_KEYS:
        value = values.get(key)
        named = value if isinstance(value, list) else [value]
        for item in named:
            if not isinstance(item, str) or not item:
                continue
            if key == "resume_from_checkpoint" and item == "latest":
                continue
            if key == "pretrained_model_name_or_path" and not _local(paths, item):
                continue
            _check(paths, item, key, file)
    output = values.get("output_dir")
    logging = values.get("logging_dir")
    if isinstance(logging, str) and logging:
        base = paths.resolve(output, key="output_dir") if isinstance(output, str) and output else paths.root
        _check(paths, logging, "logging_dir", file, base=base)


def check_backends(paths: ProjectPaths, backends: list, file: str = "dataset file", *,
                   walk: bool = False) -> None:
    """Every path key of every backend; with `walk`, no symlink in a dataset folder may lead out."""
    for index, backend in enumerate(backends if isinstance(backends, list) else []):
        if not isinstance(backend, dict):
            continue
        for key in BACKEND_PATH_KEYS:
            value = backend.get(key)
            if isinstance(value, str) and value:
                folder = _check(paths, value, key, file, backend=index)
                if walk and key == "instance_data_dir" and folder.is_dir() and (out := paths.links_out(folder)):
                    shown = Path(os.path.relpath(out, paths.root)).as_posix()
                    raise PathRefused(f"{key}: {shown} is a link that leads outside the project folder",
                                      key=key, file=file, backend=index)


def _check(paths: ProjectPaths, value: str, key: str, file: str, *, backend: int | None = None,
           base: Path | None = None) -> Path:
    try:
        return paths.resolve(value, key=key, base=base)
    except PathRefused as exc:
        raise PathRefused(str(exc), key=key, file=file, backend=backend) from None
