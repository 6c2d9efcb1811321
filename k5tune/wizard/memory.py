"""The memory question: the GPU (detected, or asked), and a preset from the estimator's recommender
(k5tune/estimate/presets.py), which offers the plans for the flavour and card and names the one to take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k5tune.estimate.presets import (
    LITE_MIN_GIB,
    PRESET_KEYS,
    PRESET_SHAPE,
    PRO_FSDP_OFFLOAD_BELOW_GIB,
    PRO_OFFLOAD_MIN_GIB,
    MemoryPreset,
    PresetChoice,
    choose_preset,
    preset_need_gib,
    preset_peak_gib,
)
from k5tune.estimate.search import dataset_change
from k5tune.estimate.shape import TrainingShape, shape_and_plan_from_values
from k5tune.estimate.weights import GIB
from k5tune.hostmem import HostMemory
from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS
from k5tune.wizard.answers import Answers
from k5tune.wizard.terminal import BadAnswer, show

KEEP_PRESET = "keep"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_gib: float
    count: int = 1


def detect_gpu() -> GpuInfo | None:
    """The first CUDA GPU's name and memory, or None without one (or without a CUDA build)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        _free, total = torch.cuda.mem_get_info(0)
        return GpuInfo(torch.cuda.get_device_properties(0).name, total / GIB, torch.cuda.device_count())
    except Exception:  # a broken driver must not stop the wizard: it asks for the memory instead
        return None


class MemoryQuestions(Answers):
    """The GPU's memory (and count), a warning where the flavour cannot fit, and the preset."""

    detect_gpu: Callable[[], GpuInfo | None]
    detect_host: Callable[[], HostMemory | None]  # this machine's CPU memory: what offloading may pin

    def ask_memory(self) -> None:
        gpu = self.detect_gpu()
        if gpu:
            self.io.say(f"GPU: {gpu.name}, {gpu.total_gib:.1f} GiB" + (f" (x{gpu.count})" if gpu.count > 1 else ""))
            total = gpu.total_gib
            if gpu.count > 1:
                self._ask_processes(gpu.count)
        else:
            total = self.ask("GPU memory in GiB (no CUDA GPU found here)", 24, _positive_number,
                             hint="the memory of the card you will train on, e.g. 16, 24, 48 or 80")
        self._warn_small_or_pro(total)
        self._choose_preset(total)

    def _ask_processes(self, count: int) -> None:
        def at_most_count(value: Any) -> None:
            if value > count:
                raise BadAnswer(f"this machine has {count} GPUs")

        self._ask_config("num_processes", f"GPUs to train on, data-parallel (num_processes, 1-{count})",
                         default=self.config.get("num_processes", count), extra=at_most_count,
                         hint="each GPU holds the whole model and trains its share of every batch: faster, "
                         + ("or Pro sharded over them with FSDP2 (a memory preset below)"
                            if FLAVOURS[self.config["model_flavour"]].size == "pro" else "not less memory per GPU"))

    def _warn_small_or_pro(self, total: float) -> None:
        flavour = FLAVOURS[self.config["model_flavour"]]
        if flavour.size == "pro" and total < PRO_OFFLOAD_MIN_GIB:
            lite = "i2v-lite-5s" if flavour.is_i2v else DEFAULT_FLAVOUR
            self.io.say(f"  ! {flavour.name} is Pro (≈19B): even with group offload it needs ~11.4 GiB per GPU, "
                        f"more than a {total:.0f} GiB card has.")
            self.io.say(f"    Recommended: the Lite flavour {lite}.")
            if self.confirm(f"Switch to {lite}?", False):
                self.config["model_flavour"] = lite
                self.io.say(f"  model_flavour: {lite}")
        elif flavour.size != "pro" and total < LITE_MIN_GIB:
            self.io.say(f"  ! {total:.0f} GiB is below the ~4.1 GiB Lite needed at 512x768x61 with group offload "
                        "(plus the CUDA context): use a lower resolution (384) and fewer frames (33)")

    def _presets(self, total: float) -> tuple[list[MemoryPreset], str, dict[str, float]]:
        """The presets the recommender offers for the flavour and card at the answers' shape (resolution,
        frames, attention), the recommended one's name, and each preset's predicted peak at that shape
        where it is not the presets' measured one ({} otherwise)."""
        flavour, processes = self.config["model_flavour"], self.config.get("num_processes", 1)
        shape, user = shape_and_plan_from_values(self.config, self.datasets) or (None, None)
        host = self.detect_host()
        choice = choose_preset(flavour, total, processes, shape, user, host.pinnable_gib if host else None)
        recommended = choice.recommended
        predicted: dict[str, float] = {}
        if shape is not None and (not _measured_shape(shape, user)
                                  or recommended != choose_preset(flavour, total, processes).recommended):
            predicted = {p.name: peak for p in choice.presets
                         if (peak := preset_peak_gib(flavour, p, shape, user)) is not None}
        if FLAVOURS[flavour].size == "pro":
            self.io.say("  Pro (≈19B): " + {
                "pro-80gb": f"it fits a {total:.0f} GiB card whole (66.2 GiB, 7.7 s/step measured on an H100)",
                "pro-48gb": f"its weights fit a {total:.0f} GiB card; activation offload keeps the peak at "
                            "45.1 GiB (7.7 s/step measured on an H100)",
                "pro-fsdp2": f"FSDP2 shards it over the {processes} GPUs (fsdp_enable"
                             + (" + offload_activations: 38.7 GiB per GPU on 2 H100s)"
                                if total < PRO_FSDP_OFFLOAD_BELOW_GIB else ": 40.7 GiB per GPU on 2 H100s)"),
                "pro-group-offload": f"on a {total:.0f} GiB card group offload streams its blocks from CPU "
                                     "memory (11.4 GiB, 9.3 s/step measured on an H100)",
            }[recommended] + (" (at 512x768x61)" if predicted else ""))
        if predicted:
            attention = ", NABLA attention" if user.nabla is not None else ""
            self.io.say(f"  Training {shape.height}x{shape.width}, {shape.frames} frames{attention} (rank {shape.rank}, "
                        f"batch {shape.batch}): the presets' peaks there are predicted (k5tune estimate), shown with each")
        self._say_pinned_limit(choice, host)
        if shape is not None and choice.fits_shape is not shape:
            self._say_shape_advice(flavour, shape, user, total, choice)
        return choice.presets, recommended, predicted

    def _say_pinned_limit(self, choice: PresetChoice, host: HostMemory | None) -> None:
        """Which presets pin more CPU memory than this machine can spare (those are not recommended,
        unless no preset is left for the card: then the warning says the recommended one will not fit)."""
        if host is None or not choice.held_back:
            return
        self.io.say(f"  CPU memory: {host.total_gib:.0f} GiB, ~{host.pinnable_gib:.0f} GiB of it for offloading's "
                    "pinned memory; not recommended, they pin more: "
                    + ", ".join(f"{name} (~{pinned:.0f} GiB)" for name, pinned in choice.held_back.items()))
        if choice.recommended in choice.held_back:
            self.io.say(f"  ! nothing else fits the card, but {choice.recommended} needs "
                        f"~{choice.held_back[choice.recommended]:.0f} GiB of pinned CPU memory: with less the run is "
                        "killed in its first step (more CPU memory, fewer frames, a larger card, or several GPUs)")

    def _say_shape_advice(self, flavour: str, shape: TrainingShape, user, total: float, choice: PresetChoice) -> None:
        """No preset fits the answers' shape (on the card, or within the CPU memory it may pin): the
        shorter clip the recommendation fits."""
        if choice.cpu_bound:
            self.io.say("  ! no preset fits this shape within this machine's CPU memory (the ones the card holds "
                        "pin more than it can spare)")
        else:
            leanest = min((n, p.name) for p in choice.presets
                          if (n := preset_need_gib(flavour, p, shape, user)) is not None)
            self.io.say(f"  ! no preset fits this shape on {total:.1f} GiB (the leanest, {leanest[1]}, is predicted "
                        f"to need ~{leanest[0]:.0f} GiB)")
        fits = choice.fits_shape
        if fits is None:
            self.io.say("    use several GPUs, or a smaller clip: `k5tune estimate` shows what fits")
            return
        chosen = next(p for p in choice.presets if p.name == choice.recommended)
        peak = preset_peak_gib(flavour, chosen, fits, user) or 0.0
        self.io.say(f"    {choice.recommended} (recommended below) fits {fits.height}x{fits.width} with {fits.frames} "
                    f"frames (~{peak:.0f} GiB predicted): set {dataset_change(shape, fits)} in the dataset file")

    def _choose_preset(self, total: float) -> None:
        presets, recommended, predicted = self._presets(total)
        options = []
        has_current = self.existing.config_found and any(k in self.existing.config for k in PRESET_KEYS)
        if has_current:
            current = ", ".join(f"{k}={show(self.existing.config[k])}" for k in PRESET_KEYS if k in self.existing.config)
            options.append((KEEP_PRESET, f"keep the current settings ({current})"))
        for preset in presets:
            mark = " (recommended)" if preset.name == recommended else ""
            here = f" [at your shape: ~{predicted[preset.name]:.1f} GiB predicted]" if preset.name in predicted else ""
            options.append((preset.name, f"{preset.title}{mark}: {preset.note}{here}"))
        choice = self.choose("Memory preset", options, KEEP_PRESET if has_current else recommended)
        if choice == KEEP_PRESET:
            return
        settings = next(p for p in presets if p.name == choice).settings
        for key in PRESET_KEYS:
            if key in settings:
                self.config[key] = settings[key]
            else:
                self.config.pop(key, None)


def _measured_shape(shape: TrainingShape, user) -> bool:
    """Whether the presets' measured figures describe this training (512x768x61 or fewer tokens, one clip
    a step, LoRA rank 32 or less on attention + feed-forward at most, dense attention, no TREAD); past it
    their peaks are predicted instead."""
    return (shape.tokens <= PRESET_SHAPE.tokens and shape.batch == 1 and shape.rank <= PRESET_SHAPE.rank
            and set(shape.targets) <= set(PRESET_SHAPE.targets) and user.nabla is None and not user.tread)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadAnswer(f"'{text}' is not a number; give the card's memory in GiB, e.g. 24") from None
    if value <= 0:
        raise BadAnswer("the memory must be more than 0 GiB")
    return value
