"""The `k5tune` command: parse arguments and call one function per subcommand.

User mistakes (K5TuneError) become one line on stderr and exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from k5tune import __version__
from k5tune.errors import K5TuneError


def _config_keys_epilog() -> str:
    from k5tune.config.fields import config_fields

    lines = ["config keys (any of them can be given as --key=value or --key value; bare --flag means true):"]
    for setting in config_fields():
        shown = json.dumps(setting.default, default=str)
        lines.append(f"  --{setting.name} (default {shown})\n      {setting.description}")
    return "\n".join(lines)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config/config.json", help="config file (default: config/config.json)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate both files, print the resolved settings and exit"
    )


def _load(args: argparse.Namespace, extra: list[str]):
    from k5tune.config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(extra))


def _print_dry_run(loaded, derived: dict | None = None) -> int:
    print(json.dumps({**loaded.resolved(), **({"derived": derived} if derived else {})}, indent=2))
    for notice in loaded.notices():
        print(f"note: {notice}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    loaded = _load(args, extra)
    if args.dry_run:
        from k5tune.train.summary import training_summary

        return _print_dry_run(loaded, training_summary(loaded))
    from k5tune.progress import TqdmProgress
    from k5tune.train import distributed
    from k5tune.train.trainer import describe_outputs, train

    if loaded.train.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        # start the processes for the user: torchrun runs this same command once per GPU
        return distributed.launch(loaded.train.num_processes, ["train", "--config", args.config, *extra])
    try:
        result = train(loaded, progress=TqdmProgress())
    finally:
        distributed.shutdown()
    if result.is_main:
        print(describe_outputs(result))
    return 0


def cmd_cache(args: argparse.Namespace, extra: list[str]) -> int:
    loaded = _load(args, extra)
    if args.dry_run:
        return _print_dry_run(loaded)
    from k5tune.cache.stage import run_cache_stage
    from k5tune.progress import TqdmProgress
    from k5tune.runtime import Runtime

    stage = run_cache_stage(loaded, Runtime.detect(loaded.train.mixed_precision), TqdmProgress())
    print(stage.summary())
    return 0


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.demo import run_demo
    from k5tune.train.trainer import describe_outputs

    workdir, result = run_demo(args.workdir)
    print(f"demo finished in {workdir} (its config is {workdir}/config/config.json)")
    print(describe_outputs(result))
    return 0


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.generate import GenerateRequest, generate

    request = GenerateRequest(
        model=args.model, prompt=args.prompt, output=Path(args.output), flavour=args.flavour, lora=args.lora,
        image=args.image, frames=args.frames, resolution=args.resolution, steps=args.steps, guidance=args.guidance,
        seed=args.seed, negative_prompt=args.negative_prompt, fps=args.fps, lora_scale=args.lora_scale,
        device=args.device,
    )
    print(f"wrote {generate(request)}")
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.bench import BenchConfig, format_report, run_bench
    from k5tune.config.frames import frame_count_problem
    from k5tune.errors import ConfigError
    from k5tune.models.flavours import require_flavour
    from k5tune.train.speed import SpeedPlan

    require_flavour(args.flavour, "--flavour")
    if frame_count_problem(args.frames):
        raise ConfigError(frame_count_problem(args.frames), key="--frames")
    plan = SpeedPlan(fast_path=not args.no_fused, attention=args.attention, checkpointing=args.checkpointing,
                     compile=False if args.no_compile else None, keep_attention_blocks=args.keep_attention_blocks,
                     compile_blocks=False if args.no_compile_blocks or args.no_compile else None)
    tread = None
    if args.tread:
        from pydantic import ValidationError

        from k5tune.config.schema import TreadConfig

        try:
            tread = TreadConfig.model_validate_json(args.tread)
        except ValidationError as exc:
            raise ConfigError(f"not a valid tread_config: {exc.errors()[0]['msg']}", key="--tread") from None
    bench = BenchConfig(flavour=args.flavour, resolution=args.resolution, frames=args.frames, rank=args.rank,
                        steps=args.steps, warmup=args.warmup, batch=args.batch, compare_stock=args.compare_stock,
                        model=args.model, device=args.device, plan=plan, tread=tread,
                        offload_blocks_per_group=args.group_offload, offload_stream=args.offload_stream,
                        offload_activations=args.offload_activations, base_precision=args.base_precision,
                        offload_leaf_level=args.leaf_level, modulation_bf16=args.modulation_bf16)
    text = format_report(run_bench(bench))
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def cmd_estimate(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.config import load_config
    from k5tune.estimate import estimate_report, settings_from_config, shape_from_config
    from k5tune.models.flavours import require_flavour

    if args.check:
        from k5tune.estimate_check import check_report

        print(check_report())
        return 0
    loaded = load_config(args.config)
    cfg = loaded.train
    flavour = require_flavour(args.flavour or cfg.model_flavour, "--flavour")
    shape = shape_from_config(loaded, args.resolution, args.frames, args.rank)
    processes = args.num_processes or cfg.num_processes
    current = settings_from_config(cfg, processes, flavour)
    print(estimate_report(flavour, shape, args.gpu_memory, cfg.offload_during_startup, cfg.vae_enable_patch_conv,
                          cfg.vae_enable_tiling, current=current, processes=processes))
    return 0


def cmd_make_tiny_model(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.models.tiny import make_tiny_model

    path = make_tiny_model(args.directory, i2v=args.i2v, seed=args.seed)
    kind = "image-to-video" if args.i2v else "text-to-video"
    print(f"tiny {kind} model written to {path}")
    return 0


def cmd_configure(args: argparse.Namespace, extra: list[str]) -> int:
    if not args.example:
        from k5tune.configure import run_command

        return run_command(yes=args.yes, directory=args.directory, config=args.config, datasets=args.datasets)
    from k5tune.config.loading import EXAMPLES_DIR

    target = Path(args.directory)
    target.mkdir(parents=True, exist_ok=True)
    for example in sorted(EXAMPLES_DIR.glob("*.example")):
        destination = target / example.name
        if destination.exists() and not args.force:
            print(f"kept existing {destination}")
            continue
        destination.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {destination}")
    print(f"next: cp {target}/config.json.example {target}/config.json and "
          f"cp {target}/multidatabackend.json.example {target}/multidatabackend.json, then edit them")
    return 0


def cmd_server(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from k5tune.server.app import serve
    except ImportError as exc:
        raise K5TuneError(f"the web UI needs its extra packages ({exc.name} is missing): "
                          "pip install 'k5tune[server]'") from None
    return serve(host=args.host, port=args.port, token=args.token, project_dir=args.project_dir)


def cmd_convert_lora(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.train.lora_formats import convert_file

    written, layout, modules = convert_file(args.input, args.output, args.to)
    print(f"wrote {written}: {modules} LoRA modules, {layout} layout -> {args.to} layout")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k5tune",
        description="Train LoRA adapters for the Kandinsky 5.0 Video models (T2V/I2V, Lite/Pro).",
    )
    parser.add_argument("--version", action="version", version=f"k5tune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    train = sub.add_parser(
        "train", help="cache, train, validate and save a LoRA from config/config.json",
        description="Read config/config.json and the dataset file it names, cache latents and text "
        "embeddings, train the LoRA, validate and save.",
        epilog=_config_keys_epilog(), formatter_class=formatter,
    )
    _add_config_arguments(train)
    train.set_defaults(func=cmd_train, takes_overrides=True)

    cache = sub.add_parser(
        "cache", help="discover, probe and cache the dataset only; print the dataset report",
        description="Discover and probe the clips, cache VAE latents and text embeddings, print the report.",
        epilog="Config keys can be overridden as in `k5tune train` (see `k5tune train --help`).",
    )
    _add_config_arguments(cache)
    cache.set_defaults(func=cmd_cache, takes_overrides=True)

    demo = sub.add_parser(
        "demo", help="train a tiny random-weight model on synthetic clips, on CPU, in minutes",
        description="Build a tiny Kandinsky 5 model and synthetic captioned clips, then run the whole "
        "training pipeline (cache, train, validate, save) on CPU.",
    )
    demo.add_argument("--workdir", default="k5tune-demo", help="folder for the demo's files (default: k5tune-demo)")
    demo.set_defaults(func=cmd_demo)

    generate = sub.add_parser(
        "generate", help="generate a video from a base model (+ LoRA, + image for I2V)",
        description="Generate a video with the diffusers Kandinsky 5 pipeline, optionally with a LoRA "
        "(diffusers, ComfyUI or PEFT layout) and, for image-to-video flavours, a first-frame image.",
    )
    generate.add_argument("--model", required=True, help="hub id or local folder in diffusers layout")
    generate.add_argument("--flavour", help="model flavour (default: from the hub id or the folder's pipeline)")
    generate.add_argument("--lora", help="LoRA file, or a training output folder")
    generate.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1.0)")
    generate.add_argument("--prompt", required=True, help="what the video shows")
    generate.add_argument("--negative-prompt", help="default: the pipeline's negative prompt")
    generate.add_argument("--image", help="first frame for image-to-video flavours (required there)")
    generate.add_argument("--frames", type=int, default=61, help="frame count, 4k+1 (default 61)")
    generate.add_argument("--resolution", default="512x768", help="HEIGHTxWIDTH (default 512x768)")
    generate.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    generate.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5.0)")
    generate.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
    generate.add_argument("--fps", type=float, default=24.0, help="frame rate of the mp4 (default 24)")
    generate.add_argument("--device", help="cuda, cuda:1 or cpu (default: a GPU if there is one)")
    generate.add_argument("--output", required=True, help="the mp4 to write")
    generate.set_defaults(func=cmd_generate)

    bench = sub.add_parser(
        "bench", help="time training steps at full model size with random weights, beside stock diffusers",
        description="Build the full-size transformer of a flavour with random weights on the GPU and time "
        "LoRA training steps (warm-up excluded, median); prints JSON: step seconds, peak GiB, tokens, useful "
        "TFLOP, achieved TFLOP/s and the fraction of the card's measured matmul rate.",
    )
    bench.add_argument("--flavour", default="t2v-lite-sft-5s", help="which model size/config (default Lite 5s)")
    bench.add_argument("--resolution", default="512x768", help="HEIGHTxWIDTH (default 512x768)")
    bench.add_argument("--frames", type=int, default=61, help="frames, 4k+1 (default 61)")
    bench.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    bench.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
    bench.add_argument("--steps", type=int, default=6, help="timed steps; the median is reported (default 6)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    bench.add_argument("--compare-stock", action="store_true", help="also time the stock diffusers + peft step")
    bench.add_argument("--model", help="a diffusers folder instead of the full-size config (e.g. the tiny model)")
    bench.add_argument("--device", help="cuda, cuda:1 or cpu (default: a GPU if there is one)")
    bench.add_argument("--attention", default="auto", choices=["auto", "sdpa", "cudnn", "flash"],
                       help="attention kernel preference (default auto)")
    bench.add_argument("--checkpointing", default="selective", choices=["selective", "full", "none"],
                       help="activation checkpointing of our step (default selective)")
    bench.add_argument("--keep-attention-blocks", type=int,
                       help="selective checkpointing: only the first N visual blocks keep attention outputs")
    bench.add_argument("--tread", help="TREAD routes as JSON (like tread_config): also time the routed step, "
                       "e.g. '{\"routes\": [{\"selection_ratio\": 0.5, \"start_layer_idx\": 2, \"end_layer_idx\": -2}]}'")
    bench.add_argument("--group-offload", type=int, metavar="BLOCKS_PER_GROUP",
                       help="offload the transformer blocks to the CPU in groups of this many blocks")
    bench.add_argument("--offload-stream", action="store_true", help="prefetch offloaded groups on a side stream")
    bench.add_argument("--leaf-level", action="store_true",
                       help="with --group-offload: move each layer on its own (group_offload_type leaf_level)")
    bench.add_argument("--offload-activations", action=argparse.BooleanOptionalAction, default=None,
                       help="keep checkpointed block inputs in CPU memory (default: on with --group-offload)")
    bench.add_argument("--base-precision", default="no_change", choices=["no_change", "int8", "fp8"],
                       help="weight-only quantisation of our model's frozen base (base_model_precision; torchao); "
                       "the --compare-stock model stays unquantised")
    bench.add_argument("--modulation-bf16", action="store_true",
                       help="store our model's modulation layers in bf16 (modulation_precision bf16)")
    bench.add_argument("--no-fused", action="store_true", help="our step without the fused blocks")
    bench.add_argument("--no-compile", action="store_true", help="do not torch.compile the fused groups")
    bench.add_argument("--no-compile-blocks", action="store_true",
                       help="run the blocks eagerly (only their fused groups compiled)")
    bench.add_argument("--output", help="also write the JSON report to this file")
    bench.set_defaults(func=cmd_bench)

    estimate = sub.add_parser(
        "estimate", help="predict peak GPU memory for a config and propose settings that fit",
        description="Predict the peak GPU memory of caching and training for the config (or the shape given) "
        "and, with --gpu-memory, the fastest settings that fit that card, as config.json keys to paste.",
    )
    estimate.add_argument("--config", default="config/config.json", help="config file (default: config/config.json)")
    estimate.add_argument("--gpu-memory", type=float, metavar="GIB", help="the card's memory in GiB")
    estimate.add_argument("--flavour", help="override the config's model_flavour")
    estimate.add_argument("--resolution", help="HEIGHTxWIDTH of the training clips (default: from the dataset file)")
    estimate.add_argument("--frames", type=int, help="frames per clip (default: the dataset's num_frames)")
    estimate.add_argument("--rank", type=int, help="LoRA rank (default: the config's lora_rank)")
    estimate.add_argument("--num-processes", type=int, metavar="N",
                          help="GPUs to train on (default: the config's num_processes); with more than one, "
                          "FSDP2 (fsdp_enable) is among the settings tried")
    estimate.add_argument("--check", action="store_true",
                          help="print the predictions against the GPU measurements in benchmarks/results "
                          "(a source checkout) and exit")
    estimate.set_defaults(func=cmd_estimate)

    server = sub.add_parser(
        "server", help="web UI at http://localhost:8001",
        description="Edit config and datasets, start/stop/watch training, see loss and validation videos. "
        "Binds 127.0.0.1 by default (no token needed there); any other address requires a token, "
        "generated and printed at start unless --token is given.",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    server.add_argument("--token", help="access token for the API (default: none on 127.0.0.1, generated otherwise)")
    server.add_argument("--project-dir", default=".",
                        help="the project folder: files outside it are never read or served (default: here)")
    server.set_defaults(func=cmd_server)

    configure = sub.add_parser(
        "configure", help="interactive wizard that writes config/config.json and config/multidatabackend.json",
        description="Ask for the flavour, dataset folder, resolution, frames, a memory preset for your GPU and "
        "validation, check every answer with the config schema, and write config/config.json and "
        "config/multidatabackend.json (existing values are the defaults; other keys are kept). With "
        "--example, copy the packaged example files instead.",
    )
    configure.add_argument("--example", action="store_true", help="write the packaged *.example files")
    configure.add_argument("--directory", default="config", help="where to write (default: config)")
    configure.add_argument("--force", action="store_true", help="with --example: overwrite existing example files")
    configure.add_argument("--yes", "-y", action="store_true",
                           help="take every default without asking (scripts, CI; needs no terminal)")
    configure.add_argument("--config", help="config file to write (default: DIRECTORY/config.json)")
    configure.add_argument("--datasets", help="dataset file to write (default: the one the existing config names, "
                           "else DIRECTORY/multidatabackend.json)")
    configure.set_defaults(func=cmd_configure)

    tiny = sub.add_parser(
        "make-tiny-model", help="write a tiny random-weight model in diffusers layout",
        description="Write a tiny random-weight Kandinsky 5 model (real classes, diffusers layout) for "
        "tests, the demo and offline trials.",
    )
    tiny.add_argument("directory", help="output folder")
    tiny.add_argument("--i2v", action="store_true", help="an image-to-video model (Kandinsky5I2VPipeline)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(func=cmd_make_tiny_model)

    convert = sub.add_parser(
        "convert-lora", help="convert a LoRA between the diffusers and ComfyUI key layouts",
        description="Convert a LoRA file between the diffusers and ComfyUI key layouts. Reads diffusers, "
        "ComfyUI, PEFT ('base_model.model.') and unprefixed files; tensors are copied bit for bit and the "
        "scale (alpha / rank) is kept: as '.alpha' tensors for ComfyUI, as the peft config in the "
        "'lora_adapter_metadata' header for diffusers. The k5tune.* header entries are kept.",
    )
    convert.add_argument(
        "input", metavar="IN",
        help="LoRA .safetensors file, or a folder holding pytorch_lora_weights.safetensors (a training output)",
    )
    convert.add_argument(
        "output", metavar="OUT",
        help="file to write (replaced atomically), or an existing folder: then pytorch_lora_weights.safetensors "
        "for --to diffusers, <IN name>_comfyui.safetensors for --to comfyui",
    )
    convert.add_argument(
        "--to", required=True, choices=["comfyui", "diffusers"],
        help="layout to write: 'comfyui' (diffusion_model.*.lora_down/lora_up/alpha, for ComfyUI's native "
        "Kandinsky 5 loader) or 'diffusers' (transformer.*.lora_A/lora_B, for load_lora_weights and k5tune)",
    )
    convert.set_defaults(func=cmd_convert_lora)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args, extra) or 0)
    except K5TuneError as exc:
        print(f"k5tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("k5tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
