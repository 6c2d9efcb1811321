"""What a training output folder holds (checkpoints, validation videos, the LoRA) and clip thumbnails."""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from pathlib import Path

from k5tune.server.paths import ProjectPaths

_STEP_FOLDER = re.compile(r"^step-(\d+)$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _prompts(folder: Path) -> dict[str, str]:
    """validation/step-N/prompts.txt: `prompt-00.mp4<TAB>the prompt` per line."""
    try:
        text = (folder / "prompts.txt").read_text(encoding="utf-8")
    except OSError:
        return {}
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


def _ours(paths: ProjectPaths, path: Path) -> bool:
    """Whether `path` resolves inside the project (or an allowed root): a symlink leading out is not
    listed, so nothing of an outside file (name, size, time) reaches the page."""
    return paths.within(path.resolve(strict=False))


def list_outputs(output_dir: Path, paths: ProjectPaths) -> dict:
    """Checkpoints (newest last) and validation videos (by step) of one output folder; paths are
    relative to the project, ready for /api/files."""
    result: dict = {"output_dir": paths.relative(output_dir), "checkpoints": [], "videos": [], "lora": None,
                    "loss_plot": None}
    if not output_dir.is_dir():
        return result
    for entry in output_dir.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir() and _ours(paths, entry):
            files = [f for f in entry.iterdir() if f.is_file() and _ours(paths, f)]
            result["checkpoints"].append({
                "name": entry.name, "step": int(match.group(1)), "path": paths.relative(entry),
                "size_bytes": sum(f.stat().st_size for f in files),
                "modified": entry.stat().st_mtime, "files": sorted(f.name for f in files),
            })
    result["checkpoints"].sort(key=lambda c: c["step"])
    validation = output_dir / "validation"
    if validation.is_dir() and _ours(paths, validation):
        for folder in sorted(validation.iterdir()):
            match = _STEP_FOLDER.match(folder.name)
            if not (match and folder.is_dir() and _ours(paths, folder)):
                continue
            prompts = _prompts(folder)
            for video in sorted(folder.glob("*.mp4")):
                if video.name.startswith(".") or not _ours(paths, video):  # temp name: still being written
                    continue
                result["videos"].append({"step": int(match.group(1)), "name": video.name,
                                         "path": paths.relative(video), "prompt": prompts.get(video.name, "")})
    lora = output_dir / "pytorch_lora_weights.safetensors"
    if lora.is_file() and _ours(paths, lora):
        result["lora"] = paths.relative(lora)
    if (output_dir / "loss.png").is_file() and _ours(paths, output_dir / "loss.png"):
        result["loss_plot"] = paths.relative(output_dir / "loss.png")
    return result


# --------------------------------------------------------------------------------------------------
# thumbnails

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class ThumbnailError(Exception):
    pass


class Thumbnails:
    """First frame of a clip (display orientation) as a small JPEG, cached by path, size and mtime."""

    def __init__(self, max_side: int = 320, capacity: int = 512):
        self.max_side = max_side
        self.capacity = capacity
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> bytes:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._render(path)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data

    def _render(self, path: Path) -> bytes:
        from PIL import Image, ImageOps

        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        elif suffix in VIDEO_SUFFIXES:
            image = self._first_frame(path)
        else:
            raise ThumbnailError(f"{path.name}: not a video or image file")
        image.thumbnail((self.max_side, self.max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    @staticmethod
    def _first_frame(path: Path):
        import av

        from k5tune.data.probe import ProbeError, pick_video_stream, probe_video

        try:
            rotation = probe_video(path).rotation
        except ProbeError as exc:
            raise ThumbnailError(f"{path.name}: {exc}") from exc
        try:
            with av.open(str(path)) as container:
                stream = pick_video_stream(container)
                if stream is None:
                    raise ThumbnailError(f"{path.name}: no video stream")
                frame = next(container.decode(stream), None)
                if frame is None:
                    raise ThumbnailError(f"{path.name}: no frame could be decoded")
                image = frame.to_image()
        except av.FFmpegError as exc:
            raise ThumbnailError(f"{path.name}: cannot decode ({exc})") from exc
        # rotation is counter-clockwise degrees turning decoded frames into display frames; PIL's
        # rotate() turns counter-clockwise for positive angles too
        return image.rotate(rotation, expand=True) if rotation else image
