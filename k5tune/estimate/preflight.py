"""What the estimate says about one run on this machine: asked by `k5tune train` once its buckets are
known (after caching, before the model loads), and again when a step runs out of GPU memory.

Before: whether the predicted training peak at the largest bucket fits the card, and whether the CPU
memory offloading pins fits the machine (k5tune/hostmem.py): warnings, since the run may still fit.
After an out-of-memory error: torch's first line, then what would fit, as config keys.
"""

from __future__ import annotations

from k5tune.estimate.search import config_advice, dataset_change, propose
from k5tune.estimate.shape import TrainingShape, estimate_problem, shape_of
from k5tune.estimate.training import pinned_cpu_gib, training_peak_gib
from k5tune.hostmem import HostMemory, pinned_memory_problem
from k5tune.train.plan import TrainingPlan


def largest_shape(cfg, buckets) -> tuple[TrainingShape, str] | None:
    """The training shape of the run's largest bucket (most pixels x frames) and the bucket's name."""
    if not buckets:
        return None
    largest = max(buckets, key=lambda b: b.width * b.height * b.frames)
    return shape_of(cfg, largest.height, largest.width, largest.frames), largest.name


def _largest_peak(cfg, plan: TrainingPlan, buckets) -> tuple[TrainingShape, str, float] | None:
    """The largest bucket's shape and name, and the estimate's training peak there (None: no buckets,
    or a plan the estimate does not model)."""
    largest = largest_shape(cfg, buckets)
    if largest is None or estimate_problem(plan) is not None:
        return None
    return (*largest, training_peak_gib(cfg.model_flavour, largest[0], plan))


def pinned_memory_warning(cfg, plan: TrainingPlan, buckets, memory: HostMemory | None,
                          processes: int = 1) -> str | None:
    """Group offload and activation offload pin CPU memory: the estimate's pinned memory at the largest
    bucket, per process (`processes` on this machine), against the machine's (None: it fits, or
    nothing pins)."""
    largest = largest_shape(cfg, buckets)
    if not (plan.offload_activations or plan.group_offload) or largest is None:
        return None
    return pinned_memory_problem(pinned_cpu_gib(cfg.model_flavour, largest[0], plan), memory, processes)


def gpu_memory_warning(cfg, plan: TrainingPlan, buckets, card_gib: float, processes: int = 1) -> str | None:
    """The estimate's training peak at the largest bucket against the card's memory (None: it fits, or
    the plan is one the estimate does not model)."""
    largest = _largest_peak(cfg, plan, buckets)
    if largest is None or largest[2] <= card_gib:
        return None
    shape, name, peak = largest
    return (f"the estimate puts training at ~{peak:.1f} GiB at the largest bucket ({name}), more than the card's "
            f"{card_gib:.1f} GiB: it will likely run out of memory. "
            + fitting_advice(cfg, plan, shape, card_gib, processes))


def fitting_advice(cfg, plan: TrainingPlan, shape: TrainingShape, card_gib: float, processes: int = 1) -> str:
    """What `k5tune estimate --gpu-memory` would propose for this shape and card, in a sentence."""
    proposal = propose(cfg.model_flavour, shape, card_gib, processes=processes, user=plan)
    if proposal is None:
        return "Nothing the estimate models fits this card: several GPUs (fsdp_enable) or a Lite flavour."
    advice = f"What fits ({proposal.settings.label()}, ~{proposal.peak_gib:.1f} GiB): {config_advice(proposal.settings, plan)}"
    if proposal.shape is not shape:
        advice += f"; in the dataset file {dataset_change(shape, proposal.shape)}"
    return advice + " (`k5tune estimate --gpu-memory` lists the options)."


def out_of_memory_message(cfg, plan: TrainingPlan, buckets, card_gib: float, error: BaseException,
                          processes: int = 1) -> str:
    """The error a run that ran out of GPU memory ends with: torch's own first line, the card, the
    estimate at the largest bucket and what fits; where the estimate expects the config to fit, what
    else takes memory."""
    torch_says = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    message = f"the run ran out of GPU memory (the card has {card_gib:.1f} GiB; torch: {torch_says})"
    resume = " The last checkpoint, if any, resumes with resume_from_checkpoint: latest."
    largest = _largest_peak(cfg, plan, buckets)
    if largest is None:
        return message + "; `k5tune estimate --gpu-memory` proposes settings that fit." + resume
    shape, name, peak = largest
    message += f"; the estimate puts this config at ~{peak:.1f} GiB at its largest bucket ({name})."
    if peak + 1.0 <= card_gib:  # (the estimate's room, as `propose` leaves it)
        return (message + " It expects training to fit, so something else took the memory: another process on "
                "the GPU (nvidia-smi lists them), validation videos (validation_resolution, "
                "validation_num_video_frames) or fragmentation (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True)."
                + resume)
    return f"{message} {fitting_advice(cfg, plan, shape, card_gib, processes)}{resume}"
