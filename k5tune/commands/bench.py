"""time training steps at full model size with random weights, beside stock diffusers

Build the full-size transformer of a flavour with random weights on the GPU and time LoRA training steps
(warm-up excluded, median); prints JSON: step seconds, peak GiB, tokens, useful TFLOP, achieved TFLOP/s and
the fraction of the card's measured matmul rate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from k5tune.train.plan import TrainingPlan  # (torch-free: the plan's own defaults)

    _add_shape_arguments(parser)
    _add_plan_arguments(parser)
    _add_memory_arguments(parser)
    _add_crepa_arguments(parser)
    parser.add_argument("--no-fused", action="store_true", help="our step without the fused blocks")
    parser.add_argument("--no-compile", action="store_true", help="do not torch.compile the fused groups")
    parser.add_argument("--no-compile-blocks", action="store_true",
                        help="run the blocks eagerly (only their fused groups compiled)")
    parser.add_argument("--compile-blocks", action="store_true",
                        help="compile the blocks whole (the default on a GPU; under NABLA the mask and FlexAttention "
                             "in the block's graph, tiled as --flex-tiling says): states it in a scenario's flags")
    parser.add_argument("--flex-tiling", default=TrainingPlan.flex_tiling, choices=["autotune", "heuristic"],
                        help="NABLA: how compiled FlexAttention finds its tiles: heuristic (torch's own tiles "
                             "narrowed to the 64-token blocks, no autotuning; the default) or autotune (benchmarks "
                             "candidates once per clip length)")
    parser.add_argument("--output", help="also write the JSON report to this file")
    _add_suite_arguments(parser)


def _add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the scenarios and suites, and exit")
    parser.add_argument("--scenario", help="run a named scenario (its flags first, then any given here)")
    parser.add_argument("--suite", help="run a named suite of scenarios, one after the other")
    parser.add_argument("--results", metavar="ROWS.jsonl",
                        help="append each result as one JSON row (scenario, card, date, git sha, versions, report)")
    parser.add_argument("--tables", metavar="ROWS.jsonl",
                        help="print the markdown tables (one per theme, card and date) of a rows file, and exit")


def _add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flavour", default="t2v-lite-sft-5s", help="which model size/config (default Lite 5s)")
    parser.add_argument("--resolution", default="512x768", help="HEIGHTxWIDTH (default 512x768)")
    parser.add_argument("--frames", type=int, default=61, help="frames, 4k+1 (default 61)")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    parser.add_argument("--batch", type=int, default=1, help="clips per step (default 1)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps; the median is reported (default 6)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    parser.add_argument("--compare-stock", action="store_true", help="also time the stock diffusers + peft step")
    parser.add_argument("--model", help="a diffusers folder instead of the full-size config (e.g. the tiny model)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: a GPU if there is one)")


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "cudnn", "flash"],
                        help="attention kernel preference (default auto)")
    parser.add_argument("--checkpointing", default="selective", choices=["selective", "full", "none"],
                        help="activation checkpointing of our step (default selective)")
    parser.add_argument("--keep-attention-blocks", type=int,
                        help="selective checkpointing: only the first N visual blocks keep attention outputs")
    parser.add_argument("--sparse-attention", default="auto", choices=["auto", "nabla", "dense"],
                        help="auto: what the flavour's transformer config says (NABLA for the 10 s and Pro HD "
                        "flavours); nabla or dense to choose (default auto)")
    parser.add_argument("--nabla-threshold", type=float, help="NABLA's P (default: the checkpoint's, 0.9)")
    parser.add_argument("--nabla-density", type=float,
                        help="keep this share of key blocks per query block instead of the P threshold (random "
                        "weights give a near-uniform attention map, where P keeps ~90%%; a trained checkpoint's "
                        "map is peaked): times the sparse step at a chosen density")
    parser.add_argument("--rollout", type=int, default=0, metavar="K",
                        help="scheduled sampling's worst case: every sample rolled out K sampler steps first")
    parser.add_argument("--forward", action="store_true",
                        help="also time one no-grad forward (a rollout step, one eval-loss level)")
    parser.add_argument("--tread", help="TREAD routes as JSON (like tread_config): also time the routed step, "
                        "e.g. '{\"routes\": [{\"selection_ratio\": 0.5, \"start_layer_idx\": 2, \"end_layer_idx\": -2}]}'")


def _add_crepa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crepa", nargs="?", const="dinov2_vitg14", choices=["dinov2_vitg14", "dinov2_vits14"],
                        help="also time the step with CREPA (teacher features of this encoder's width, as cached; "
                             "default dinov2_vitg14) and the cache stage's feature cost per clip (random encoder "
                             "weights of the real size)")
    parser.add_argument("--crepa-block", type=int, default=8, help="CREPA's aligned block (default 8)")


def _add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-offload", type=int, metavar="BLOCKS_PER_GROUP",
                        help="offload the transformer blocks to the CPU in groups of this many blocks")
    parser.add_argument("--offload-stream", action="store_true", help="prefetch offloaded groups on a side stream")
    parser.add_argument("--leaf-level", action="store_true",
                        help="with --group-offload: move each layer on its own (group_offload_type leaf_level)")
    parser.add_argument("--offload-activations", action=argparse.BooleanOptionalAction, default=None,
                        help="keep checkpointed block inputs in CPU memory (default: on with --group-offload)")
    parser.add_argument("--base-precision", default="no_change", choices=["no_change", "int8", "fp8"],
                        help="weight-only quantisation of our model's frozen base (base_model_precision; torchao); "
                        "the --compare-stock model stays unquantised")
    parser.add_argument("--modulation-bf16", action="store_true",
                        help="store our model's modulation layers in bf16 (modulation_precision bf16)")


def _tread(text: str | None):
    """--tread's JSON as a TreadConfig (None without it)."""
    if not text:
        return None
    from pydantic import ValidationError

    from k5tune.config.schema import TreadConfig
    from k5tune.errors import ConfigError

    try:
        return TreadConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"not a valid tread_config: {exc.errors()[0]['msg']}", key="--tread") from None


def _nabla(args: argparse.Namespace):
    """The NABLA settings our step runs (None: dense), resolved as training resolves sparse_attention."""
    import json

    from k5tune.models.flavours import FLAVOURS
    from k5tune.models.kandinsky5.nabla import NablaSettings

    if args.sparse_attention == "dense":
        return None
    if args.model:
        config = json.loads((Path(args.model) / "transformer" / "config.json").read_text())
    else:
        config = FLAVOURS[args.flavour].transformer_config
    settings = NablaSettings.from_transformer_config(config)
    if settings is None and args.sparse_attention == "nabla":
        settings = NablaSettings()
    if settings is None:
        return None
    return settings.with_overrides(P=args.nabla_threshold, fixed_density=args.nabla_density)


def _plan(args: argparse.Namespace):
    """Our step's TrainingPlan from the flags (the memory and speed settings training reads from config)."""
    from k5tune.train.plan import TrainingPlan

    offload = args.group_offload is not None
    return TrainingPlan(
        fused_kernels=not args.no_fused, attention=args.attention, checkpointing=args.checkpointing,
        keep_attention_blocks=args.keep_attention_blocks, group_offload_blocks=args.group_offload,
        group_offload_stream=args.offload_stream or not offload, group_offload_leaf=args.leaf_level,
        offload_activations=offload if args.offload_activations is None else args.offload_activations,
        base_precision=args.base_precision, modulation_fp32=not args.modulation_bf16,
        compile_kernels=False if args.no_compile else None,
        compile_blocks=False if args.no_compile_blocks or args.no_compile else True if args.compile_blocks else None,
        nabla=_nabla(args), flex_tiling=args.flex_tiling)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from k5tune.bench import rows, scenarios
    from k5tune.errors import ConfigError

    if args.list:
        print(scenarios.listing())
        return 0
    if args.tables:
        print(rows.tables(rows.read_rows(args.tables)))
        return 0
    if args.suite:
        if args.suite not in scenarios.SUITES:
            raise ConfigError(f"unknown suite '{args.suite}'; known: {', '.join(scenarios.SUITES)}", key="--suite")
        failed = [name for name in scenarios.SUITES[args.suite] if not _survives(_with_scenario(args, name))]
        if failed:
            print(f"k5tune: bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    return _run_one(_with_scenario(args, args.scenario) if args.scenario else args)


def _survives(args: argparse.Namespace) -> bool:
    """One scenario of a suite: a failure is reported and the suite goes on."""
    try:
        return _run_one(args) == 0
    except Exception as exc:  # noqa: BLE001 - one scenario's failure (out of memory, a compile error) is its row
        print(f"k5tune: bench: scenario {args.scenario} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def _with_scenario(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """The scenario's flags, with the flags given on the command line on top (those not at their default)."""
    from k5tune.bench.scenarios import SCENARIOS
    from k5tune.errors import ConfigError

    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario '{name}'; `k5tune bench --list` shows them", key="--scenario")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    merged = parser.parse_args(list(SCENARIOS[name].args))
    given = {key: value for key, value in vars(args).items()
             if key not in ("scenario", "suite") and value != getattr(defaults, key, value)}
    for key, value in given.items():
        setattr(merged, key, value)
    merged.scenario, merged.suite = name, None
    merged.added_flags = _as_flags(parser, given)
    return merged


# Where a run writes its report, not what it measures: left out of a row's flags.
_OUTPUT_KEYS = ("output", "results", "tables")


def _as_flags(parser: argparse.ArgumentParser, given: dict) -> list[str]:
    """The command-line flags that set `given` (dest -> value): a row of a scenario run with flags on top
    records them, so its flags reproduce what was measured (`--flex-tiling heuristic`, say)."""
    flags: list[str] = []
    for action in parser._actions:
        if action.dest not in given or action.dest in _OUTPUT_KEYS or not action.option_strings:
            continue
        value = given[action.dest]
        if action.nargs == 0:  # a switch (store_true and the like): present when it set its constant
            if value == action.const:
                flags.append(action.option_strings[-1])
        else:
            flags += [action.option_strings[-1], str(value)]
    return flags


def _run_one(args: argparse.Namespace) -> int:
    from k5tune.bench import BenchConfig, format_report, rows, run_bench
    from k5tune.bench.scenarios import SCENARIOS
    from k5tune.config.frames import frame_count_problem
    from k5tune.errors import ConfigError
    from k5tune.models.flavours import require_flavour

    require_flavour(args.flavour, "--flavour")
    if frame_count_problem(args.frames):
        raise ConfigError(frame_count_problem(args.frames), key="--frames")
    bench = BenchConfig(flavour=args.flavour, resolution=args.resolution, frames=args.frames, rank=args.rank,
                        steps=args.steps, warmup=args.warmup, batch=args.batch, compare_stock=args.compare_stock,
                        model=args.model, device=args.device, plan=_plan(args), tread=_tread(args.tread),
                        rollout_steps=args.rollout, time_forward=args.forward, crepa=args.crepa,
                        crepa_block=args.crepa_block)
    report = run_bench(bench)
    text = format_report(report)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.results:
        scenario = SCENARIOS.get(args.scenario) if args.scenario else None
        flags = [*scenario.args, *getattr(args, "added_flags", [])] if scenario else []
        rows.append_row(args.results, rows.make_row(report, args.scenario, scenario and scenario.theme, flags))
    return 0
