"""`k5tune estimate`: predict the peak GPU memory of caching and training, and propose settings.

The training model is built from counts, not guesses (weights.py: the real classes on the meta
device; training.py: LoRA state, block inputs, kept attention, the recompute working set), for a
k5tune/train/plan.py TrainingPlan, whose decisions (what compiles, what is offloaded and how, what is
recomputed) the estimate asks rather than re-deciding. caching.py models the two caching phases;
search.py is THE recommender (estimate, the wizard and the web UI ask it; presets.py names its plans for
the wizard and the web UI); preflight.py checks a run against its card and machine; report.py prints.

Three constants are fitted, each on ONE measurement (H100, benchmarks/results/2026-11-27-h100.md):
TRANSIENT_PER_TOKEN_DIM (the recompute working set; Lite, full checkpointing, run 3),
ACTIVATION_OFFLOAD_RESIDUE (what offload_activations leaves on the GPU with eager blocks; Lite, run 12)
and SAVED_OFFLOAD_RESIDUE (the same with compiled blocks, the default on a GPU; Lite, run 23). Every
other measured figure is a prediction: check.py lists them (reading the measurements shipped in
measurements.json) and `k5tune estimate --check` (and tests/test_estimate.py) compare.
"""

from k5tune.estimate.caching import (
    CachingEstimate,
    caching_advice,
    caching_estimate,
    caching_peak_gib,
    encoder_weight_gib,
    vae_encode_peak_gib,
)
from k5tune.estimate.report import estimate_report
from k5tune.estimate.search import Proposal, candidate_settings, config_advice, propose
from k5tune.estimate.shape import TrainingShape, estimate_problem, plan_from_config, shape_from_config
from k5tune.estimate.training import pinned_cpu_gib, training_peak_gib, training_terms
from k5tune.estimate.weights import GIB, WeightCount, lora_parameter_count, weight_count

__all__ = [
    "GIB", "CachingEstimate", "Proposal", "TrainingShape", "WeightCount", "caching_advice", "caching_estimate",
    "caching_peak_gib", "candidate_settings", "config_advice", "encoder_weight_gib", "estimate_problem",
    "estimate_report", "lora_parameter_count", "pinned_cpu_gib", "plan_from_config", "propose", "shape_from_config",
    "training_peak_gib", "training_terms", "vae_encode_peak_gib", "weight_count",
]
