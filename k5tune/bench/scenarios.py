"""Benchmark scenarios as data: a name, the theme its result belongs to, and the `k5tune bench` flags
that reproduce it; suites name the scenarios a card runs in one go. `k5tune bench --list` shows them,
`--scenario NAME` runs one (further flags are added after its own), `--suite NAME` runs a suite.

The scenarios of the 2026-11-27 runs (round 1, `runN-...`: each the command of a numbered session script)
are data in history_scenarios.json beside this module; benchmarks/results/HISTORY.md traces every
published number to its scenario."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    theme: str  # the results table the row belongs to
    description: str
    args: tuple[str, ...]


LITE = ("--modulation-bf16", "--steps", "4", "--warmup", "3")
LITE_10S = ("--flavour", "t2v-lite-sft-10s", "--frames", "241", "--modulation-bf16", "--steps", "2", "--warmup", "1")
PRO = ("--flavour", "t2v-pro-sft-5s-hd", "--modulation-bf16", "--steps", "2", "--warmup", "1")
# the Lite 10 s transformer at 512x768x61: the step `k5tune train` on that flavour is compared with
LITE_10S_61F = ("--flavour", "t2v-lite-sft-10s", "--modulation-bf16", "--steps", "6", "--warmup", "2")
# NABLA's build before session 9 (2026-12-07), the default then: eager blocks, autotuned FlexAttention tiles
EAGER_AUTOTUNED = ("--flex-tiling", "autotune", "--no-compile-blocks")

SCENARIOS: dict[str, Scenario] = {
    "lite-stock": Scenario("speed", "Lite 512x768x61: ours beside stock diffusers + peft", (*LITE, "--compare-stock")),
    "lite-plain": Scenario("speed", "Lite 512x768x61, the default plan alone (2026-12-07: the step before the redesign)",
                           LITE),
    "lite": Scenario("speed", "Lite 512x768x61, the default plan (with one no-grad forward timed)",
                     (*LITE, "--forward")),
    "lite-rollout-1": Scenario("rollout", "Lite 512x768x61, every sample rolled out 1 sampler step",
                               (*LITE, "--rollout", "1")),
    "lite-crepa-vitg14": Scenario("crepa", "Lite 512x768x61 with CREPA (block 8, vitg14 features)",
                                  (*LITE, "--crepa", "dinov2_vitg14", "--crepa-block", "8")),
    "lite-forward-crepa-vitg14": Scenario("crepa", "Lite 512x768x61: the step, one no-grad forward and the step with "
                                          "CREPA (block 8, vitg14) in one run (2026-12-07)",
                                          (*LITE, "--forward", "--crepa", "dinov2_vitg14", "--crepa-block", "8")),
    "lite-10s-dense": Scenario("nabla", "Lite 10 s 512x768x241, dense attention", (*LITE_10S, "--sparse-attention",
                                                                                   "dense")),
    "lite-10s-nabla": Scenario("nabla", "Lite 10 s, NABLA at 10 % density plus the STA window",
                               (*LITE_10S, "--nabla-density", "0.1", *EAGER_AUTOTUNED)),
    "lite-10s-nabla-heuristic": Scenario("nabla", "Lite 10 s, NABLA at 10 % + STA, FlexAttention tiled by torch's "
                                         "heuristic narrowed to 64 (no autotuning)",
                                         (*LITE_10S, "--nabla-density", "0.1", "--flex-tiling", "heuristic",
                                          "--no-compile-blocks")),
    "lite-10s-nabla-compiled-heuristic": Scenario("nabla", "Lite 10 s, NABLA at 10 % + STA, compiled blocks, heuristic "
                                                  "tiles", (*LITE_10S, "--nabla-density", "0.1", "--flex-tiling",
                                                            "heuristic", "--compile-blocks")),
    "lite-10s-dense-1": Scenario("nabla", "Lite 10 s dense, one timed step (a short device window's baseline)",
                                 (*LITE_10S[:-4], "--steps", "1", "--warmup", "1", "--sparse-attention", "dense")),
    "lite-10s-nabla-p09": Scenario("nabla", "Lite 10 s, NABLA as the checkpoint sets it (P 0.9; random weights "
                                   "give a near-uniform map, so a dense-like mask)", (*LITE_10S, *EAGER_AUTOTUNED)),
    "lite-10s-61f": Scenario("nabla", "the Lite 10 s transformer (NABLA P 0.9) at 512x768x61: the step "
                             "`k5tune train` on that flavour is compared with",
                             (*LITE_10S_61F, *EAGER_AUTOTUNED)),
    "lite-10s-61f-compiled": Scenario("nabla", "the Lite 10 s transformer (NABLA P 0.9) at 512x768x61, compiled "
                                      "blocks, heuristic tiles: the step `k5tune train` is compared with when they "
                                      "are its defaults",
                                      (*LITE_10S_61F, "--flex-tiling", "heuristic", "--compile-blocks")),
    "pro-dense": Scenario("nabla", "Pro 512x768x61, dense attention, activation offload (the baseline of pro-nabla)",
                          (*PRO, "--offload-activations", "--sparse-attention", "dense")),
    "pro-hd-dense": Scenario("nabla", "Pro 768x1280x61, dense attention, activation offload",
                             (*PRO, "--resolution", "768x1280", "--offload-activations", "--sparse-attention", "dense")),
    "pro-hd-dense-1": Scenario("nabla", "Pro 768x1280x61 dense, activation offload, one timed step (a short "
                               "device window's baseline)",
                               (*PRO[:-4], "--steps", "1", "--warmup", "1", "--resolution", "768x1280",
                                "--offload-activations", "--sparse-attention", "dense")),
    "pro-hd-nabla": Scenario("nabla", "Pro 768x1280x61, NABLA at 10 % density, activation offload",
                             (*PRO, "--resolution", "768x1280", "--offload-activations", "--nabla-density", "0.1",
                              *EAGER_AUTOTUNED)),
    "pro-nabla": Scenario("nabla", "Pro 512x768x61, NABLA at 10 % density, activation offload",
                          (*PRO, "--offload-activations", "--nabla-density", "0.1", *EAGER_AUTOTUNED)),
    "pro-hd-nabla-compiled-heuristic": Scenario("nabla", "Pro 768x1280x61, NABLA at 10 % density, activation "
                                                "offload, compiled blocks, heuristic tiles",
                                                (*PRO, "--resolution", "768x1280", "--offload-activations",
                                                 "--nabla-density", "0.1", "--flex-tiling", "heuristic",
                                                 "--compile-blocks")),
    "pro-nabla-compiled-heuristic": Scenario("nabla", "Pro 512x768x61, NABLA at 10 % density, activation offload, "
                                             "compiled blocks, heuristic tiles",
                                             (*PRO, "--offload-activations", "--nabla-density", "0.1", "--flex-tiling",
                                              "heuristic", "--compile-blocks")),
    "pro-group-offload": Scenario("memory", "Pro 512x768x61 with group offload (one block per group, stream)",
                                  (*PRO, "--group-offload", "1", "--offload-stream", "--sparse-attention", "dense")),
    "tiny-nabla-smoke": Scenario("smoke", "the tiny model under NABLA (compiled flex attention, forward and "
                                 "backward); needs `k5tune make-tiny-model --nabla /tmp/tinyn`",
                                 ("--model", "/tmp/tinyn", "--resolution", "256x384", "--frames", "17",
                                  "--steps", "3", "--warmup", "2", "--sparse-attention", "nabla", *EAGER_AUTOTUNED)),
}

HISTORY_FILE = Path(__file__).with_name("history_scenarios.json")


def _history() -> dict[str, Scenario]:
    """The round-1 scenarios of history_scenarios.json (none may take the name of one above)."""
    rows = json.loads(HISTORY_FILE.read_text(encoding="utf-8"))["scenarios"]
    if taken := set(rows) & set(SCENARIOS):
        raise ValueError(f"{HISTORY_FILE.name}: scenario names already taken: {', '.join(sorted(taken))}")
    return {name: Scenario(row["theme"], row["description"], tuple(row["args"])) for name, row in rows.items()}


SCENARIOS.update(_history())

SUITES: dict[str, tuple[str, ...]] = {
    "h100-features": ("lite", "lite-rollout-1", "lite-crepa-vitg14"),
    "h100-nabla-lite": ("lite-10s-nabla", "lite-10s-dense", "lite-10s-nabla-p09"),
    "h100-nabla-pro": ("pro-hd-nabla", "pro-hd-dense", "pro-nabla"),
}


def listing() -> str:
    width = max(map(len, SCENARIOS))
    lines = ["scenarios (k5tune bench --scenario NAME):"]
    lines += [f"  {name:<{width}}  [{s.theme}] {s.description}" for name, s in SCENARIOS.items()]
    lines.append("suites (k5tune bench --suite NAME; each on one device command of at most ~10 minutes):")
    lines += [f"  {name}: {', '.join(names)}" for name, names in SUITES.items()]
    return "\n".join(lines)
