"""`k5tune estimate --check`: the estimate against every GPU peak measured (benchmarks/results).

Each check names where its measured figure is (file, which JSON row, which value) and what the
estimate computes for it. The rows are read from measurements.json beside this module: the JSON rows
of those files of benchmarks/results, shipped with the package so that an installed k5tune checks too.

All measured on H100 80GB cards (the NABLA rows: one H200) with the full-size models (random weights),
512x768x61 clips (24,576 tokens), batch 1, LoRA rank 32 on attention + feed-forward unless the label
says otherwise. Three rows fitted a constant of k5tune/estimate/training.py ("fitted"): Lite full checkpointing
(TRANSIENT_PER_TOKEN_DIM), Lite activation offload alone with eager blocks (ACTIVATION_OFFLOAD_RESIDUE)
and Lite selective + activation offload with compiled blocks (SAVED_OFFLOAD_RESIDUE); the VAE rows
are its anchors ("anchor"); the text phase of caching is a worst-case bound ("bound": 8 of the longest
captions), checked to be above what was measured. Every other row is a prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from k5tune.estimate.caching import caching_estimate, vae_encode_peak_gib
from k5tune.estimate.shape import TrainingShape, plan_from_config, shape_from_config
from k5tune.estimate.training import GIB, NABLA_DIFFUSERS_FORM_EXTRA, nabla_block_pairs, training_peak_gib
from k5tune.train.plan import TrainingPlan

MEASUREMENTS = Path(__file__).with_name("measurements.json")
LITE, PRO = "t2v-lite-sft-5s", "t2v-pro-sft-5s-hd"
TOLERANCE = 0.15


@dataclass(frozen=True)
class Source:
    """A measured figure: `value` (a dotted path) in the one row of `file` that matches `where`."""

    file: str  # relative to benchmarks/results (the key in measurements.json)
    value: str
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    label: str
    source: Source
    predict: Callable[[], float]
    role: str = "prediction"  # prediction | fitted | anchor | bound


def _get(row: Any, path: str) -> Any:
    for part in path.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


@lru_cache(maxsize=1)
def _measurements(path: Path = MEASUREMENTS) -> dict[str, list[dict[str, Any]]]:
    return json.loads(path.read_text(encoding="utf-8"))["files"]


def measured_rows(file: str) -> list[dict[str, Any]]:
    """The JSON rows of one results file (benchmarks/results/FILE), as shipped in measurements.json."""
    return _measurements()[file]


def measured_gib(source: Source) -> float:
    picked = [row for row in measured_rows(source.file) if all(_get(row, k) == v for k, v in source.where.items())]
    if len(picked) != 1:
        raise LookupError(f"{source.file}: {len(picked)} rows match {source.where}, expected one")
    return float(_get(picked[0], source.value))


def _train(flavour: str, shape: TrainingShape | None = None, **settings: Any) -> Callable[[], float]:
    # every run so far kept diffusers' fp32 modulation (k5tune bench's default)
    settings = {"modulation_fp32": True, **settings}

    def predict() -> float:
        plan = dict(settings)
        if plan.get("nabla") is True:  # the checkpoints' NABLA settings (imported here: nabla.py needs torch)
            from k5tune.models.kandinsky5.nabla import NablaSettings

            plan["nabla"] = NablaSettings()
        return training_peak_gib(flavour, shape or TrainingShape(), TrainingPlan(**plan))

    return predict


def _diffusers_mask_form(flavour: str, shape: TrainingShape | None = None, **settings: Any) -> Callable[[], float]:
    """The prediction for a NABLA run of the build that held the mask in diffusers' form (before
    nabla.as_partial_blocks): one int32 index tensor more per block pair."""
    def predict() -> float:
        pairs = nabla_block_pairs(flavour, shape or TrainingShape(), TrainingPlan())  # (no sequence split)
        return _train(flavour, shape, **settings)() + pairs * NABLA_DIFFUSERS_FORM_EXTRA / GIB

    return predict


def _bench(run: str, **where: Any) -> Source:
    return Source(f"2026-11-27-{run}/bench.jsonl", "ours.peak_gib", where)


def shipped_example(**changes: Any):
    """The shipped example config and dataset file (Lite, rank 16, attention targets, 512, 61 frames)."""
    from k5tune.config.loading import EXAMPLES_DIR, LoadedConfig, build_datasets, build_train_config

    raw = json.loads((EXAMPLES_DIR / "config.json.example").read_text()) | changes
    datasets = json.loads((EXAMPLES_DIR / "multidatabackend.json.example").read_text())
    return LoadedConfig(build_train_config(raw, "config.json.example"),
                        build_datasets(datasets, "multidatabackend.json.example"))


def _whole_train(part: str) -> Callable[[], float]:
    """GPU run 15: `k5tune train` with the example config and vae_enable_patch_conv."""
    def predict() -> float:
        loaded = shipped_example(vae_enable_patch_conv=True, modulation_precision="fp32")  # (before auto existed)
        cfg, shape = loaded.train, shape_from_config(loaded)
        if part == "training":
            return training_peak_gib(cfg.model_flavour, shape, plan_from_config(cfg))
        cache = caching_estimate(shape, cfg.offload_during_startup, cfg.vae_enable_patch_conv, cfg.vae_enable_tiling)
        return {"caching": cache.peak_gib, "text": cache.text_gib}[part]
    return predict


_GROUP = {"group_offload_blocks": 1}
_TRAIN15 = "2026-11-27-h100-run15/summary.jsonl"
_VAE = "2026-11-27-h100-run11/vae.jsonl"

CHECKS: list[Check] = [
    Check("Lite, selective (default)", _bench("h100-run11", flavour=LITE, group_offload=None,
                                              **{"plan.checkpointing": "selective"}), _train(LITE)),
    Check("Lite, full checkpointing", _bench("h100-run3", **{"plan.checkpointing": "full"}),
          _train(LITE, checkpointing="full"), "fitted"),
    Check("Lite, selective, attention kept in 16 blocks", _bench("h100-run3", **{"plan.keep_attention_blocks": 16}),
          _train(LITE, keep_attention_blocks=16)),
    Check("Lite, selective, attention kept in 8 blocks", _bench("h100-run3", **{"plan.keep_attention_blocks": 8}),
          _train(LITE, keep_attention_blocks=8)),
    Check("Lite, TREAD (0.5, blocks 2..30)", Source("2026-11-27-h100-run5/lite_tread.json", "ours_tread.peak_gib"),
          _train(LITE, tread=((0.5, 2, 30),))),  # the route run 5 recorded (tread_routes)
    Check("Lite, group offload + stream, weights only", _bench("h100-run11", flavour=LITE,
                                                               **{"group_offload.stream": True}),
          _train(LITE, **_GROUP)),
    Check("Lite, group offload, no stream, weights only", _bench("h100-run11", flavour=LITE,
                                                                 **{"group_offload.stream": False}),
          _train(LITE, group_offload_stream=False, **_GROUP)),
    Check("Lite, group offload + stream + activation offload", _bench("h100-run12", flavour=LITE,
                                                                      **{"group_offload.stream": True}),
          _train(LITE, offload_activations=True, **_GROUP)),
    Check("Lite, activation offload alone", _bench("h100-run12", flavour=LITE, group_offload=None),
          _train(LITE, offload_activations=True, fused_kernels=False), "fitted"),
    Check("Lite, int8 base", _bench("h100-run15", flavour=LITE, **{"base_precision.precision": "int8"}),
          _train(LITE, base_precision="int8")),
    Check("Lite, fp8 base", _bench("h100-run15", flavour=LITE, **{"base_precision.precision": "fp8"}),
          _train(LITE, base_precision="fp8")),
    Check("Pro, selective, attention kept in 24 blocks", Source("2026-11-27-h100-run6/pro_compare.json",
                                                                "ours.peak_gib"),
          _train(PRO, keep_attention_blocks=24)),
    Check("Pro, group offload + stream, weights only", _bench("h100-run11", flavour=PRO), _train(PRO, **_GROUP)),
    Check("Pro, activation offload alone", _bench("h100-run12", flavour=PRO, group_offload=None),
          _train(PRO, offload_activations=True, fused_kernels=False)),
    Check("Pro, group offload + stream + activation offload", _bench("h100-run12", flavour=PRO,
                                                                     **{"group_offload.stream": True}),
          _train(PRO, offload_activations=True, **_GROUP)),
    Check("Pro, int8 base + activation offload", _bench("h100-run15", flavour=PRO),
          _train(PRO, base_precision="int8", offload_activations=True)),
    Check("Pro, FSDP2 over 2 GPUs, full checkpointing (rank 0)",
          Source("2026-11-27-2xh100-run14/summary.jsonl", "peak_gib_rank0"),
          _train(PRO, checkpointing="full", fsdp_processes=2)),
    Check("Pro, FSDP2 over 2 GPUs + activation offload (rank 0)",
          Source("2026-11-27-2xh100-run13/summary.jsonl", "peak_gib_rank0"),
          _train(PRO, checkpointing="full", fsdp_processes=2, offload_activations=True)),
    # third session: blocks compiled whole (Lite, run 17-18), modulation in bf16 (Pro, run 19), leaf_level
    # (modelled as block_level: one layer resident instead of a block), `k5tune train` (runs 20-21)
    Check("Lite, selective, blocks compiled", _bench("h100-run17"), _train(LITE)),
    Check("Lite, TREAD (0.5, blocks 2..30), blocks compiled", Source("2026-11-27-h100-run17/bench.jsonl",
                                                                     "ours_tread.peak_gib"),
          _train(LITE, tread=((0.5, 2, 30),))),
    Check("Lite, full checkpointing, blocks compiled", _bench("h100-run18", **{"plan.checkpointing": "full"}),
          _train(LITE, checkpointing="full")),
    Check("Lite, leaf_level group offload + stream + activation offload",
          _bench("h100-run16", **{"group_offload.type": "leaf_level"}),
          _train(LITE, offload_activations=True, **_GROUP)),
    Check("Pro, activation offload alone, bf16 modulation", _bench("h100-run19", **{"plan.checkpointing": "full"}),
          _train(PRO, offload_activations=True, modulation_fp32=False, fused_kernels=False)),
    Check("Pro, selective (all attention kept, compiled), bf16 modulation",
          _bench("h100-run19", group_offload=None, **{"plan.checkpointing": "selective"}),
          _train(PRO, modulation_fp32=False)),
    Check("Pro, leaf_level group offload + stream + activation offload",
          _bench("h100-run19", **{"group_offload.type": "leaf_level"}),
          _train(PRO, offload_activations=True, **_GROUP)),
    Check("k5tune train, rank 32 attention + feed-forward, bf16 modulation",
          Source("2026-11-27-h100-run21/train_summary.json", "peak_gib"), _train(LITE, modulation_fp32=False)),
    Check("k5tune train, the same with TREAD (0.5, blocks 2..30)",
          Source("2026-11-27-h100-run20/train_summary.json", "peak_gib"),
          _train(LITE, modulation_fp32=False, tread=((0.5, 2, 30),))),
    # fourth session: activation offload of compiled blocks, the checkpointing policy kept (runs 23-25)
    Check("Lite, selective + activation offload, blocks compiled",
          _bench("h100-run23", offload_activations=True, modulation_bf16_saved_gib=None,
                 **{"plan.checkpointing": "selective"}),
          _train(LITE, offload_activations=True), "fitted"),
    Check("Lite, selective + activation offload, blocks compiled, bf16 modulation",
          _bench("h100-run23", offload_activations=True, **{"plan.checkpointing": "selective",
                                                           "modulation_bf16_saved_gib": 0.5171213150024414}),
          _train(LITE, offload_activations=True, modulation_fp32=False)),
    Check("Lite, full checkpointing + activation offload, blocks compiled",
          _bench("h100-run23", offload_activations=True, **{"plan.checkpointing": "full"}),
          _train(LITE, checkpointing="full", offload_activations=True)),
    Check("Pro, selective + activation offload, blocks compiled, bf16 modulation",
          _bench("h100-run24", **{"plan.checkpointing": "selective"}),
          _train(PRO, offload_activations=True, modulation_fp32=False)),
    Check("Pro, full checkpointing + activation offload, blocks compiled, bf16 modulation",
          _bench("h100-run24", **{"plan.checkpointing": "full"}),
          _train(PRO, checkpointing="full", offload_activations=True, modulation_fp32=False)),
    Check("k5tune train, offload_activations (selective, compiled), bf16 modulation",
          Source("2026-11-27-h100-run25/train_summary.json", "peak_gib"),
          _train(LITE, offload_activations=True, modulation_fp32=False)),
    Check("k5tune train, example config: training (rank 16, attention)", Source(_TRAIN15, "training_peak_gib"),
          _whole_train("training")),
    Check("k5tune train, example config: caching", Source(_TRAIN15, "caching_peak_gib"), _whole_train("caching")),
    Check("k5tune train, example config: caching, text phase", Source(_TRAIN15, "caching_text_peak_gib"),
          _whole_train("text"), "bound"),
    # 2026-12-07: the 10 s shape (93,696 tokens), dense attention
    Check("Lite 10 s 512x768x241, selective, blocks compiled, bf16 modulation",
          Source("2026-12-07-h100/call2-bench.jsonl", "ours.peak_gib"),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False)),
    # 2026-12-07 (session 4), one H200: NABLA with blocks eager (FlexAttention compiled alone), bf16 modulation,
    # the mask in diffusers' form (one index tensor more than k5tune holds now)
    Check("Lite 10 s 512x768x241, NABLA at 10 % density + STA (H200)",
          Source("2026-12-07-h200/call2-bench.jsonl", "ours.peak_gib"),
          _diffusers_mask_form("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False, nabla=True,
                               compile_blocks=False), "fitted"),
    Check("Lite 10 s transformer 512x768x61, NABLA P 0.9 (H200)",
          Source("2026-12-07-h200/call1-bench.jsonl", "ours.peak_gib", {"frames": 61}),
          _diffusers_mask_form("t2v-lite-sft-10s", modulation_fp32=False, nabla=True, compile_blocks=False)),
    Check("k5tune train, Lite 10 s transformer 512x768x61, NABLA P 0.9 (H200)",
          Source("2026-12-07-h200/call4-train-summary.json", "peak_gib"),
          _diffusers_mask_form("t2v-lite-sft-10s", modulation_fp32=False, nabla=True, compile_blocks=False)),
    # 2026-12-07 (session 7), one H100: today's build, the mask held as partial blocks (heuristic tiles: the
    # tiling changes no memory); eager blocks, then compiled blocks
    Check("Lite 10 s 512x768x241, NABLA at 10 % density + STA, eager blocks",
          Source("2026-12-07-s7-h100/call1-bench.jsonl", "ours.peak_gib", {"plan.compile_blocks": None}),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False, nabla=True,
                 compile_blocks=False)),
    Check("Lite 10 s 512x768x241, NABLA at 10 % density + STA, compiled blocks",
          Source("2026-12-07-s7-h100/call1-bench.jsonl", "ours.peak_gib", {"plan.compile_blocks": True}),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False, nabla=True,
                 compile_blocks=True)),
    Check("Lite 10 s 512x768x241, dense, one timed step",
          Source("2026-12-07-s7-h100/call2-bench.jsonl", "ours.peak_gib"),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False)),
    # 2026-12-07 (session 8), one H100: Pro HD under activation offload, NABLA with eager blocks (the
    # offloader's checkpoint; each layer's mask kept from forward to backward) and dense (compiled blocks)
    Check("Pro HD 768x1280x61, NABLA at 10 % density + STA, activation offload",
          Source("2026-12-07-s8-h100/call2-bench.jsonl", "ours.peak_gib", {"flavour": "t2v-pro-sft-5s-hd"}),
          _train("t2v-pro-sft-5s-hd", TrainingShape(768, 1280), modulation_fp32=False, nabla=True,
                 offload_activations=True, compile_blocks=False)),
    Check("Pro HD 768x1280x61, dense, activation offload",
          Source("2026-12-07-s8-h100/call3-bench.jsonl", "ours.peak_gib"),
          _train("t2v-pro-sft-5s-hd", TrainingShape(768, 1280), modulation_fp32=False, offload_activations=True)),
    # 2026-12-08 (session 9), one H100: NABLA's blocks compiled (the default since), heuristic tiles
    Check("Lite 10 s 512x768x241, NABLA at 10 % density + STA, compiled blocks (the default)",
          Source("2026-12-08-s9-h100/bench.jsonl", "ours.peak_gib", {"plan.compile_blocks": True}),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False, nabla=True)),
    Check("Lite 10 s 512x768x241, dense, one timed step (session 9)",
          Source("2026-12-08-s9-h100/bench.jsonl", "ours.peak_gib", {"attention.attention": "dense"}),
          _train("t2v-lite-sft-10s", TrainingShape(frames=241), modulation_fp32=False)),
    Check("VAE encode, plain", Source(_VAE, "peak_gib", {"variant": "plain"}),
          lambda: vae_encode_peak_gib(TrainingShape(), "plain"), "anchor"),
    Check("VAE encode, patch conv", Source(_VAE, "peak_gib", {"variant": "patch_conv"}),
          lambda: vae_encode_peak_gib(TrainingShape(), "patch_conv"), "anchor"),
    Check("VAE encode, tiling", Source(_VAE, "peak_gib", {"variant": "tiling"}),
          lambda: vae_encode_peak_gib(TrainingShape(), "tiling"), "anchor"),
]


@dataclass(frozen=True)
class CheckRow:
    check: Check
    predicted: float
    measured: float

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        if self.check.role == "bound":
            return self.predicted >= self.measured
        return abs(self.error) <= TOLERANCE


def check_rows() -> list[CheckRow]:
    return [CheckRow(c, c.predict(), measured_gib(c.source)) for c in CHECKS]


def check_report() -> str:
    """A Markdown table: predicted, measured, error, and where the measured figure is."""
    rows = check_rows()
    lines = ["| measurement | predicted GiB | measured GiB | error | source |", "|---|---|---|---|---|"]
    for row in rows:
        role = "" if row.check.role == "prediction" else f" ({row.check.role})"
        flag = "" if row.ok else " **outside**"
        lines.append(f"| {row.check.label}{role} | {row.predicted:.2f} | {row.measured:.2f} | "
                     f"{row.error * 100:+.1f} %{flag} | {row.check.source.file} |")
    figures = [row for row in rows if row.check.role != "bound"]
    worst = max(abs(row.error) for row in figures)
    lines += ["", f"{sum(row.ok for row in figures)} of {len(figures)} figures within {TOLERANCE:.0%} (largest error "
              f"{worst:.1%}); {sum(row.ok for row in rows if row.check.role == 'bound')} of "
              f"{len(rows) - len(figures)} bounds at or above the measured figure"]
    return "\n".join(lines)
