"""Load Kandinsky 5 components (transformer, VAE, Qwen2.5-VL, CLIP, tokenizers, scheduler) on demand.

A hub id and a local folder in diffusers layout are handled the same way (`from_pretrained`). Each
component is loaded the first time a command asks for it, in the dtype and on the device asked;
nothing is loaded at import or by `--dry-run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from k5tune.errors import K5TuneError
from k5tune.models.source import ModelSource, resolve_model_source  # noqa: F401 (re-exported)
from k5tune.models.tiny import PROMPT_INDEX_FILE

# The diffusers pipeline cuts this many template tokens for the real Qwen2.5-VL tokenizer.
DEFAULT_PROMPT_START_INDEX = 128


def _quiet_library_progress() -> None:
    """k5tune shows its own progress; the libraries' per-file loading bars would only add noise."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class ModelLoadError(K5TuneError):
    """A model component that cannot be found or read."""


@dataclass
class Kandinsky5Components:
    """Lazily loaded components of one Kandinsky 5 model."""

    source: ModelSource
    drop_vae_encoder: bool = False  # (crepa_drop_vae_encoder, every clip cached) the VAE loads decoder-only
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- loading --------------------------------------------------------------------------------
    def _kwargs(self, subfolder: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"subfolder": subfolder}
        if self.source.revision:
            kwargs["revision"] = self.source.revision
        return kwargs

    def _load(self, name: str, loader, dtype: torch.dtype | None, device: torch.device | str | None):
        if name not in self._cache:
            _quiet_library_progress()
            try:
                self._cache[name] = loader()
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"cannot load the {name} of '{self.source.path_or_id}' (flavour {self.source.flavour.name}): "
                    f"{str(exc).splitlines()[0]}. Give a local folder in diffusers layout with "
                    "pretrained_model_name_or_path, or make sure the hub id is reachable or cached."
                ) from exc
        component = self._cache[name]
        if dtype is not None and getattr(component, "dtype", dtype) != dtype:
            component.to(dtype=dtype)
        if device is not None and getattr(component, "device", None) != torch.device(device):
            component.to(device=device)
        return component

    def _plain(self, name: str, cls):
        """A component without dtype or device (tokenizers, scheduler), from `cls.from_pretrained`."""
        return self._load(
            name, lambda: cls.from_pretrained(self.source.path_or_id, **self._kwargs(name)), None, None
        )

    def transformer(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        from diffusers import Kandinsky5Transformer3DModel

        def load():
            return Kandinsky5Transformer3DModel.from_pretrained(
                self.source.path_or_id, torch_dtype=dtype, **self._kwargs("transformer")
            )

        return self._load("transformer", load, None, device)

    def vae(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        from diffusers import AutoencoderKLHunyuanVideo

        def load():
            vae = AutoencoderKLHunyuanVideo.from_pretrained(
                self.source.path_or_id, torch_dtype=dtype, **self._kwargs("vae")
            )
            if self.drop_vae_encoder:
                vae.encoder = None  # validation decodes only (T2V)
            return vae.eval().requires_grad_(False)

        return self._load("vae", load, dtype, device)

    def text_encoder(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        from transformers import Qwen2_5_VLForConditionalGeneration

        def load():
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.source.path_or_id, dtype=dtype, **self._kwargs("text_encoder")
            )
            return model.eval().requires_grad_(False)

        return self._load("text_encoder", load, dtype, device)

    def text_encoder_2(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        from transformers import CLIPTextModel

        def load():
            model = CLIPTextModel.from_pretrained(self.source.path_or_id, dtype=dtype, **self._kwargs("text_encoder_2"))
            return model.eval().requires_grad_(False)

        return self._load("text_encoder_2", load, dtype, device)

    def tokenizer(self):
        # The plain Qwen2 tokenizer: Qwen2VLProcessor would need torchvision, and the pipeline only
        # tokenises text.
        from transformers import AutoTokenizer

        return self._plain("tokenizer", AutoTokenizer)

    def tokenizer_2(self):
        from transformers import CLIPTokenizer

        return self._plain("tokenizer_2", CLIPTokenizer)

    def scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return self._plain("scheduler", FlowMatchEulerDiscreteScheduler)

    def offload(self, *names: str) -> None:
        """Move loaded components to the CPU (keeping them loaded)."""
        for name in names:
            if name in self._cache and hasattr(self._cache[name], "to"):
                self._cache[name].to("cpu")

    def unload(self, *names: str) -> None:
        """Forget components entirely (frees their memory)."""
        for name in names:
            self._cache.pop(name, None)

    def loaded(self) -> list[str]:
        return sorted(self._cache)

    # --- facts about the model ------------------------------------------------------------------
    @property
    def prompt_start_index(self) -> int:
        """How many template tokens the pipeline cuts off before the caption.

        The diffusers pipeline hard-codes 128 for the real Qwen tokenizer; a tiny model made by
        `k5tune make-tiny-model` records its own value in k5tune_prompt.json.
        """
        if "prompt_start_index" not in self._cache:
            value = DEFAULT_PROMPT_START_INDEX
            if self.source.is_local:
                record = Path(self.source.path_or_id) / PROMPT_INDEX_FILE
                if record.is_file():
                    value = int(json.loads(record.read_text())["prompt_template_encode_start_idx"])
            self._cache["prompt_start_index"] = value
        return self._cache["prompt_start_index"]

    def scheduler_shift(self) -> float:
        return float(self.scheduler().config.get("shift", 1.0))

    def vae_scaling_factor(self) -> float:
        return float(self.vae().config.scaling_factor)

    def pipeline(self, **given):
        """A diffusers pipeline over these components (the reference for every convention).

        Components passed by keyword are used as given (None included: a pipeline fed cached prompt
        embeddings needs no text encoders); the others are loaded.
        """
        from diffusers import Kandinsky5I2VPipeline, Kandinsky5T2VPipeline

        pipeline_cls = Kandinsky5I2VPipeline if self.source.flavour.is_i2v else Kandinsky5T2VPipeline
        loaders = {
            "transformer": self.transformer,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "text_encoder_2": self.text_encoder_2,
            "tokenizer_2": self.tokenizer_2,
            "scheduler": self.scheduler,
        }
        parts = {name: given[name] if name in given else load() for name, load in loaders.items()}
        pipe = pipeline_cls(**parts)
        pipe.prompt_template_encode_start_idx = self.prompt_start_index
        return pipe
