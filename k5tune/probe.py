"""`k5tune probe`: does training learn what the clips show? A test that can fail.

On the tiny model (built here), three LoRAs train from the same captions ("a shape moving"): one on
shapes moving right, one on shapes moving down, and a control on clips of random noise. Each is then
measured by its eval loss on held-out clips of both motions. Training learns the content when each
motion LoRA's eval loss is lower on its own motion than on the other by at least `margin` (10 %), and
the noise LoRA prefers neither motion by that much. The threshold is fixed; nothing is tuned to pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from k5tune.atomic import atomic_write_json
from k5tune.data.synthetic import COLORS, SHAPES, render_clip, write_clip

CAPTION = "a shape moving"
MOTIONS = ("right", "down")
MARGIN = 0.10


def write_motion_clips(folder: Path, motion: str, count: int, offset: int = 0) -> None:
    """`count` clips of one motion in varied shapes, colours and sizes, all captioned alike."""
    colors = list(COLORS)
    for index in range(offset, offset + count):
        clip = write_clip(folder / f"{motion}_{index:03d}.mp4", frames=24, width=64, height=48, motion=motion,
                          shape=SHAPES[index % len(SHAPES)], color=colors[index % len(colors)],
                          size=10 + 2 * (index % 4))
        clip.with_suffix(".txt").write_text(CAPTION + "\n", encoding="utf-8")


def write_noise_clips(folder: Path, count: int, seed: int = 0) -> None:
    """`count` clips of uniform random noise, captioned as the motion clips are: nothing to learn."""
    import av

    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"noise_{index:03d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for _ in range(24):
                picture = generator.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        path.with_suffix(".txt").write_text(CAPTION + "\n", encoding="utf-8")


@dataclass
class ProbeResult:
    losses: dict[str, dict[str, float]] = field(default_factory=dict)  # LoRA -> held-out motion -> eval loss

    def preference(self, lora: str) -> dict[str, float]:
        """For each motion, how much lower this LoRA's loss is on it than on the other (share of the other)."""
        own = self.losses[lora]
        return {m: 1 - own[m] / own[other] for m, other in (MOTIONS, MOTIONS[::-1])}

    @property
    def learned(self) -> bool:
        return all(self.preference(m)[m] >= MARGIN for m in MOTIONS)

    @property
    def control_passes(self) -> bool:
        """Whether the noise LoRA shows a motion preference of the margin (it must not)."""
        return max(self.preference("noise").values()) >= MARGIN

    def table(self) -> str:
        lines = ["LoRA trained on   eval loss: right   down    preference for its motion"]
        for lora, losses in self.losses.items():
            preference = self.preference(lora)
            mine = f"{preference[lora]:+.1%}" if lora in MOTIONS else f"max {max(preference.values()):+.1%}"
            lines.append(f"{lora:<16}              {losses['right']:.4f}   {losses['down']:.4f}   {mine}")
        verdict = "learned" if self.learned and not self.control_passes else "NOT learned"
        lines.append(f"result: {verdict} (each motion LoRA >= {MARGIN:.0%} lower on its own motion; the noise "
                     f"LoRA < {MARGIN:.0%} on both)")
        return "\n".join(lines)


# The probe's training recipe: LoRA on attention and feed-forward (the tiny model's 2 blocks leave attention
# alone little to adapt), at the learning rate the tests train the tiny model with.
RECIPE = {"learning_rate": 2e-3, "lr_warmup_steps": 0, "lora_rank": 16,
          "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"]}


def _project(root: Path, model: Path, trained_on: str, steps: int, seed: int) -> Path:
    folder = root / f"lora-{trained_on}"
    (folder / "config").mkdir(parents=True, exist_ok=True)
    config = {"pretrained_model_name_or_path": str(model), "output_dir": str(folder / "output"), "report_to": "none",
              "max_train_steps": steps, **RECIPE, "seed": seed,
              "eval_steps": steps, "checkpointing_steps": steps, "data_backend_config": str(folder / "config" / "data.json")}
    backends = [{"id": "train", "dataset_type": "video", "instance_data_dir": str(root / "clips" / trained_on),
                 "resolution": 48, "video": {"num_frames": 17}, "cache_dir_vae": str(folder / "cache" / "train")}]
    backends += [{"id": f"held-out-{motion}", "dataset_type": "video", "eval": True,
                  "instance_data_dir": str(root / "clips" / f"held-out-{motion}"), "resolution": 48,
                  "video": {"num_frames": 17}, "cache_dir_vae": str(folder / "cache" / motion)} for motion in MOTIONS]
    backends.append({"id": "text", "dataset_type": "text_embeds", "default": True,
                     "cache_dir": str(folder / "cache" / "text")})
    (folder / "config" / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "config" / "data.json").write_text(json.dumps(backends, indent=2))
    return folder / "config" / "config.json"


def make_latents_carry_the_clip(model: Path) -> float:
    """Rescale the tiny VAE so the synthetic clips' latents have unit std, as the real VAE's 0.476986 does
    for real videos. With the released factor the random VAE's latents have a std of about 0.11: the
    training noise (std 1) drowns what tells one motion from another and no LoRA could learn it. Returns
    the new scaling factor (written to the model's vae/config.json)."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(model, subfolder="vae").eval()
    clips = [render_clip(frames=17, width=64, height=48, motion=motion) for motion in MOTIONS]
    pixels = torch.stack([torch.from_numpy(c).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in clips])
    with torch.no_grad():
        std = vae.encode(pixels).latent_dist.mode().std().item()
    config_path = model / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["scaling_factor"] = round(1.0 / std, 6)
    atomic_write_json(config_path, config)
    return config["scaling_factor"]


def run_probe(workdir: str | Path, steps: int = 300, seed: int = 0, progress=None) -> ProbeResult:
    from k5tune.config import load_config
    from k5tune.models.tiny import make_tiny_model
    from k5tune.workflow import train

    root = Path(workdir).resolve()
    model = make_tiny_model(root / "tiny-model")
    make_latents_carry_the_clip(model)
    for motion in MOTIONS:
        write_motion_clips(root / "clips" / motion, motion, 8)
        write_motion_clips(root / "clips" / f"held-out-{motion}", motion, 4, offset=8)  # unseen clips
    write_noise_clips(root / "clips" / "noise", 8, seed)
    result = ProbeResult()
    for trained_on in (*MOTIONS, "noise"):
        run = train(load_config(_project(root, model, trained_on, steps, seed)), progress=progress)
        result.losses[trained_on] = {m: run.eval_by_dataset[f"held-out-{m}"] for m in MOTIONS}
    return result
