"""Warnings for settings that are adjusted, or have no effect in the current mode (printed as `note:`)."""

from __future__ import annotations

from k5tune.config.frames import parse_resolution


def _no_effect(keys: list[str], why: str) -> str:
    return f"{', '.join(keys)} ha{'s' if len(keys) == 1 else 've'} no effect {why}"


def config_notices(cfg) -> list[str]:
    notes: list[str] = []
    raw = parse_resolution(cfg.validation_resolution)
    if raw != cfg.validation_size:
        notes.append(
            f"validation_resolution {cfg.validation_resolution} is rounded down to multiples of 16: "
            f"{cfg.validation_size[0]}x{cfg.validation_size[1]}"
        )
    if not 2.0 <= cfg.validation_guidance <= 6.0:
        notes.append(
            f"validation_guidance {cfg.validation_guidance} is outside 2-6: expect black or noisy "
            "validation videos; 5.0 is recommended"
        )
    set_keys = cfg.model_fields_set
    ignored_when = [  # (keys, whether they do nothing now, why)
        ({"group_offload_type", "group_offload_blocks_per_group", "group_offload_use_stream"},
         not cfg.enable_group_offload, "without enable_group_offload"),
        ({k for k in set_keys if k.startswith("crepa_")} - {"crepa_enabled"}, not cfg.crepa_enabled,
         "without crepa_enabled"),
        ({k for k in set_keys if k.startswith("scheduled_sampling_")} - {"scheduled_sampling_max_step_offset"},
         cfg.scheduled_sampling_max_step_offset == 0, "while scheduled_sampling_max_step_offset is 0"),
        ({"nabla_threshold", "nabla_window", "nabla_add_sta"}, cfg.sparse_attention == "dense",
         "with sparse_attention dense"),
        ({"fsdp_reshard_after_forward"}, not cfg.fsdp_enable, "without fsdp_enable"),
        ({"tracker_project_name"}, cfg.report_to == "none", "with report_to none"),
    ]
    for keys, idle, why in ignored_when:
        if idle and sorted(set_keys & keys):
            notes.append(_no_effect(sorted(set_keys & keys), why))
    if cfg.group_offload_type == "leaf_level" and "group_offload_blocks_per_group" in set_keys:
        notes.append("group_offload_blocks_per_group has no effect with group_offload_type leaf_level "
                     "(each layer moves on its own)")
    if cfg.validation_prompt is None and cfg.validation_prompt_library is None and not cfg.disable_validation:
        notes.append("no validation_prompt: no validation videos will be made")
    if cfg.max_train_steps is not None and cfg.num_train_epochs is not None:
        notes.append("max_train_steps and num_train_epochs are both set: max_train_steps wins")
    return notes
