"""Per-step metrics as CSV, a loss plot as PNG, and the optional tracker (tensorboard)."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "step_seconds", "peak_gib"]


class MetricsLog:
    """Appends one row per optimizer step to `metrics.csv` (flushed, so a crash keeps the rows). `extra`:
    the columns of the features this run uses (rollout, ...) after the usual ones; a file written with
    other columns (a resumed run that switched a feature on) is rewritten with all of them first."""

    def __init__(self, path: str | Path, extra: list[str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = COLUMNS + [c for c in extra or [] if c not in COLUMNS]
        self._widen()
        new = not self.path.exists()
        self._handle = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns)
        if new:
            self._writer.writeheader()

    def _widen(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, rows = reader.fieldnames or [], list(reader)
        if header == self.columns:
            return
        self.columns = self.columns + [c for c in header if c not in self.columns]
        from k5tune.atomic import atomic_target

        with atomic_target(self.path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        self._writer.writerow({k: row.get(k) for k in self.columns})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class NullMetrics:
    """What processes other than the first write: nothing."""

    path = Path("/dev/null")

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    with Path(path).open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def plot_loss(csv_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss per step and its moving average, as a PNG beside the CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(csv_path) if "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    axis.plot(steps, losses, alpha=0.35, label="loss")
    axis.plot(steps, smooth, label=f"moving average ({window})")
    evaluated = [r for r in rows if "eval_loss" in r]
    if evaluated:  # the held-out loss beside it (train/evaluate.py): where it turns up, the LoRA overfits
        axis.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated], "o-", label="eval loss")
    crepa = [r for r in rows if "crepa_loss" in r]
    if crepa:  # CREPA: the flow-matching term apart, and CREPA's term on its own scale
        axis.plot([r["step"] for r in crepa], [r["flow_loss"] for r in crepa], label="flow-matching term")
        right = axis.twinx()
        right.plot([r["step"] for r in crepa], [r["crepa_loss"] for r in crepa], color="tab:purple", alpha=0.6,
                   label="CREPA term (right axis)")
        right.set_ylabel("CREPA term (negative similarity)")
        right.legend(loc="upper center")
    axis.set_xlabel("step")
    axis.set_ylabel("flow-matching loss" + (" (loss = flow + lambda * CREPA)" if crepa else ""))
    axis.set_title("k5tune training loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return Path(png_path)


class Tracker:
    """Metrics and validation videos to tensorboard, wandb (works offline) or nowhere."""

    def __init__(self, kind: str, directory: str | Path, run_name: str, project: str = "k5tune",
                 config: dict | None = None):
        self.kind = kind
        self._writer = None
        self._run = None
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(directory) / run_name))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError as exc:
                from k5tune.errors import ConfigError

                raise ConfigError("report_to wandb needs the wandb package: pip install 'k5tune[wandb]' "
                                  "(set WANDB_MODE=offline to log without a network)", key="report_to") from exc
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(project=project, name=run_name, dir=str(directory), config=config or {},
                                   reinit="finish_previous")

    def scalars(self, step: int, **values: float) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"train/{name}", value, step)
        if self._run is not None:
            self._run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def video(self, step: int, tag: str, path: Path, frames, fps: float, caption: str) -> None:
        """frames: (F, H, W, 3) floats in [0, 1]."""
        if self._writer is not None:
            self._writer._get_file_writer().add_summary(_gif_summary(f"validation/{tag}", frames, fps), step)
            self._writer.add_text(f"validation/{tag}", f"{caption} ({path})", step)
        if self._run is not None:
            import wandb

            self._run.log({f"validation/{tag}": wandb.Video(str(path), caption=caption, format="mp4")}, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._run is not None:
            self._run.finish()


def _gif_summary(tag: str, frames, fps: float):
    """An animated GIF image summary: what TensorBoard's add_video writes, without needing moviepy."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray((np.clip(f, 0, 1) * 255 + 0.5).astype("uint8")) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    height, width = frames.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """On resume, drop rows logged after the checkpoint (they will be trained again)."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames or COLUMNS, list(reader)
    kept = [r for r in rows if r.get("step") and int(float(r["step"])) <= last_step]
    if len(kept) == len(rows):
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(kept)
