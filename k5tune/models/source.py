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
            return json.loads((Path(self.path_or_id) / subfolder / name).read_text(encoding="utf-8"))
        return _hub_config(self.path_or_id, subfolder, name, self.revision)


# A hub file at a revision does not change within a run, and each read is a network round trip (a
# timeout when offline): training asks for the transformer's config from several places (attention,
# sequence parallelism, CREPA). Failures are remembered too, so an offline run waits once.
_hub_configs: dict[tuple, dict[str, Any] | Exception] = {}


def _hub_config(repo_id: str, subfolder: str, name: str, revision: str | None) -> dict[str, Any]:
    key = (repo_id, subfolder, name, revision)
    if key not in _hub_configs:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(repo_id, name, subfolder=subfolder, revision=revision))
            _hub_configs[key] = json.loads(path.read_text(encoding="utf-8"))
        except Exception as error:  # noqa: BLE001 - re-raised below, for every caller alike
            _hub_configs[key] = error
    found = _hub_configs[key]
    if isinstance(found, Exception):
        raise found
    return dict(found)  # (a copy: callers may edit theirs)


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
