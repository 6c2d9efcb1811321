"""What the estimate is asked about: the training shape (clip size, batch, LoRA) and the plan.

The memory settings are k5tune/train/plan.py's TrainingPlan, the object `k5tune train` runs: the
estimate reads a config through `TrainingPlan.from_config` and asks the plan its decisions (what
compiles, which offload mechanism runs, what is recomputed, which combinations are refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from k5tune.config.frames import latent_frames
from k5tune.models.flavours import FLAVOURS
from k5tune.train.plan import TrainingPlan


@dataclass
class TrainingShape:
    height: int = 512
    width: int = 768
    frames: int = 61
    batch: int = 1
    rank: int = 32
    targets: list[str] = field(default_factory=lambda: ["to_query", "to_key", "to_value", "out_layer", "feed_forward"])

    @property
    def tokens(self) -> int:
        return latent_frames(self.frames) * (self.height // 16) * (self.width // 16)


def estimate_problem(plan: TrainingPlan) -> str | None:
    """Why this plan cannot be estimated (or cannot train), or None."""
    if plan.checkpointing == "none":
        return "gradient_checkpointing false is not modelled (it needs tens of GiB: Lite 78 GiB measured)"
    return plan.problem()


def plan_from_config(cfg, processes: int | None = None, flavour: str | None = None) -> TrainingPlan:
    """The plan of a TrainConfig as `k5tune train` builds it (processes: --num-processes, flavour:
    --flavour, else the config's), with the TREAD routes resolved against the flavour's blocks (end
    inclusive) and NABLA as training would resolve it; group offload is modelled block by block whatever
    its type."""
    processes, flavour = processes or cfg.num_processes, flavour or cfg.model_flavour
    tread: tuple[tuple[float, int, int], ...] = ()
    if cfg.tread_config is not None:
        from k5tune.models.kandinsky5.tread import resolve_routes

        blocks = FLAVOURS[flavour].transformer_config["num_visual_blocks"]
        tread = tuple((r.ratio, r.start, r.end) for r in resolve_routes(cfg.tread_config, blocks))
    return replace(TrainingPlan.from_config(cfg, processes, nabla=_attention(cfg, flavour)), tread=tread,
                   group_offload_leaf=False)


def _attention(cfg, flavour: str):
    """NABLA's settings where training would use it, else None: train/attention.py's decision, with the
    registry's transformer config standing in for the model's (no download here)."""
    from k5tune.train.attention import resolve  # (imports torch: the wizard imports this module without it)

    return resolve(cfg, FLAVOURS[flavour].transformer_config, f"flavour {flavour}").nabla


def shape_from_config(loaded, resolution: str | None = None, frames: int | None = None,
                      rank: int | None = None) -> TrainingShape:
    """The training shape of a loaded config: the first video dataset's resolution (the shorter side of
    a 2:3 clip, the guide's 512 -> 512x768) and frames, unless given (HEIGHTxWIDTH, frames, rank)."""
    video = next((b for b in loaded.media_backends if b.dataset_type == "video"), None)
    return _shape(loaded.train, video, resolution, frames, rank)


def _shape(cfg, video, resolution: str | None = None, frames: int | None = None,
           rank: int | None = None) -> TrainingShape:
    from k5tune.config.frames import parse_resolution, snap_resolution

    if resolution:
        height, width = snap_resolution(*parse_resolution(resolution))
    else:
        short = video.resolution if video else 512
        height, width = snap_resolution(short, round(short * 1.5))
    frames = frames or (video.video.num_frames if video else cfg.validation_num_video_frames)
    return shape_of(cfg, height, width, frames, rank)


def shape_of(cfg, height: int, width: int, frames: int, rank: int | None = None) -> TrainingShape:
    """A clip of HEIGHTxWIDTHxFRAMES trained as the config says (batch, LoRA rank and targets)."""
    return TrainingShape(height, width, frames, cfg.train_batch_size, rank or cfg.lora_rank,
                         list(cfg.lora_target_modules))


def shape_and_plan_from_values(config: dict, datasets: list) -> tuple[TrainingShape, TrainingPlan] | None:
    """`shape_from_config` and `plan_from_config` of config.json's and the dataset file's values, as the
    wizard holds them mid-way and the web UI reads them, without loading the files; None where they do
    not validate yet or hold no video dataset (the recommender then goes by the presets' measured shape)."""
    from pydantic import ValidationError

    from k5tune.config.datasets import VideoBackend
    from k5tune.config.schema import TrainConfig
    from k5tune.errors import ConfigError

    try:
        cfg = TrainConfig(**config)
        video = next((VideoBackend(**d) for d in datasets
                      if isinstance(d, dict) and d.get("dataset_type") == "video" and not d.get("disabled")), None)
        if video is None:  # (images only, or no dataset yet: the presets' measured shape stands)
            return None
        return _shape(cfg, video), plan_from_config(cfg)
    except (ValidationError, ConfigError, ValueError, TypeError):
        return None
