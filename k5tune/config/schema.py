"""Schema of `config/config.json`: every training setting, declared once.

Each field's description is its documentation: through k5tune.config.fields it feeds `k5tune train
--help`, the web form, the wizard and docs/config-reference.md; SECTIONS groups the fields. Unknown keys
are errors (see loading.py for the "did you mean" message).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from k5tune.config.crepa import encoder_problem, image_size_problem
from k5tune.config.frames import MIN_I2V_FRAMES, frame_count_problem, parse_resolution, snap_resolution
from k5tune.config.tread import TreadConfig, TreadRoute  # noqa: F401 (re-exported)
from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOUR_NAMES


def _f(default, description: str, **kwargs):
    return Field(default, description=description, **kwargs)


def _aliased(default, name: str, alias: str, description: str, **kwargs):
    """A field config.json also accepts as `alias`; the description ends by naming it."""
    aliases = AliasChoices(name, alias)
    return _f(default, f"{description} (alias: {alias}).", validation_alias=aliases, **kwargs)


class TrainConfig(BaseModel):
    """All of config.json. Defaults follow the quick-start guide."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    # --- model -------------------------------------------------------------------------------
    model_family: Literal["kandinsky5-video"] = _f("kandinsky5-video", "Model family; only kandinsky5-video.")
    model_flavour: str = _f(DEFAULT_FLAVOUR, "Which Kandinsky 5.0 Video checkpoint: " + ", ".join(FLAVOUR_NAMES))
    pretrained_model_name_or_path: str | None = _f(
        None, "Hub id or local folder (diffusers layout) overriding the flavour's repository."
    )
    model_type: Literal["lora"] = _f("lora", "What is trained; k5tune trains LoRA adapters.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of the model.")

    # --- data ----------------------------------------------------------------------------------
    data_backend_config: str = _f("config/multidatabackend.json", "The dataset file (list of backends).")
    frame_rate: float = _aliased(
        24.0, "frame_rate", "framerate", "Frames per second for training clips and validation videos", gt=0
    )
    caption_dropout_probability: float = _f(
        0.0, "Chance of training a sample with an empty caption (helps guidance).", ge=0.0, le=1.0
    )
    caption_max_tokens: int = _f(
        512, "Qwen tokens of a caption kept after the prompt template; longer captions are cut there and listed "
        "in the dataset report. 512 is the diffusers pipelines' max_sequence_length, so training sees what "
        "inference sees.", ge=1, le=1024,
    )

    # --- output --------------------------------------------------------------------------------
    output_dir: str = _f("output/models", "Where checkpoints, the LoRA, logs and validation videos go.")
    lora_format: Literal["diffusers", "comfyui"] = _f(
        "diffusers",
        "Key layout of the final LoRA file: diffusers (loads with load_lora_weights) or comfyui (ComfyUI's "
        "native Kandinsky 5 names, diffusion_model. prefix, alpha tensors). Checkpoints always use diffusers.",
    )
    trigger_word: str | None = _f(None, "A trigger word recorded in the LoRA file's metadata.")
    push_to_hub: bool = _f(False, "Upload the final LoRA to the Hugging Face Hub.")
    hub_model_id: str | None = _f(None, "Repository for push_to_hub.")

    # --- LoRA ------------------------------------------------------------------------------------
    lora_rank: int = _f(16, "LoRA rank (up to 1024).", gt=0, le=1024)
    lora_alpha: float | None = _f(None, "LoRA alpha (scale = alpha / rank). Default: equal to lora_rank.")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA branch.", ge=0.0, lt=1.0)
    lora_target_modules: list[str] = _f(
        ["to_query", "to_key", "to_value", "out_layer"],
        "Attention projections to adapt. 'out_layer' means the attentions' output projections only. "
        "Add 'feed_forward' to include the feed-forward layers.",
    )

    # --- optimisation ---------------------------------------------------------------------------
    train_batch_size: int = _f(1, "Clips per step per GPU. Keep 1 unless you have an A100/H100.", gt=0)
    gradient_accumulation_steps: int = _f(1, "Steps whose gradients are summed before an update.", gt=0)
    learning_rate: float = _f(1e-4, "Peak learning rate.", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = _f(
        "constant_with_warmup", "Learning-rate schedule."
    )
    lr_warmup_steps: int = _f(0, "Warm-up steps of the schedule.", ge=0)
    optimizer: Literal["adamw", "adamw_8bit"] = _f("adamw", "AdamW, or bitsandbytes' 8-bit AdamW where it works.")
    adam_beta1: float = _f(0.9, "AdamW beta1.", ge=0, lt=1)
    adam_beta2: float = _f(0.999, "AdamW beta2.", ge=0, lt=1)
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay.", ge=0)
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.", gt=0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).", ge=0)
    max_train_steps: int | None = _f(
        None, "Optimizer steps to train. Wins over num_train_epochs when both are set.", gt=0, le=10_000_000
    )
    num_train_epochs: int | None = _f(None, "Epochs to train when max_train_steps is not set.", gt=0, le=100_000)
    seed: int = _f(42, "Seed for everything random: the same seed gives the same LoRA.")
    mixed_precision: Literal["bf16", "fp16", "no"] = _f(
        "bf16", "Compute dtype on GPU (CPU always trains in fp32): bf16, or no (fp32). fp16 is refused: it needs "
        "loss scaling, which k5tune does not do, and Kandinsky 5 is released in bf16."
    )
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward to save memory.")
    gradient_checkpointing_policy: Literal["selective", "full"] = _f(
        "selective",
        "selective: keep attention outputs (2/3 of the FLOPs) and recompute the rest; full: recompute "
        "everything (least memory, slowest).",
    )
    fused_kernels: bool = _f(
        True, "k5tune's fused norm/modulation/RoPE blocks (same maths as diffusers'); false = stock blocks."
    )
    base_model_precision: Literal["no_change", "int8", "fp8"] = _f(
        "no_change",
        "Weight-only quantisation of the frozen transformer blocks' linears (torchao: pip install "
        "'k5tune[quant]'); LoRA trains over it in fp32. Weights: Lite 4.3 -> 1.9 GiB, Pro 40.4 -> 18.1 GiB. "
        "fp8 needs a GPU of compute capability 8.9+ (int8 is closer to bf16).",
    )
    modulation_precision: Literal["auto", "fp32"] = _f(
        "auto",
        "How the modulation layers are stored (diffusers keeps them in fp32: Pro 8.8 GiB, Lite 1 GiB). auto: in "
        "the compute dtype (bf16 on a GPU), since autocast rounds them to it for every product anyway: the "
        "training step is bit-identical and Pro needs 4.4 GiB less. fp32: as diffusers (validation previews "
        "then use the exact fp32 weights).",
    )
    max_nonfinite_steps: int = _f(
        5, "Stop after this many NaN/inf losses in a row (each one skips its update).", gt=0
    )

    # --- attention ---------------------------------------------------------------------------------
    attention_backend: Literal["auto", "sdpa", "cudnn", "flash"] = _f(
        "auto", "Attention kernel of dense attention; auto picks the fastest correct one for the GPU."
    )
    sparse_attention: Literal["auto", "nabla", "dense"] = _f(
        "auto",
        "auto: train with the attention the checkpoint runs (NABLA sparse attention for the 10 s and Pro HD "
        "flavours, as their pipelines do at inference; dense for the others); nabla: opt a regular checkpoint "
        "in (the 10 s checkpoints' settings); dense: full attention. Under NABLA, sizes are multiples of "
        "128 px. `train --dry-run` prints the choice and where it came from.",
    )
    nabla_threshold: float | None = _f(
        None, "NABLA's P: each query block keeps the key blocks holding this share of its pooled attention. "
        "Default: the checkpoint's (0.9).", gt=0, le=1,
    )
    nabla_window: str | None = _f(
        None, "NABLA's sliding window (STA) as FRAMESxHEIGHTxWIDTH in latent frames x 8x8 patches, e.g. 11x3x3. "
        "Default: the checkpoint's.",
    )
    nabla_add_sta: bool | None = _f(None, "Add the sliding window to NABLA's mask. Default: the checkpoint's (true).")

    # --- flow matching --------------------------------------------------------------------------
    flow_schedule_shift: float | None = _f(
        None, "Shift of the sigma distribution. Default: the `shift` in the model's scheduler config.", gt=0
    )
    flow_sigma_sampling: Literal["uniform", "logit_normal", "mode"] = _f(
        "uniform",
        "How training noise levels are drawn, before the shift. uniform (default): the levels the sampler "
        "itself visits (Kandinsky 5's training recipe is not published; logit_normal + shift 5 draws 0.7 % "
        "below sigma 0.3, where the sampler spends 8 % of its steps, uniform 7.9 %); logit_normal: "
        "sigmoid(N(flow_logit_mean, flow_logit_std)), SD3's choice; mode: SD3's mode sampling "
        "(flow_mode_scale). `train --dry-run` prints the resulting quantiles.",
    )
    flow_logit_mean: float = _f(0.0, "Mean of the logit-normal sigma distribution.")
    flow_logit_std: float = _f(1.0, "Std of the logit-normal sigma distribution.", gt=0)
    flow_mode_scale: float = _f(1.29, "Scale of SD3's mode sampling (flow_sigma_sampling mode).", ge=-1, le=1.5)

    # --- checkpoints ----------------------------------------------------------------------------
    checkpointing_steps: int = _aliased(
        500, "checkpointing_steps", "checkpoint_step_interval", "Save a checkpoint every N steps", gt=0
    )
    checkpoints_total_limit: int | None = _f(3, "Keep at most this many checkpoints (oldest removed).", gt=0)
    resume_from_checkpoint: str | None = _f(None, "'latest' or a checkpoint folder to resume from.")

    # --- logging -----------------------------------------------------------------------------------
    report_to: Literal["tensorboard", "wandb", "none"] = _f("tensorboard", "Where metrics are logged.")
    tracker_project_name: str = _f("k5tune", "Project name for the tracker.")
    tracker_run_name: str | None = _f(None, "Run name for the tracker. Default: a timestamp.")
    logging_dir: str = _f("logs", "Tracker files, under output_dir.")

    # --- validation ------------------------------------------------------------------------------
    validation_prompt: str | None = _f(None, "Prompt for validation videos (none: no validation).")
    validation_prompt_library: str | None = _f(None, "A text file of prompts, one per line, also validated.")
    validation_negative_prompt: str | None = _f(
        None, "Negative prompt. Default: the diffusers pipeline's own negative prompt."
    )
    validation_steps: int = _aliased(
        100, "validation_steps", "validation_step_interval", "Validate every N steps and at the end", gt=0
    )
    validation_resolution: str = _f(
        "512x768", "HEIGHTxWIDTH of validation videos (512x768, 720x1280 = 720p); or tagged, e.g. w768xh512."
    )
    validation_num_video_frames: int = _f(61, "Frames of validation videos; must be 4k+1 (49, 61, ...).")
    validation_guidance: float = _f(5.0, "Classifier-free guidance scale; 2-6 works, 5.0 recommended.", ge=0)
    validation_num_inference_steps: int = _f(30, "Denoising steps of validation videos.", gt=0)
    validation_seed: int = _f(42, "Seed of validation noise.")
    validation_image: str | list[str] | None = _f(
        None, "I2V: conditioning image, or one per prompt. Default: first frame of a T2V generation."
    )
    disable_validation: bool = _f(False, "Never run validation.")

    # --- evaluation ------------------------------------------------------------------------------
    eval_steps: int = _f(
        100, "Compute the eval loss every N steps and at the end, when there is an eval set (a dataset with "
        "eval: true, or eval_holdout_fraction).", gt=0)
    eval_holdout_fraction: float = _f(
        0.0, "Share of the training clips held out for the eval loss, chosen by a seeded split (seed): never "
        "trained on.", ge=0, lt=1)
    eval_noise_levels: int = _f(
        8, "The eval loss is measured at this many fixed noise levels, evenly spread over (0, 1), with fixed "
        "noise per clip and level (eval_seed): the same every time, whatever training drew.", gt=0, le=64)
    eval_seed: int = _f(0, "Seed of the eval noise (independent of training's seed).")

    # --- memory ----------------------------------------------------------------------------------
    offload_during_startup: bool = _f(
        False, "Caching: keep Qwen2.5-VL in CPU memory and stream its layers to the GPU, and free the text "
        "encoders before the VAE loads."
    )
    vae_enable_patch_conv: bool = _f(False, "Slice the VAE's 3D convolutions: lower peak memory, a bit slower.")
    vae_enable_tiling: bool = _f(False, "Encode/decode the VAE in overlapping tiles (blended, not exact).")
    enable_group_offload: bool = _f(False, "Stream transformer blocks between CPU and GPU (needed for Pro on one GPU).")
    group_offload_type: Literal["block_level", "leaf_level"] = _f(
        "block_level", "Granularity of group offload: groups of blocks, or each layer on its own (least memory, "
                       "more transfers).")
    group_offload_blocks_per_group: int = _f(1, "Blocks moved together with block_level offload.", gt=0)
    group_offload_use_stream: bool = _f(False, "Prefetch the next group on a side CUDA stream from pinned memory.")
    offload_activations: bool | None = _f(
        None, "Keep what each checkpointed block saves for backward in pinned CPU memory, fetched back one block "
              "ahead; the copies hide behind the compute. With compiled blocks (the default on a GPU) the "
              "checkpointing policy stays and the kept attention outputs move too (Lite 512x768x61 selective: "
              "about -5 GiB at the same speed); with group offload, FSDP2 or an int8/fp8 base the blocks keep "
              "only their input and are recomputed whole. Default: on with enable_group_offload, off otherwise.")

    # --- distributed -----------------------------------------------------------------------------
    num_processes: int = _f(1, "GPUs to launch on (k5tune starts the processes).", gt=0)
    fsdp_enable: bool = _f(False, "Shard the transformer with FSDP2 (for Pro on several GPUs).")
    fsdp_reshard_after_forward: bool = _f(True, "FSDP2: free gathered weights after each block's forward.")
    sequence_parallel_size: int = _f(1, "Split each clip's video tokens over this many processes, for clips too long "
                                     "for one GPU; it must divide num_processes and the heads (Lite 28, Pro 32).", ge=1)

    # --- TREAD -----------------------------------------------------------------------------------
    tread_config: TreadConfig | None = _f(None, "Token routing: {'routes': [{selection_ratio, start_layer_idx, end_layer_idx}]}.")

    # --- CREPA -----------------------------------------------------------------------------------
    crepa_enabled: bool = _f(False, "CREPA temporal regulariser (less flicker, steadier subjects): a block's hidden "
                             "states are aligned with DINOv2 features of its frames, cached once (see README).")
    crepa_block_index: int = _f(8, "Visual block whose hidden states are aligned (0-based; Lite has 32, Pro 60).", ge=0)
    crepa_lambda: float = _f(0.5, "Weight of the CREPA term added to the flow-matching loss.", ge=0)
    crepa_adjacent_distance: int = _f(1, "How many neighbouring frames on each side each frame is aligned with.", ge=0)
    crepa_adjacent_tau: float = _f(1.0, "Temporal decay: a neighbour d frames away weighs exp(-d/tau).", gt=0)
    crepa_encoder: str = _f("dinov2_vitg14", "Vision encoder: dinov2_vitg14 (facebook/dinov2-giant), dinov2_vits14 "
                            "(facebook/dinov2-small), another DINOv2 hub id, or a local folder holding one.")
    crepa_encoder_image_size: int = _f(518, "Frames are resized to this square size for the encoder: a multiple of "
                                       "its patch size 14 (518 for vitg14, 224 for vits14).", gt=0)
    crepa_feature_pooling: int = _f(1, "Teacher features are stored averaged over NxN-token squares (and the head's "
                                    "output too, in the loss): 2 stores 4x less and aligns 2x2-token regions.", ge=1, le=8)
    crepa_drop_vae_encoder: bool = _f(False, "Once every clip's latents are cached, free the VAE encoder; validation "
                                      "loads the VAE without it (T2V only: I2V validation encodes its image).")

    # --- scheduled sampling (rollout) --------------------------------------------------------------
    scheduled_sampling_max_step_offset: int = _f(
        0, "Rollout: at most this many steps of the validation sampler (validation_num_inference_steps, the "
        "model's shift) the current model denoises a sample itself, from a noisier level, before it is "
        "trained on (0 = off). Each costs one forward without gradients.", ge=0, le=1000,
    )
    scheduled_sampling_probability: float = _f(
        1.0, "Chance that a sample is rolled out (when no ramp is set).", ge=0, le=1)
    scheduled_sampling_prob_start: float = _f(0.0, "Ramp: the chance at scheduled_sampling_start_step.", ge=0, le=1)
    scheduled_sampling_prob_end: float | None = _f(
        None, "Ramp: the chance after scheduled_sampling_ramp_steps. Default: scheduled_sampling_probability.",
        ge=0, le=1)
    scheduled_sampling_ramp_steps: int = _f(
        0, "Steps over which the chance goes from prob_start to prob_end (0: no ramp, the probability throughout).",
        ge=0)
    scheduled_sampling_start_step: int = _f(0, "No rollout before this optimizer step.", ge=0)
    scheduled_sampling_ramp_shape: Literal["linear", "cosine"] = _f("linear", "How the chance ramps.")
    scheduled_sampling_strategy: Literal["uniform", "max"] = _f(
        "uniform", "How many steps a rolled-out sample takes: uniform from 1 to the max offset, or always the max.")
    scheduled_sampling_sampler: Literal["euler"] = _f(
        "euler", "Sampler of the rollout steps (the validation pipelines' FlowMatchEulerDiscreteScheduler).")

    # --- validators ---------------------------------------------------------------------------------
    @field_validator("model_flavour")
    @classmethod
    def _known_flavour(cls, value: str) -> str:
        if value not in FLAVOUR_NAMES:
            raise ValueError(f"unknown flavour '{value}'; valid flavours: {', '.join(FLAVOUR_NAMES)}")
        return value

    @field_validator("mixed_precision")
    @classmethod
    def _no_fp16(cls, value: str) -> str:
        if value == "fp16":
            raise ValueError("fp16 is not supported: it needs loss scaling, which k5tune does not do (gradients "
                             "underflow), and Kandinsky 5 is released in bf16; use bf16 (GPUs since Ampere) or "
                             "no (fp32)")
        return value

    @field_validator("validation_num_video_frames")
    @classmethod
    def _frames_4k1(cls, value: int, info: ValidationInfo) -> int:
        problem = frame_count_problem(value)
        if problem:
            raise ValueError(problem)
        flavour = info.data.get("model_flavour", "")
        if flavour.startswith("i2v") and value < MIN_I2V_FRAMES:
            raise ValueError(
                f"{value} frames is too few for image-to-video: the I2V pipeline returns NaN frames at 13 "
                f"frames or fewer; use {MIN_I2V_FRAMES} or more"
            )
        return value

    @field_validator("validation_resolution")
    @classmethod
    def _resolution_parses(cls, value: str) -> str:
        parse_resolution(value)
        return value

    @field_validator("nabla_window")
    @classmethod
    def _window_parses(cls, value: str | None) -> str | None:
        if value is not None:
            from k5tune.models.kandinsky5.nabla import parse_window

            parse_window(value)
        return value

    @field_validator("lora_target_modules")
    @classmethod
    def _targets_known(cls, value: list[str]) -> list[str]:
        known = {"to_query", "to_key", "to_value", "out_layer", "feed_forward"}
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {sorted(known)}")
        if not value:
            raise ValueError("at least one LoRA target is needed")
        return value

    @field_validator("crepa_encoder", "crepa_encoder_image_size")
    @classmethod
    def _crepa_encoder(cls, value, info: ValidationInfo):
        problem = (encoder_problem(value) if info.field_name == "crepa_encoder"
                   else image_size_problem(value, info.data.get("crepa_encoder", "dinov2_vitg14")))
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("scheduled_sampling_max_step_offset")
    @classmethod
    def _rollout_fits(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("validation_num_inference_steps", 30)
        if value >= steps:
            raise ValueError(f"{value} steps do not fit the {steps}-step sampler they are counted on "
                             f"(validation_num_inference_steps); use at most {steps - 1}")
        return value

    @field_validator("scheduled_sampling_prob_end")
    @classmethod
    def _ramp_goes_up(cls, value: float | None, info: ValidationInfo) -> float | None:
        start = info.data.get("scheduled_sampling_prob_start", 0.0)
        if value is not None and value < start:
            raise ValueError(f"{value} is below scheduled_sampling_prob_start {start}: the ramp ends where it "
                             "starts or higher")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (the repository to upload to)")
        if self.offload_activations and not self.gradient_checkpointing:
            raise ValueError("offload_activations needs gradient_checkpointing: true (it moves what the "
                             "checkpointed blocks save)")
        return self

    @property
    def activations_offloaded(self) -> bool:
        return self.enable_group_offload if self.offload_activations is None else self.offload_activations

    # --- derived values --------------------------------------------------------------------------
    @property
    def validation_size(self) -> tuple[int, int]:
        """(height, width) of validation videos, snapped to multiples of 16."""
        return snap_resolution(*parse_resolution(self.validation_resolution))

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    def notices(self) -> list[str]:
        """Warnings for settings that are adjusted or have no effect in the current mode (notices.py)."""
        from k5tune.config.notices import config_notices

        return config_notices(self)

