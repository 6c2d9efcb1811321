"""predict peak GPU memory for a config and propose settings that fit

Predict the peak GPU memory of caching and training for the config (or the shape given) and, with
--gpu-memory, the fastest settings that fit that card, as config.json keys to paste.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/config.json", help="config file (default: config/config.json)")
    parser.add_argument("--gpu-memory", type=float, metavar="GIB", help="the card's memory in GiB")
    parser.add_argument("--flavour", help="override the config's model_flavour")
    parser.add_argument("--resolution", help="HEIGHTxWIDTH of the training clips (default: from the dataset file)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the dataset's num_frames)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default: the config's lora_rank)")
    parser.add_argument("--num-processes", type=int, metavar="N",
                        help="GPUs to train on (default: the config's num_processes); with more than one, "
                        "FSDP2 (fsdp_enable) is among the settings tried")
    parser.add_argument("--check", action="store_true",
                        help="print the predictions against the GPU measurements (benchmarks/results, shipped "
                        "with k5tune) and exit")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.config import load_config
    from k5tune.estimate import estimate_report, plan_from_config, shape_from_config
    from k5tune.models.flavours import require_flavour

    if args.check:
        from k5tune.estimate.check import check_report

        print(check_report())
        return 0
    loaded = load_config(args.config)
    cfg = loaded.train
    flavour = require_flavour(args.flavour or cfg.model_flavour, "--flavour")
    shape = shape_from_config(loaded, args.resolution, args.frames, args.rank)
    processes = args.num_processes or cfg.num_processes
    current = plan_from_config(cfg, processes, flavour)
    print(estimate_report(flavour, shape, args.gpu_memory, cfg.offload_during_startup, cfg.vae_enable_patch_conv,
                          cfg.vae_enable_tiling, current=current, processes=processes))
    return 0
