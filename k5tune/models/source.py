"""Where a model's weights come from: a flavour's hub repository or a local folder in diffusers layout.

Light on purpose (no torch, diffusers or transformers): `--dry-run` reads configs through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k5tune.models.flavours import Flavour, get_flavour


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from and which flavour they are."""

    path_or_id: str
    flavour: Flavour
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path_or_id).is_dir()

    def config_file(self, subfolder: str, name: str = "config.json") -> dict[str, Any]:
        """A component's JSON config, read without importing diffusers or loading weights (the local folder,
        or the hub: its cache when offline)."""
        if self.is_local:
            path = Path(self.path_or_id) / subfolder / name
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(self.path_or_id, name, subfolder=subfolder, revision=self.revision))
        return json.loads(path.read_text(encoding="utf-8"))


def resolve_model_source(flavour_name: str, override: str | None = None, revision: str | None = None) -> ModelSource:
    flavour = get_flavour(flavour_name)
    return ModelSource(path_or_id=override or flavour.hub_id, flavour=flavour, revision=revision)


def transformer_config_of(cfg) -> tuple[dict[str, Any], str]:
    """The run's transformer config, read without loading weights, and where it came from; the flavour
    registry's when it cannot be read now (offline, nothing cached)."""
    source = resolve_model_source(cfg.model_flavour, cfg.pretrained_model_name_or_path, cfg.revision)
    try:
        return source.config_file("transformer"), f"{source.path_or_id}/transformer/config.json"
    except Exception:  # noqa: BLE001 - unreadable now: the registry has every flavour's config
        return get_flavour(cfg.model_flavour).transformer_config, f"flavour {cfg.model_flavour}"
