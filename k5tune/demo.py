"""`k5tune demo`: the whole pipeline on a tiny random-weight model and synthetic clips, on CPU.

It writes, under its work folder, a tiny model, eight captioned clips of moving shapes (two motions),
and a config in the guide's layout; then it runs exactly what `k5tune train` runs.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from k5tune.progress import Progress, TqdmProgress

DEMO_STEPS = 200
DEMO_CONFIG = {
    "model_family": "kandinsky5-video",
    "model_flavour": "t2v-lite-sft-5s",
    "pretrained_model_name_or_path": "model",
    "output_dir": "output",
    "train_batch_size": 2,
    "learning_rate": 1e-3,
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 5,
    "max_train_steps": DEMO_STEPS,
    "lora_rank": 8,
    "lora_alpha": 8,
    "seed": 42,
    "report_to": "tensorboard",
    "validation_prompt": "a red circle moving to the right on a dark background",
    "validation_prompt_library": "prompts.txt",
    "validation_steps": 100,
    "validation_resolution": "64x96",
    "validation_num_video_frames": 17,
    "validation_num_inference_steps": 8,
    "validation_guidance": 5.0,
    "frame_rate": 24,
    "offload_during_startup": True,
}
DEMO_DATASETS = [
    {
        "id": "demo-clips",
        "type": "local",
        "dataset_type": "video",
        "instance_data_dir": "datasets/videos",
        "caption_strategy": "textfile",
        "resolution": 64,
        "video": {"num_frames": 17, "min_frames": 17, "frame_rate": 24, "bucket_strategy": "aspect_ratio"},
        "repeats": 1,
    },
    {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True,
     "cache_dir": "cache/text/kandinsky5"},
]


def prepare_demo(workdir: str | Path) -> Path:
    """Write the tiny model, the clips and both config files (kept if already there)."""
    from k5tune.data.synthetic import write_demo_dataset
    from k5tune.models.tiny import make_tiny_model

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "model" / "model_index.json").is_file():
        make_tiny_model(workdir / "model")
    if not any((workdir / "datasets" / "videos").glob("*.mp4")):
        write_demo_dataset(workdir / "datasets" / "videos", n=8, frames=36, width=96, height=64)
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.json").write_text(json.dumps(DEMO_CONFIG, indent=2) + "\n")
    (workdir / "config" / "multidatabackend.json").write_text(json.dumps(DEMO_DATASETS, indent=2) + "\n")
    (workdir / "prompts.txt").write_text("a blue square moving downwards on a dark background\n")
    return workdir


def run_demo(workdir: str | Path = "k5tune-demo", progress: Progress | None = None):
    from k5tune.config import load_config
    from k5tune.workflow import train

    workdir = prepare_demo(workdir)
    # The config's relative paths are relative to the folder k5tune runs in, as for any user.
    with contextlib.chdir(workdir):
        result = train(load_config(), progress=progress or TqdmProgress(), device="cpu")
    return workdir, result
