"""The sections of config.json's settings, for the web form's fieldsets, `--help` and the reference page."""

from __future__ import annotations

# The web form's fieldsets, as data (the `# --- title ---` comments in schema.py only help reading the class);
# a test checks that every field is in exactly one section, in declaration order.
SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("model_family", "model_flavour", "pretrained_model_name_or_path", "model_type", "revision"),
    "data": ("data_backend_config", "frame_rate", "caption_dropout_probability", "caption_max_tokens"),
    "output": ("output_dir", "lora_format", "trigger_word", "push_to_hub", "hub_model_id"),
    "LoRA": ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"),
    "optimisation": ("train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
        "lr_warmup_steps", "optimizer", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
        "max_grad_norm", "max_train_steps", "num_train_epochs", "seed", "mixed_precision",
        "gradient_checkpointing", "gradient_checkpointing_policy", "fused_kernels", "base_model_precision",
        "modulation_precision", "max_nonfinite_steps"),
    "attention": ("attention_backend", "sparse_attention", "nabla_threshold", "nabla_window", "nabla_add_sta"),
    "flow matching": ("flow_schedule_shift", "flow_sigma_sampling", "flow_logit_mean", "flow_logit_std",
        "flow_mode_scale"),
    "checkpoints": ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"),
    "logging": ("report_to", "tracker_project_name", "tracker_run_name", "logging_dir"),
    "validation": ("validation_prompt", "validation_prompt_library", "validation_negative_prompt",
        "validation_steps", "validation_resolution", "validation_num_video_frames", "validation_guidance",
        "validation_num_inference_steps", "validation_seed", "validation_image", "disable_validation"),
    "evaluation": ("eval_steps", "eval_holdout_fraction", "eval_noise_levels", "eval_seed"),
    "memory": ("offload_during_startup", "vae_enable_patch_conv", "vae_enable_tiling", "enable_group_offload",
        "group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream",
        "offload_activations"),
    "distributed": ("num_processes", "fsdp_enable", "fsdp_reshard_after_forward", "sequence_parallel_size"),
    "TREAD": ("tread_config",),
    "CREPA": ("crepa_enabled", "crepa_block_index", "crepa_lambda", "crepa_adjacent_distance",
        "crepa_adjacent_tau", "crepa_encoder", "crepa_encoder_image_size", "crepa_feature_pooling", "crepa_drop_vae_encoder"),
    "scheduled sampling (rollout)": ("scheduled_sampling_max_step_offset", "scheduled_sampling_probability",
        "scheduled_sampling_prob_start", "scheduled_sampling_prob_end", "scheduled_sampling_ramp_steps",
        "scheduled_sampling_start_step", "scheduled_sampling_ramp_shape", "scheduled_sampling_strategy",
        "scheduled_sampling_sampler"),
}
