"""The caching stage on the tiny model and synthetic clips.

Latents and text embeddings are encoded once, stored atomically as safetensors with a manifest, reused
by later runs, rebuilt only where an input changed; `k5tune cache` prints the dataset report; the
memory knobs (offload_during_startup, vae_enable_patch_conv, vae_enable_tiling) do what they say; and
what we cache is exactly what the diffusers Kandinsky 5 pipeline computes and consumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from k5tune.cache import TensorStore
from k5tune.cache.builder import build_caches
from k5tune.cache.result import EMPTY_CAPTION, CacheResult
from k5tune.cli import main
from k5tune.config.datasets import TextEmbedsBackend, VideoBackend
from k5tune.config.schema import TrainConfig
from k5tune.data.frames import load_clip_frames
from k5tune.data.scan import scan_backends
from k5tune.data.synthetic import write_clip
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.models.kandinsky5 import patch_conv as patch_conv_module
from k5tune.runtime import Runtime

FRAMES, WIDTH, HEIGHT, FPS = 17, 64, 48, 24.0
CLIPS = {  # name -> (motion, shape, colour, caption); the captions have different token counts
    "c0": ("right", "circle", "red", "a red circle moving to the right"),
    "c1": ("down", "square", "blue", "a blue square sliding downwards across a dark, empty background, slowly"),
    "c2": ("static", "circle", "green", "green"),
}
ENCODERS = ("vae", "text_encoder", "text_encoder_2")


@dataclass
class Project:
    """A dataset folder and its two caches, all under `root`."""

    root: Path
    model_dir: str

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    def backends(self, resolution: int = HEIGHT) -> tuple[VideoBackend, TextEmbedsBackend]:
        video = VideoBackend(
            id="clips", instance_data_dir=str(self.clips), resolution=resolution, video={"num_frames": FRAMES},
            cache_dir_vae=str(self.root / "cache" / "vae"),
        )
        text = TextEmbedsBackend(id="text-embeds", default=True, cache_dir=str(self.root / "cache" / "text"))
        return video, text

    def components(self) -> Kandinsky5Components:
        return Kandinsky5Components(resolve_model_source("t2v-lite-sft-5s", self.model_dir))

    def cache(self, resolution: int = HEIGHT, components=None, **config) -> tuple[CacheResult, list]:
        video, text = self.backends(resolution)
        records, _ = scan_backends([video], FPS)
        result = build_caches(TrainConfig(**config), [video], text, records, components or self.components(),
                              Runtime.detect("bf16", device="cpu"))
        return result, records

    def latent_files(self) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in (self.root / "cache" / "vae").rglob("*.safetensors")}

    def copy(self, destination: Path, with_cache: bool = True) -> Project:
        shutil.copytree(self.clips, destination / "clips")
        if with_cache:
            shutil.copytree(self.root / "cache", destination / "cache")
        return Project(destination, self.model_dir)


def write_clips(folder: Path, names=tuple(CLIPS), frames: int = FRAMES) -> None:
    for name in names:
        motion, shape, color, caption = CLIPS[name]
        path = write_clip(folder / f"{name}.mp4", frames=frames, fps=FPS, width=WIDTH, height=HEIGHT,
                          motion=motion, shape=shape, color=color)
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")


@dataclass
class FirstRun:
    project: Project
    result: CacheResult
    records: list


@pytest.fixture(scope="module")
def first(tmp_path_factory, tiny_model_dir) -> FirstRun:
    """Three clips cached once from scratch; tests that change anything work on a copy."""
    project = Project(tmp_path_factory.mktemp("cached"), tiny_model_dir)
    write_clips(project.clips)
    result, records = project.cache()
    return FirstRun(project, result, records)


class ComponentSpy:
    """Wraps the real loading methods of Kandinsky5Components; records what is loaded after each call."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, set[str]]] = []
        for name in (*ENCODERS, "unload"):
            real = getattr(Kandinsky5Components, name)

            def spy(components, *args, _real=real, _name=name, **kwargs):
                out = _real(components, *args, **kwargs)
                label = f"unload {','.join(args)}" if _name == "unload" else f"load {_name}"
                self.events.append((label, set(components.loaded()) & set(ENCODERS)))
                return out

            monkeypatch.setattr(Kandinsky5Components, name, spy)

    def loads(self) -> list[str]:
        return [label for label, _ in self.events if label.startswith("load")]


# --- 1. what is cached, and reuse ------------------------------------------------------------------


@pytest.mark.slow
def test_first_run_writes_scaled_latents_and_embeddings_as_safetensors_with_a_manifest(first, tiny_model_dir):
    from diffusers import AutoencoderKLHunyuanVideo

    result = first.result
    assert result.encoded_latents == 3
    assert result.encoded_captions == 4  # the three captions and the empty one (caption dropout)
    assert result.size_bytes() > 0

    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_model_dir, subfolder="vae").eval()
    scaling = vae.config.scaling_factor
    assert scaling == pytest.approx(0.476986)
    latent_store = result.latent_stores["clips"]
    manifest = json.loads((latent_store.root / "manifest.json").read_text())
    assert len(manifest) == 3
    for record in first.records:
        key = result.latent_keys[record.key]
        path = latent_store.path(key)
        assert path.suffix == ".safetensors" and path.is_file()
        assert manifest[key] == {"clip": str(record.path), "bucket": f"{WIDTH}x{HEIGHT}@{FRAMES}"}
        cached = load_file(path)["latents"]
        # channel-last (F', H/8, W/8, C), 4x temporal and 8x spatial compression
        assert cached.shape == ((FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, vae.config.latent_channels)
        assert cached.dtype == torch.float32

    # One clip recomputed here with the plain diffusers API: posterior mean times the config's factor.
    record = first.records[0]
    with torch.no_grad():
        pixels = load_clip_frames(record)  # center crop: no randomness
        expected = vae.encode(pixels.unsqueeze(0)).latent_dist.mode() * scaling
    torch.testing.assert_close(result.latents(record.key, "clips"), expected[0].permute(1, 2, 3, 0), atol=1e-5, rtol=0)

    text_manifest = json.loads((result.text_store.root / "manifest.json").read_text())
    assert sorted(entry["caption"] for entry in text_manifest.values()) == sorted(
        [EMPTY_CAPTION, *(caption for *_, caption in CLIPS.values())]
    )
    for caption, key in result.text_keys.items():
        assert result.text_store.path(key).suffix == ".safetensors"
        qwen, clip = result.prompt(caption)
        assert qwen.ndim == 2 and qwen.shape[0] >= 1 and qwen.shape[1] == 32  # (tokens, tiny Qwen dim)
        assert clip.shape == (32,)  # tiny CLIP pooled dim
    lengths = {c: result.prompt(c)[0].shape[0] for c in result.text_keys}
    assert lengths[CLIPS["c2"][3]] < lengths[CLIPS["c0"][3]] < lengths[CLIPS["c1"][3]]  # stored unpadded


def test_second_run_encodes_nothing_and_loads_no_encoder(first, tmp_path, monkeypatch):
    project = first.project.copy(tmp_path)
    before = project.latent_files()
    manifests = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json")}
    spy = ComponentSpy(monkeypatch)

    result, records = project.cache()

    assert (result.encoded_latents, result.encoded_captions) == (0, 0)
    assert spy.loads() == []  # neither the VAE nor a text encoder was even loaded
    assert project.latent_files() == before  # same files, untouched (mtimes in ns)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("manifest.json")} == manifests
    for record in records:
        torch.testing.assert_close(result.latents(record.key, "clips"), first.result.latents(record.key, "clips"),
                                   atol=0, rtol=0)


def test_new_resolution_reencodes_only_the_latents(first, tmp_path):
    project = first.project.copy(tmp_path)
    text_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "text").rglob("*.safetensors")}

    result, records = project.cache(resolution=32)  # 4:3 at 32 px -> 48x32 buckets

    assert (result.encoded_latents, result.encoded_captions) == (3, 0)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "text").rglob("*.safetensors")} == text_before
    for record in records:
        assert record.bucket.name == f"48x32@{FRAMES}"
        assert result.latents(record.key, "clips").shape == (5, 32 // 8, 48 // 8, 16)


def test_edited_caption_reencodes_only_that_caption(first, tmp_path):
    project = first.project.copy(tmp_path)
    before = project.latent_files()
    (project.clips / "c1.txt").write_text("a blue square falling\n", encoding="utf-8")

    result, _ = project.cache()

    assert (result.encoded_latents, result.encoded_captions) == (0, 1)
    assert project.latent_files() == before
    assert "a blue square falling" in result.text_keys
    assert result.prompt("a blue square falling")[0].shape[1] == 32


@pytest.mark.slow
def test_interrupted_latent_caching_leaves_no_half_entry_and_the_rerun_finishes(first, tmp_path, monkeypatch):
    """Ctrl-C while the second clip's latents are being written (a partial temp file on disk)."""
    from k5tune import atomic

    project = first.project.copy(tmp_path)
    shutil.rmtree(tmp_path / "cache" / "vae")
    real_open = atomic.open_for_writing
    latent_writes: list[str] = []

    class HalfWritten:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])  # the write is half done ...
            self.handle.flush()
            raise KeyboardInterrupt  # ... when the user presses Ctrl-C

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def interrupted_open(path):
        handle = real_open(path)
        if (tmp_path / "cache" / "vae") in Path(path).parents:
            latent_writes.append(str(path))
            if len(latent_writes) == 2:
                return HalfWritten(handle)
        return handle

    monkeypatch.setattr(atomic, "open_for_writing", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        project.cache()
    monkeypatch.setattr(atomic, "open_for_writing", real_open)

    video, _ = project.backends()
    records, _ = scan_backends([video], FPS)
    keys = [first.result.latent_keys[r.key] for r in records]  # same clips, same model: same keys
    store = TensorStore(video.vae_cache_dir)
    assert Path(latent_writes[1]).name.startswith(".tmp-")
    assert not Path(latent_writes[1]).exists()
    assert [store.has(key) for key in keys] == [True, False, False]  # no half file under a trusted name
    assert store.verified(keys[0])
    assert not list(store.root.rglob(".tmp-*"))

    result, _ = project.cache()
    assert (result.encoded_latents, result.encoded_captions) == (2, 0)  # exactly the missing entries
    for record in records:
        torch.testing.assert_close(result.latents(record.key, "clips"), first.result.latents(record.key, "clips"),
                                   atol=0, rtol=0)
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert set(manifest) == set(keys)  # the entry written before the interruption is described too


def test_killed_write_leaves_only_a_temp_file_which_the_next_open_removes(tmp_path):
    """A hard kill (SIGKILL: no cleanup code runs) in the middle of writing an entry."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        import torch
        from k5tune import atomic
        import k5tune.cache.store as store_module

        store = store_module.TensorStore(sys.argv[1])
        store.put("aa" * 20, {"latents": torch.ones(4, 4)})
        store.save_manifest()

        class Dying:  # the process dies half-way through writing the entry's bytes
            def __init__(self, handle): self.handle = handle
            def write(self, data):
                self.handle.write(data[: len(data) // 2]); self.handle.flush(); os.fsync(self.handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            def __enter__(self): return self
            def __exit__(self, *exc): pass

        real_open = atomic.open_for_writing
        atomic.open_for_writing = lambda path: Dying(real_open(path))
        store.put("bb" * 20, {"latents": torch.zeros(64, 64)})
        """
    )
    root = tmp_path / "store"
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    leftovers = list(root.rglob(".tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].parent.name == "bb" and leftovers[0].stat().st_size > 0
    assert not (root / "bb" / f"{'bb' * 20}.safetensors").exists()

    store = TensorStore(root)
    assert not list(root.rglob(".tmp-*"))
    assert not store.has("bb" * 20)
    torch.testing.assert_close(store.get("aa" * 20)["latents"], torch.ones(4, 4))
    assert len(store) == 1


@pytest.mark.slow
def test_torn_or_corrupt_entries_are_detected_and_reencoded(first, tmp_path):
    project = first.project.copy(tmp_path)
    record = first.records[1]
    latent_store = TensorStore(project.backends()[0].vae_cache_dir)
    text_store = TensorStore(tmp_path / "cache" / "text")
    latent_key = first.result.latent_keys[record.key]
    text_key = first.result.text_keys[CLIPS["c0"][3]]

    torn = latent_store.path(latent_key)
    torn.write_bytes(torn.read_bytes()[:-100])  # torn: header intact, the data stops short
    garbage = text_store.path(text_key)
    garbage.write_bytes(os.urandom(garbage.stat().st_size))  # corrupt: random bytes
    assert latent_store.has(latent_key) and text_store.has(text_key)  # both sit under trusted names

    result, _ = project.cache()
    assert (result.encoded_latents, result.encoded_captions) == (1, 1)  # exactly the two bad entries
    torch.testing.assert_close(result.latents(record.key, "clips"), first.result.latents(record.key, "clips"),
                               atol=0, rtol=0)
    torch.testing.assert_close(result.prompt(CLIPS["c0"][3])[0], first.result.prompt(CLIPS["c0"][3])[0],
                               atol=1e-6, rtol=0)  # encoded alone now, in a batch before

    # TensorStore.verified itself: a bad file is reported and removed, a good one kept
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    garbage.write_bytes(b"\xff" * 64)
    assert not latent_store.verified(latent_key) and not torn.exists()
    assert not text_store.verified(text_key) and not garbage.exists()
    other = first.result.latent_keys[first.records[0].key]
    assert latent_store.verified(other) and latent_store.path(other).exists()


# --- 2. `k5tune cache` -----------------------------------------------------------------------------


def write_guide_project(root: Path, model_dir: str, **config) -> None:
    """config/config.json + config/multidatabackend.json as in the guide, clips in datasets/videos."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "config.json").write_text(json.dumps(
        {"model_family": "kandinsky5-video", "pretrained_model_name_or_path": model_dir, "report_to": "none",
         "output_dir": "output/models", **config}))
    datasets = [
        {"id": "my-video-dataset", "type": "local", "dataset_type": "video", "instance_data_dir": "datasets/videos",
         "caption_strategy": "textfile", "resolution": HEIGHT, "repeats": 2,
         "video": {"num_frames": FRAMES, "min_frames": FRAMES, "frame_rate": FPS, "bucket_strategy": "aspect_ratio"}},
        {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True,
         "cache_dir": "cache/text/kandinsky5"},
    ]
    (root / "config" / "multidatabackend.json").write_text(json.dumps(datasets))
    (root / "datasets" / "videos").mkdir(parents=True)


def write_bad_clips(folder: Path) -> None:
    (folder / "x_empty.mp4").touch()  # an interrupted copy
    (folder / "x_empty.txt").write_text("empty")
    write_clip(folder / "x_short.mp4", frames=9, fps=FPS, width=WIDTH, height=HEIGHT)
    (folder / "x_short.txt").write_text("too short")


def test_cache_command_caches_only_and_prints_the_report(tmp_path, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    write_guide_project(tmp_path, tiny_model_dir)
    write_clips(tmp_path / "datasets" / "videos", names=["c0"])
    write_bad_clips(tmp_path / "datasets" / "videos")

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "Dataset: 3 file(s) found, 1 used, 2 skipped" in out
    assert re.search(r"empty_file\s+1\s", out) and re.search(r"too_short\s+1\s", out)  # skipped, by reason
    assert "x_empty.mp4" in out and "x_short.mp4" in out
    assert re.search(rf"{WIDTH}x{HEIGHT}@{FRAMES}\s+1\b", out)  # the bucket and its clip count
    assert "1 clip(s) and 2 caption(s) encoded" in out  # the caption and the empty caption
    assert re.search(r"\d+\.\d MiB on disk; \d+\.\d s", out)  # size on disk and time

    report = json.loads((tmp_path / "cache" / "dataset_report.json").read_text())
    assert (report["found"], report["used"]) == (3, 1)
    assert report["counts_by_reason"] == {"empty_file": 1, "too_short": 1}
    assert report["buckets"] == {f"{WIDTH}x{HEIGHT}@{FRAMES}": 1}
    # what caching did is recorded too; no GPU here, so no peak (and no "caching peak" line)
    assert report["caching"] == {"peak_gib": None, "text_peak_gib": None, "latent_peak_gib": None,
                                 "text_encoder_streamed": False, "encoded_latents": 1, "encoded_captions": 2,
                                 "seconds": report["caching"]["seconds"]}
    assert "caching peak" not in out
    assert str(tmp_path / "cache" / "dataset_report.json") in out
    assert len(list((tmp_path / "cache" / "vae" / "my-video-dataset").rglob("*.safetensors"))) == 1
    assert len(list((tmp_path / "cache" / "text" / "kandinsky5").rglob("*.safetensors"))) == 2
    # caching only: no training, nothing in output_dir
    assert not (tmp_path / "output").exists()
    assert not list(tmp_path.rglob("pytorch_lora_weights.safetensors"))

    assert main(["cache"]) == 0  # the second run reuses everything
    assert "0 clip(s) and 0 caption(s) encoded" in capsys.readouterr().out


def test_cache_command_with_only_bad_clips_exits_2_with_one_error_holding_the_report(
    tmp_path, monkeypatch, capsys, tiny_model_dir
):
    monkeypatch.chdir(tmp_path)
    write_guide_project(tmp_path, tiny_model_dir)
    write_bad_clips(tmp_path / "datasets" / "videos")

    assert main(["cache"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index("k5tune: error: no usable clip"):]  # after the scan's progress bar
    assert message.count("error") == 1
    assert "Dataset: 2 file(s) found, 0 used, 2 skipped" in message
    for text in ("empty_file", "too_short", "x_empty.mp4", "x_short.mp4", "min_frames"):
        assert text in message
    assert not list(tmp_path.rglob("*.safetensors"))


# --- 3. memory knobs -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("offload", [True, False])
def test_offload_during_startup_never_holds_text_encoders_and_vae_together(
    offload, first, tmp_path, monkeypatch
):
    project = first.project.copy(tmp_path, with_cache=False)
    for name in ("c1", "c2"):
        (project.clips / f"{name}.mp4").unlink()
    spy = ComponentSpy(monkeypatch)

    result, _ = project.cache(offload_during_startup=offload)

    assert (result.encoded_latents, result.encoded_captions) == (1, 2)
    labels = [label for label, _ in spy.events]
    together = [label for label, loaded in spy.events if "vae" in loaded and loaded & {"text_encoder", "text_encoder_2"}]
    if offload:
        assert together == []  # at no time a text encoder and the VAE at once
        assert labels.index("unload text_encoder,text_encoder_2") < labels.index("load vae")
        assert labels[-1] == "unload vae" and spy.events[-1][1] == set()
    else:
        assert together  # without the flag they do meet: the spy can see it
    assert {"load text_encoder", "load text_encoder_2", "load vae"} <= set(labels)


def loaded_components(monkeypatch, name: str) -> list:
    """Every `name` component (e.g. "vae") the caching loads, in order."""
    loaded, real = [], getattr(Kandinsky5Components, name)

    def spy(components, *args, **kwargs):
        loaded.append(real(components, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(Kandinsky5Components, name, spy)
    return loaded


@pytest.mark.slow
def test_offload_during_startup_streams_qwen_and_caches_the_same_embeddings(first, tmp_path, monkeypatch):
    project = first.project.copy(tmp_path, with_cache=False)
    text_encoders = loaded_components(monkeypatch, "text_encoder")
    result, _ = project.cache(offload_during_startup=True)

    assert result.text_encoder_streamed and not first.result.text_encoder_streamed
    assert result.encoded_captions == len(first.result.text_keys)
    layers = text_encoders[-1].model.language_model.layers
    assert all("group_offloading" in layer._diffusers_hook.hooks for layer in layers)  # went through the hooks
    for caption in first.result.text_keys:
        qwen, clip = result.prompt(caption)
        reference_qwen, reference_clip = first.result.prompt(caption)
        assert torch.equal(qwen, reference_qwen) and torch.equal(clip, reference_clip), caption


def test_caching_peak_line(tmp_path):
    from k5tune.cache.result import memory_line

    store = TensorStore(tmp_path / "text")
    result = CacheResult({}, {}, {}, store, encoded_latents=3, encoded_captions=4, text_peak_gib=1.6,
                         latent_peak_gib=10.42, text_encoder_streamed=True)
    assert result.peak_gib == 10.42
    assert memory_line(result) == ("caching peak 10.42 GiB of GPU memory (text embeddings 1.60 GiB, Qwen2.5-VL "
                                   "streamed from CPU memory; video latents 10.42 GiB)")
    assert memory_line(CacheResult({}, {}, {}, store)) is None  # no GPU, or nothing encoded


@pytest.mark.slow
def test_patch_conv_from_the_config_slices_the_vae_and_caches_the_same_latents(first, tmp_path, monkeypatch):
    project = first.project.copy(tmp_path, with_cache=False)
    for name in ("c1", "c2"):
        (project.clips / f"{name}.mp4").unlink()
    patched: list[int] = []
    real_enable = patch_conv_module.enable_patch_conv

    def enable_small(vae, max_elements=patch_conv_module.DEFAULT_MAX_ELEMENTS):
        # the default threshold would leave the tiny VAE's convolutions whole; force slicing
        patched.append(real_enable(vae, max_elements=2**15))
        return patched[-1]

    monkeypatch.setattr("k5tune.cache.latents.enable_patch_conv", enable_small)
    conv_calls: list[tuple[int, ...]] = []
    real_conv3d = torch.nn.functional.conv3d

    def counting_conv3d(x, *args, **kwargs):
        conv_calls.append(tuple(x.shape))
        return real_conv3d(x, *args, **kwargs)

    module_calls: list[tuple[int, ...]] = []
    real_vae = Kandinsky5Components.vae

    def vae_with_hooks(components, *args, **kwargs):
        vae = real_vae(components, *args, **kwargs)
        for module in vae.modules():
            if isinstance(module, torch.nn.Conv3d) and not module._forward_hooks:
                module.register_forward_hook(lambda m, inputs, output: module_calls.append(tuple(inputs[0].shape)))
        return vae

    monkeypatch.setattr(torch.nn.functional, "conv3d", counting_conv3d)
    monkeypatch.setattr(Kandinsky5Components, "vae", vae_with_hooks)

    result, records = project.cache(vae_enable_patch_conv=True)

    assert result.encoded_latents == 1 and patched and patched[0] > 10
    # every Conv3d ran, and ran as several smaller convolutions: more F.conv3d calls than Conv3d calls
    assert module_calls and len(conv_calls) > len(module_calls)
    assert max(shape[3] for shape in conv_calls) < max(shape[3] for shape in module_calls)
    record = records[0]
    torch.testing.assert_close(result.latents(record.key, "clips"), first.result.latents(record.key, "clips"),
                               atol=1e-5, rtol=1e-5)


def test_vae_tiling_option_runs(first, tmp_path, monkeypatch):
    project = first.project.copy(tmp_path, with_cache=False)
    for name in ("c1", "c2"):
        (project.clips / f"{name}.mp4").unlink()
    vaes = loaded_components(monkeypatch, "vae")
    result, records = project.cache(vae_enable_tiling=True)

    assert result.encoded_latents == 1 and vaes and vaes[0].use_tiling
    latents = result.latents(records[0].key, "clips")
    assert torch.isfinite(latents).all()
    # a clip smaller than one tile is encoded whole: the same latents
    torch.testing.assert_close(latents, first.result.latents(records[0].key, "clips"), atol=1e-5, rtol=1e-5)


# --- 4. the pipeline as reference ------------------------------------------------------------------


def reference_pipeline(model_dir: str):
    from diffusers import Kandinsky5T2VPipeline

    pipe = Kandinsky5T2VPipeline.from_pretrained(model_dir)
    record = json.loads((Path(model_dir) / "k5tune_prompt.json").read_text())
    pipe.prompt_template_encode_start_idx = record["prompt_template_encode_start_idx"]
    return pipe


def test_cached_and_encoded_prompts_equal_the_pipeline_encode_prompt(first, tiny_model_dir):
    from k5tune.models.kandinsky5.encoding import MAX_CAPTION_TOKENS, encode_prompts, text_pipeline

    pipe = reference_pipeline(tiny_model_dir)

    def reference(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        qwen, clip, cu_seqlens = pipe.encode_prompt(caption, max_sequence_length=MAX_CAPTION_TOKENS,
                                                    device="cpu", dtype=torch.float32)
        return qwen[0, : int(cu_seqlens[1])], clip[0]

    for caption in first.result.text_keys:  # what the cache holds
        qwen, clip = first.result.prompt(caption)
        ref_qwen, ref_clip = reference(caption)
        assert qwen.shape == ref_qwen.shape, caption
        torch.testing.assert_close(qwen, ref_qwen, atol=1e-6, rtol=0)
        torch.testing.assert_close(clip, ref_clip, atol=1e-6, rtol=0)

    # A batch of very different lengths, one past the 256-token limit (the pipeline truncates it).
    long_caption = "a long caption " + " ".join(f"word{i}" for i in range(300))
    captions = ["a", "two  words &amp; <b>markup</b>", long_caption, CLIPS["c1"][3], ""]
    components = first.project.components()
    ours = encode_prompts(text_pipeline(components, components.text_encoder(), components.text_encoder_2()),
                          captions, torch.device("cpu"), torch.float32)
    for caption, embedding in zip(captions, ours, strict=True):
        ref_qwen, ref_clip = reference(caption)
        assert embedding.qwen.shape == ref_qwen.shape, caption[:40]
        torch.testing.assert_close(embedding.qwen, ref_qwen, atol=1e-6, rtol=0)
        torch.testing.assert_close(embedding.clip, ref_clip, atol=1e-6, rtol=0)
    assert ours[2].qwen.shape[0] == MAX_CAPTION_TOKENS


def test_cached_latents_decode_with_the_pipeline_denormalisation(first, tiny_model_dir):
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_model_dir, subfolder="vae").eval()
    record = first.records[0]
    latents = first.result.latents(record.key, "clips").unsqueeze(0)  # (B, F', h, w, C) as the transformer sees it
    # Kandinsky5T2VPipeline.__call__, step 11 ("Decode latents to video"), with batch 1 and 1 video per prompt
    batch, frames, h, w, channels = latents.shape
    video = latents.reshape(batch, 1, frames, h, w, channels).permute(0, 1, 5, 2, 3, 4)
    video = video.reshape(batch, channels, frames, h, w)
    with torch.no_grad():
        pixels = vae.decode(video / vae.config.scaling_factor).sample

    bucket = record.bucket
    assert pixels.shape == (1, 3, bucket.frames, bucket.height, bucket.width)
    assert torch.isfinite(pixels).all()
    assert pixels.abs().max() < 20 and pixels.std() > 1e-3  # random weights: a sane range, not a picture
