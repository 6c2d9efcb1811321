"""What sequence parallelism (`sequence_parallel_size`, models/kandinsky5/sequence_parallel.py) needs of a
run, checked before the slow work: whole groups of processes, heads and tokens that split, no dropout."""

from __future__ import annotations

from k5tune.errors import ConfigError


def check_sequence_parallel(cfg, size: int, processes: int) -> None:
    """The processes must form whole sequence groups, and the model's attention heads split over one."""
    from k5tune.models.kandinsky5.sequence_parallel import heads_problem
    from k5tune.models.source import transformer_config_of

    if processes % size:
        raise ConfigError(f"{size} must divide the number of processes ({processes}): each group of that many "
                          "processes shares the tokens of the same clips", key="sequence_parallel_size")
    if cfg.lora_dropout:  # (every process of a group would drop the same positions of its own chunk)
        raise ConfigError("sequence_parallel_size cannot be combined with lora_dropout yet: the processes of a group "
                          "would draw the same dropout for different tokens; set lora_dropout to 0",
                          key="sequence_parallel_size")
    config, where = transformer_config_of(cfg)
    problem = heads_problem(config, size)
    if problem:
        raise ConfigError(f"{problem} ({where})", key="sequence_parallel_size")


def check_token_split(buckets, size: int) -> None:
    """Every bucket's token count (latent frames x height/16 x width/16) must split over the group."""
    from k5tune.config.frames import latent_frames

    bad = sorted(b.name for b in buckets if latent_frames(b.frames) * (b.height // 16) * (b.width // 16) % size)
    if bad:
        raise ConfigError(f"{size} must divide each clip's token count (latent frames x height/16 x width/16); "
                          f"the buckets {', '.join(bad)} do not: choose resolutions or frame counts whose token "
                          "count it divides", key="sequence_parallel_size")
