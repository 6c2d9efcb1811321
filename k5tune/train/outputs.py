"""What a training run leaves, and how it is told to the user (and optionally uploaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from k5tune.validate.runner import ValidationVideo


@dataclass
class TrainResult:
    output_dir: Path
    lora_path: Path
    metrics_csv: Path
    loss_plot: Path | None
    report_json: Path
    steps: int
    total_steps: int = 0
    interrupted: bool = False
    resumed_from: Path | None = None
    last_checkpoint: Path | None = None
    nonfinite_skipped: int = 0
    hub_url: str | None = None
    is_main: bool = True  # False in the other processes of a multi-GPU run
    videos: list[ValidationVideo] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    best_eval: tuple[int, float] | None = None  # (step, eval loss) of the lowest eval loss
    closest_checkpoint: Path | None = None  # the checkpoint nearest that step
    eval_by_dataset: dict[str, float] = field(default_factory=dict)  # the last eval loss per eval dataset


def describe_outputs(result: TrainResult) -> str:
    if result.interrupted:
        return (f"stopped cleanly at step {result.steps} of {result.total_steps}; checkpoint: {result.last_checkpoint}\n"
                f"resume with: k5tune train --resume_from_checkpoint latest")
    lines = [f"trained {result.steps} steps; outputs in {result.output_dir}:",
             f"  LoRA:        {result.lora_path}",
             f"  checkpoint:  {result.last_checkpoint}",
             f"  metrics:     {result.metrics_csv}",
             f"  loss plot:   {result.loss_plot}",
             f"  data report: {result.report_json}"]
    if result.best_eval:
        step, loss = result.best_eval
        lines.append(f"  eval loss:   lowest at step {step} ({loss:.4g}); closest checkpoint: {result.closest_checkpoint}")
    if result.nonfinite_skipped:
        lines.append(f"  note: {result.nonfinite_skipped} step(s) with a NaN/inf loss or gradient were skipped")
    final_videos = result.videos[-len({v.prompt for v in result.videos}):] if result.videos else []
    for video in final_videos:
        lines.append(f"  validation:  {video.path}  ({json.dumps(video.prompt)})")
    return "\n".join(lines)


def push_to_hub(repo_id: str, output_dir: Path, result: TrainResult) -> str:
    """Upload the final LoRA, its loss plot and metrics (not checkpoints or caches) to the Hub."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(output_dir), commit_message=f"k5tune LoRA after {result.steps} steps",
        allow_patterns=["pytorch_lora_weights.safetensors", "loss.png", "metrics.csv", "validation/**"],
    )
    return str(getattr(info, "commit_url", info))
