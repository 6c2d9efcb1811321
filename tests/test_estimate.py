"""`k5tune estimate`: predictions against the GPU figures measured on H100s (benchmarks/results, shipped as
k5tune/estimate/measurements.json)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from k5tune.cli import main
from k5tune.estimate import (
    GIB,
    TrainingShape,
    caching_estimate,
    candidate_settings,
    config_advice,
    encoder_weight_gib,
    estimate_problem,
    pinned_cpu_gib,
    plan_from_config,
    propose,
    training_peak_gib,
    training_terms,
    vae_encode_peak_gib,
    weight_count,
)
from k5tune.estimate.check import CHECKS, Source, check_report, measured_gib, measured_rows, shipped_example
from k5tune.estimate.presets import (
    LITE_PRESETS,
    MEMORY_PRESETS,
    choose_preset,
    preset_peak_gib,
    pro_presets,
)
from k5tune.estimate.search import smaller_shapes
from k5tune.train.plan import TrainingPlan

LITE, PRO = "t2v-lite-sft-5s", "t2v-pro-sft-5s-hd"


# The table of every measured peak (k5tune/estimate/check.py: each row names the results file, the JSON
# row and the value it reads). Two rows fitted a constant and agree by construction: "Lite, full
# checkpointing" (run 3) fitted TRANSIENT_PER_TOKEN_DIM and "Lite, activation offload alone" (run 12)
# fitted ACTIVATION_OFFLOAD_RESIDUE; the VAE rows are the anchors of the VAE scaling. All other rows are
# predictions. The text phase of caching is a worst-case bound (8 of the longest captions): it must not
# be below what was measured.
@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS, ids=[c.label for c in CHECKS])
def test_every_measured_peak_is_predicted_within_15_percent(check):
    measured = measured_gib(check.source)
    predicted = check.predict()
    if check.role == "bound":
        assert predicted >= measured, (predicted, measured)
    else:
        assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


def test_the_table_covers_todays_runs():
    files = {c.source.file for c in CHECKS}
    for run in ("h100-run11/bench.jsonl", "h100-run11/vae.jsonl", "h100-run12/bench.jsonl", "h100-run15/bench.jsonl",
                "h100-run15/summary.jsonl", "2xh100-run13/summary.jsonl", "2xh100-run14/summary.jsonl"):
        assert f"2026-11-27-{run}" in files
    rows = {file: sum(c.source.file == file for c in CHECKS) for file in files}
    assert rows["2026-11-27-h100-run11/bench.jsonl"] == 4 and rows["2026-11-27-h100-run12/bench.jsonl"] == 4
    assert rows["2026-11-27-h100-run15/bench.jsonl"] == 3


def test_a_source_must_pick_exactly_one_row():
    with pytest.raises(LookupError):
        measured_gib(Source("2026-11-27-h100-run11/bench.jsonl", "ours.peak_gib", {"flavour": LITE}))


@pytest.mark.parametrize(("flavour", "precision"), [(LITE, "int8"), (LITE, "fp8"), (PRO, "int8")])
def test_quantised_weights_are_counted_to_the_byte(flavour, precision):
    """The meta-device count (quantize.py's layer selection, 1 byte per element + the per-row scale)
    equals the weights of the quantised model measured on the GPU (run 15)."""
    rows = measured_rows("2026-11-27-h100-run15/bench.jsonl")
    row = next(r for r in rows if r["flavour"] == flavour and r["base_precision"]["precision"] == precision)
    assert abs(weight_count(flavour, precision).total - row["base_precision"]["transformer_weights_gib"] * GIB) < 1024
    bf16 = weight_count(flavour)
    assert bf16.total - weight_count(flavour, precision).total == (row["base_precision"]["quantized"]["bytes_before"]
                                                                   - row["base_precision"]["quantized"]["bytes_after"])


def test_modulation_in_bf16_halves_its_bytes():
    # Pro keeps 2.2 B modulation weights (8.85 GiB in fp32): modulation_precision auto stores them in bf16
    saved = weight_count(PRO).total - weight_count(PRO, modulation_fp32=False).total
    assert abs(saved / GIB - 4.43) < 0.01
    assert weight_count(PRO, "int8") == weight_count(PRO, "int8", modulation_fp32=False)  # quantised anyway


def test_vae_anchor_run_agrees_with_the_counted_weights_and_clip():
    header = measured_rows("2026-11-27-h100-run11/vae.jsonl")[0]
    clip = 61 * 512 * 768 * 3 * 2 / 2**30
    assert abs(encoder_weight_gib()["vae"] + clip - header["weights_and_clip_gib"]) < 0.02


def test_caching_with_the_guides_settings():
    """offload_during_startup streams Qwen: the VAE encode is the caching peak, and it fits 13 GiB."""
    shape = TrainingShape()
    guide = caching_estimate(shape, offload_during_startup=True, patch_conv=True)
    assert guide.streamed and guide.text_gib < 4 < guide.vae_gib
    assert guide.peak_gib <= 13
    whole = caching_estimate(shape, offload_during_startup=False, patch_conv=False)
    assert not whole.streamed and whole.text_gib > 15.4  # Qwen2.5-VL-7B's weights alone are 15.4 GiB
    assert whole.vae_gib > whole.text_gib  # both encoders on the GPU while the VAE encodes
    assert caching_estimate(shape, False, False, gpu_gib=12).streamed  # does not fit: streamed anyway
    # a longer or larger clip costs more, except with tiling's fixed-size tiles (only the clip grows)
    bigger = TrainingShape(720, 1280, 121)
    assert vae_encode_peak_gib(bigger, "patch_conv") > 2 * vae_encode_peak_gib(shape, "patch_conv")
    assert vae_encode_peak_gib(bigger, "tiling") < vae_encode_peak_gib(shape, "tiling") + 1
    # a 10 s clip is encoded in the same 17-frame temporal tiles as a 61-frame one: only the clip grows
    ten_seconds = TrainingShape(512, 768, 241)
    for variant in ("plain", "patch_conv", "tiling"):
        assert 0 < vae_encode_peak_gib(ten_seconds, variant) - vae_encode_peak_gib(shape, variant) < 0.6


def test_the_vae_encodes_a_long_clip_in_17_frame_tiles(tiny_model_dir):
    """What the VAE caching estimate rests on: diffusers' HunyuanVideo VAE, as k5tune's cache calls it,
    runs its encoder on at most 17 frames at a time (temporal tiles), so the encode's working set does
    not grow with the clip's length; a clip of up to 16 frames is encoded whole."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from k5tune.estimate.caching import VAE_TEMPORAL_TILE_FRAMES, vae_encoder_frames
    from k5tune.models.kandinsky5.encoding import encode_video

    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_model_dir, subfolder="vae").eval()
    seen: list[int] = []
    vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[2]))
    for frames in (9, 61, 241):
        seen.clear()
        latents = encode_video(vae, torch.zeros(1, 3, frames, 32, 32))
        assert latents.shape[1] == (frames - 1) // 4 + 1  # the whole clip's latents
        assert max(seen) == vae_encoder_frames(frames) == min(frames, VAE_TEMPORAL_TILE_FRAMES)


def test_more_memory_saving_settings_predict_less():
    shape = TrainingShape()
    for flavour in (LITE, PRO):
        peaks = [training_peak_gib(flavour, shape, s) for s in (
            TrainingPlan("selective"), TrainingPlan("selective", base_precision="int8"),
            TrainingPlan("full", base_precision="int8"), TrainingPlan("full", base_precision="int8",
                                                                              offload_activations=True),
            TrainingPlan("full", base_precision="int8", offload_activations=True, group_offload_blocks=1))]
        assert peaks == sorted(peaks, reverse=True)
    # FSDP2 shards weights and LoRA state: more processes, less per GPU
    fsdp = [training_peak_gib(PRO, shape, TrainingPlan("full", fsdp_processes=n)) for n in (2, 4, 8)]
    assert fsdp == sorted(fsdp, reverse=True) and fsdp[0] < training_peak_gib(PRO, shape, TrainingPlan("full"))
    # sequence parallelism: each GPU holds a chunk of the activations, plus the whole gathered output
    hd10 = TrainingShape(720, 1280, 241)
    one, *split = (training_terms(PRO, hd10, TrainingPlan("selective", sequence_parallel=p))
                   for p in (1, 2, 4))
    assert [t["block inputs"] for t in split] == pytest.approx([one["block inputs"] / 2, one["block inputs"] / 4],
                                                              rel=1e-3)
    assert "gathered output" not in one and split[0]["gathered output"] == split[1]["gathered output"] > 0


def test_offloaded_eager_blocks_recompute_fully_whatever_the_policy():
    shape = TrainingShape()
    for selective in (TrainingPlan("selective", offload_activations=True, fused_kernels=False),
                      TrainingPlan("selective", group_offload_blocks=1),
                      TrainingPlan("selective", offload_activations=True, base_precision="int8")):
        assert selective.recomputes_fully()
        assert training_terms(LITE, shape, selective)["kept attention"] == 0
        assert training_peak_gib(LITE, shape, selective) == training_peak_gib(LITE, shape, selective.effective())
        assert selective.effective().checkpointing == "full"


def test_compiled_blocks_keep_their_policy_and_offload_what_they_save():
    shape = TrainingShape()
    moved = TrainingPlan("selective", offload_activations=True)
    assert not moved.recomputes_fully() and moved.offloads_through_hooks(True) and moved.effective() == moved
    terms, kept = training_terms(LITE, shape, moved), training_terms(LITE, shape, TrainingPlan("selective"))
    assert terms["kept attention"] == 0 < kept["kept attention"]
    assert terms["block inputs"] < kept["block inputs"]
    # the kept attention waits in pinned memory beside the inputs: twice the inputs alone
    inputs = pinned_cpu_gib(LITE, shape, TrainingPlan("full", offload_activations=True))
    assert pinned_cpu_gib(LITE, shape, moved) == 2 * inputs


def test_pinned_cpu_memory():
    shape = TrainingShape()
    assert pinned_cpu_gib(PRO, shape, TrainingPlan("full")) == 0
    # group offload packs the block weights' home copies into 1 GiB slabs, first fit: at most a slab more
    # than they weigh (one weight per pinned request would be rounded up to a power of two: 39.3 GiB)
    weights = weight_count(PRO, modulation_fp32=False)
    pinned = pinned_cpu_gib(PRO, shape, TrainingPlan("full", group_offload_blocks=1))
    assert pinned == weights.blocks_pinned / GIB and weights.blocks / GIB < pinned <= math.ceil(weights.blocks / GIB) + 1
    # offloaded activations sit in 1 GiB slabs: one bf16 hidden state per visual block (192 MiB, 5 a slab)
    assert pinned_cpu_gib(PRO, shape, TrainingPlan("full", offload_activations=True)) == 12  # 60 / 5 slabs
    # compiled selective blocks also move the attention they keep: twice as many
    assert pinned_cpu_gib(PRO, shape, TrainingPlan("selective", offload_activations=True)) == 24
    assert pinned_cpu_gib(LITE, shape, TrainingPlan("selective", offload_activations=True)) == 6  # 64 / 12


def test_combinations_that_cannot_train_are_refused():
    for settings in (TrainingPlan("full", fsdp_processes=2, group_offload_blocks=1),
                     TrainingPlan("full", fsdp_processes=2, base_precision="int8"),
                     TrainingPlan("none")):
        assert estimate_problem(settings)
        with pytest.raises(ValueError):
            training_peak_gib(LITE, TrainingShape(), settings)
    assert all(estimate_problem(s) is None for s in candidate_settings(processes=4))


def test_candidates_start_with_the_fastest():
    options = candidate_settings()
    assert options[0] == TrainingPlan("selective")
    assert options[1] == TrainingPlan("selective", offload_activations=True)  # as fast, ~5 GiB less (Lite)
    assert options[2] == TrainingPlan("selective", base_precision="int8")  # ~ as fast, 2.3 GiB less (Lite)
    assert all(s.fsdp_processes == 1 for s in options)
    assert [s.fsdp_processes for s in candidate_settings(2)][-2:] == [2, 2]  # FSDP2 measured slowest: last
    route = ((0.5, 2, 30),)  # the config's TREAD stays in every option
    assert all(s.tread == route for s in candidate_settings(2, TrainingPlan(tread=route)))
    assert (propose(LITE, TrainingShape(), 12, user=TrainingPlan(tread=route)).settings
            == TrainingPlan("selective", tread=route))
    # fused_kernels false: blocks run eagerly, so activation offload recomputes them whole (7.5 GiB, not 7.1)
    eager = candidate_settings(user=TrainingPlan(fused_kernels=False))
    assert all(not s.fused_kernels for s in eager) and eager[1].recomputes_fully() and not options[1].recomputes_fully()


@pytest.mark.parametrize(("flavour", "gpu", "expected"), [
    (LITE, 24, TrainingPlan("selective")),
    (LITE, 12, TrainingPlan("selective", offload_activations=True)),  # 7.1 GiB at the default's speed
    (LITE, 8, TrainingPlan("full", group_offload_blocks=1, offload_activations=True)),
    (PRO, 80, TrainingPlan("selective")),
    (PRO, 48, TrainingPlan("selective", offload_activations=True)),  # 45.2 GiB (45.09 measured), 7.69 s
    (PRO, 24, TrainingPlan("full", group_offload_blocks=1, offload_activations=True)),
])
def test_proposals(flavour, gpu, expected):
    shape = TrainingShape()
    proposal = propose(flavour, shape, gpu)
    assert proposal.settings == expected and proposal.shape is shape and proposal.peak_gib + 1 <= gpu


def test_proposals_without_pinned_memory_and_when_nothing_fits():
    # Pro on 48 GiB without pinned CPU memory: the int8 base with full checkpointing
    alternative = propose(PRO, TrainingShape(), 48, smaller=False, max_pinned_gib=0)
    assert alternative.settings == TrainingPlan("full", base_precision="int8")
    assert propose(PRO, TrainingShape(), 4) is None
    smaller = propose(LITE, TrainingShape(), 4)  # not even int8 + group offload at 512x768x61: a smaller clip
    assert smaller.shape.tokens < TrainingShape().tokens


def test_config_advice_names_the_keys_to_paste():
    current = TrainingPlan("selective")
    assert config_advice(TrainingPlan("selective"), current) == "config.json as it is"
    advice = config_advice(TrainingPlan("full", group_offload_blocks=1, offload_activations=True), current)
    assert advice == ('config.json: "enable_group_offload": true, "group_offload_blocks_per_group": 1, '
                      '"group_offload_use_stream": true, "offload_activations": true')
    back = config_advice(TrainingPlan("full"), TrainingPlan("selective", group_offload_blocks=1,
                                                                    offload_activations=True))
    assert back == ('config.json: "gradient_checkpointing_policy": "full", "enable_group_offload": false, '
                    '"offload_activations": false')


def test_plan_from_config_read_every_memory_key():
    cfg = shipped_example(base_model_precision="fp8", enable_group_offload=True, group_offload_blocks_per_group=2,
                          group_offload_use_stream=True, gradient_checkpointing_policy="full").train
    assert plan_from_config(cfg) == TrainingPlan("full", group_offload_blocks=2, group_offload_stream=True,
                                                         offload_activations=True, base_precision="fp8",
                                                         modulation_fp32=False)
    assert plan_from_config(shipped_example(modulation_precision="fp32").train).modulation_fp32
    cfg = shipped_example(enable_group_offload=True, offload_activations=False).train
    assert not plan_from_config(cfg).offload_activations
    cfg = shipped_example(fsdp_enable=True, num_processes=4, gradient_checkpointing_policy="full").train
    assert plan_from_config(cfg).fsdp_processes == 4
    assert plan_from_config(cfg, processes=1).fsdp_processes == 1  # one process trains unsharded
    cfg = shipped_example(tread_config={"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2,
                                                    "end_layer_idx": -2}]}).train
    assert plan_from_config(cfg).tread == ((0.5, 2, 30),)  # end inclusive
    assert plan_from_config(shipped_example(gradient_checkpointing=False).train).checkpointing == "none"


def write_config(folder: Path, **config) -> None:
    (folder / "config").mkdir()
    (folder / "config" / "config.json").write_text(json.dumps({"lora_rank": 32, "lora_target_modules": [
        "to_query", "to_key", "to_value", "out_layer", "feed_forward"], "offload_during_startup": True, **config}))
    (folder / "config" / "multidatabackend.json").write_text(json.dumps([
        {"id": "v", "dataset_type": "video", "instance_data_dir": "datasets/videos", "resolution": 512,
         "video": {"num_frames": 61}},
        {"id": "t", "dataset_type": "text_embeds", "default": True}]))


def test_one_rule_recommends_for_estimate_the_wizard_and_the_ui(tmp_path, monkeypatch, capsys):
    """first_fitting picks the fastest candidate that fits, for estimate's plans and the presets alike;
    `estimate --gpu-memory` names the preset the wizard and the web UI recommend for that card."""
    from k5tune.estimate.search import first_fitting

    assert first_fitting([3, 2, 1], float, 2.5) == 2 and first_fitting([3, None, 1], lambda n: n, 2) == 1
    assert first_fitting([3], float, 2.5) is None and first_fitting([2], float, 2.5, margin_gib=1.0) is None
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    for gpu, preset in ((12, "up-to-12gb"), (16, "16gb"), (24, "24-32gb"), (80, "80gb")):
        assert main(["estimate", "--gpu-memory", str(gpu)]) == 0
        out = capsys.readouterr().out
        assert f"memory preset for this card (k5tune configure, web UI): {preset}" in out
        assert choose_preset(LITE, gpu).recommended == preset


def test_nabla_flavours_are_estimated_with_their_masks():
    """A 10 s flavour trains under NABLA by default: its block masks are counted, and its compiled blocks
    keep FlexAttention's output as dense ones keep theirs (eager blocks keep none); sparse_attention: dense
    estimates the dense step."""
    nabla = plan_from_config(shipped_example(model_flavour="t2v-lite-sft-10s").train)
    dense = plan_from_config(shipped_example(model_flavour="t2v-lite-sft-10s", sparse_attention="dense").train)
    assert nabla.nabla is not None and dense.nabla is None
    terms = training_terms("t2v-lite-sft-10s", TrainingShape(frames=241), nabla)
    # 32 layers x 28 heads x 1464^2 block pairs, two int32 index tensors each (held as partial blocks)
    assert 14 < terms["NABLA block masks"] < 16
    kept = 32 * 93_696 * 1792 * 2 / 2**30  # a bf16 hidden state of every token, per layer
    assert terms["kept attention"] == pytest.approx(kept)
    eager = training_terms("t2v-lite-sft-10s", TrainingShape(frames=241), replace(nabla, compile_blocks=False))
    assert eager["kept attention"] == 0 and eager["NABLA block masks"] == terms["NABLA block masks"]
    assert "NABLA block masks" not in training_terms("t2v-lite-sft-10s", TrainingShape(frames=241), dense)
    # compiled blocks under activation offload: the hooks move each mask's index tensors with the block's
    # other saved tensors (tests/test_nabla.py sees them moved), so they are counted in pinned CPU memory
    moved = replace(nabla, offload_activations=True)
    moved_terms = training_terms("t2v-lite-sft-10s", TrainingShape(frames=241), moved)
    assert moved_terms["NABLA block masks"] < terms["NABLA block masks"] / 10
    unmasked = pinned_cpu_gib("t2v-lite-sft-10s", TrainingShape(frames=241), replace(moved, nabla=None))
    assert 14 < pinned_cpu_gib("t2v-lite-sft-10s", TrainingShape(frames=241), moved) - unmasked <= 17  # (1 GiB slabs)


def test_estimate_command(tmp_path, monkeypatch, capsys):
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "512x768, 61 frames (24576 tokens)" in out
    assert "your config: selective checkpointing -> training peak 12.2 GiB" in out
    assert "fits 24.0 GiB: selective checkpointing at 512x768" in out and "config.json as it is" in out
    assert "caching peak" in out and "FSDP2" not in out
    assert "Qwen2.5-VL streamed from CPU memory" in out and "caching: config.json" not in out  # caching fits 24 GiB


def test_estimate_command_on_small_cards(tmp_path, monkeypatch, capsys):
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", "--gpu-memory", "12"]) == 0
    out = capsys.readouterr().out
    assert 'fits 12.0 GiB: selective checkpointing, activation offload' in out and '"offload_activations": true' in out
    assert 'without pinned CPU memory: selective checkpointing, int8 base' in out
    assert 'caching: config.json: "vae_enable_patch_conv": true' in out  # the plain VAE needs 12.2 GiB
    assert main(["estimate", "--gpu-memory", "8"]) == 0
    out = capsys.readouterr().out
    assert '"enable_group_offload": true' in out and "GiB of pinned CPU memory" in out


def test_estimate_command_reads_the_memory_keys(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, model_flavour=PRO, enable_group_offload=True, group_offload_use_stream=True,
                 vae_enable_tiling=True, num_processes=2)
    monkeypatch.chdir(tmp_path)
    assert main(["estimate", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    # (Pro HD trains under NABLA by default: its block masks count too, 2.2 GiB)
    assert ("your config: group offload (1 block/group, stream), activation offload, NABLA (P 0.9, STA 11x3x3) -> "
            "training peak 13.6 GiB") in out
    assert "video latents (vae_enable_tiling)" in out  # the CLI passes vae_enable_tiling
    assert "FSDP2 over 2 GPUs" in out and "2 processes" in out
    assert "config.json as it is" in out and "98.0 GiB of pinned CPU memory" in out  # 49 per process
    assert main(["estimate", "--num-processes", "1"]) == 0
    assert "FSDP2" not in capsys.readouterr().out


def test_estimate_check_prints_the_table(capsys):
    assert main(["estimate", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| measurement | predicted GiB | measured GiB | error | source |")
    figures = sum(c.role != "bound" for c in CHECKS)
    assert f"{figures} of {figures} figures within 15%" in out
    assert check_report() in out


# The wizard's presets are the recommender's plans, named for a card class (estimate/presets.py).
CARD_CLASSES = [(LITE, 5.5, 1, "up-to-12gb"), (LITE, 13, 1, "16gb"), (LITE, 18, 1, "24-32gb"), (LITE, 38, 1, "40-48gb"),
                (LITE, 70, 1, "80gb"), (PRO, 13, 1, "pro-group-offload"), (PRO, 42, 2, "pro-fsdp2"),
                (PRO, 47, 1, "pro-48gb"), (PRO, 70, 1, "pro-80gb")]


@pytest.mark.parametrize(("flavour", "gpu", "processes", "expected"), CARD_CLASSES,
                         ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CARD_CLASSES])
def test_the_recommended_preset_fits_the_smallest_card_of_its_class(flavour, gpu, processes, expected):
    choice = choose_preset(flavour, gpu, processes)
    presets, recommended = choice.presets, choice.recommended
    assert recommended == expected
    preset = next(p for p in presets if p.name == recommended)
    shape = TrainingShape()
    assert training_peak_gib(flavour, shape, preset.plan) + 1 <= gpu
    caching = caching_estimate(shape, preset.offload_during_startup, preset.vae == "patch_conv", preset.vae == "tiling",
                               gpu)
    assert caching.peak_gib + 1 <= gpu


@pytest.mark.parametrize(("flavour", "gpu", "processes", "expected"), CARD_CLASSES,
                         ids=[f"{c[0]}-{c[1]}x{c[2]}" for c in CARD_CLASSES])
def test_at_the_presets_own_shape_the_shape_aware_recommendation_is_the_card_class(flavour, gpu, processes,
                                                                                   expected):
    """Given the config's shape, the recommender keeps the measured classes where the shape is theirs
    (512x768x61, dense) or smaller: predictions only decide past what was measured."""
    user = TrainingPlan()
    for shape in (TrainingShape(), TrainingShape(384, 640, 33, rank=16)):
        choice = choose_preset(flavour, gpu, processes, shape, user)
        assert (choice.recommended, choice.fits_shape) == (expected, shape)


TEN_SECONDS = "t2v-lite-sft-10s"


@pytest.mark.parametrize(("gpu", "expected", "frames"), [(79.2, "80gb", 241), (47.5, "16gb", 241),
                                                         (23.5, "16gb", 241), (11.6, "up-to-12gb", 97)])
def test_ten_second_clips_under_nabla_get_the_preset_their_predicted_peak_fits(gpu, expected, frames):
    """Lite 10 s at 512x768x241 under NABLA: selective checkpointing with compiled blocks is predicted at
    ~49 GiB (48 GB cards' `40-48gb` would run out of memory), activation offload at ~15 GiB; a 12 GB card
    fits no preset at 241 frames and is told the shorter clip its preset fits."""
    shape = TrainingShape(512, 768, 241)
    user = plan_from_config(shipped_example(model_flavour=TEN_SECONDS).train)
    assert user.nabla is not None
    choice = choose_preset(TEN_SECONDS, gpu, 1, shape, user)
    assert choice.recommended == expected and choice.fits_shape.frames == frames
    chosen = next(p for p in choice.presets if p.name == expected)
    assert preset_peak_gib(TEN_SECONDS, chosen, choice.fits_shape, user) + 1 <= gpu
    assert preset_peak_gib(TEN_SECONDS, MEMORY_PRESETS["40-48gb"], shape, user) > 47.5
    assert choose_preset(TEN_SECONDS, 47.5).recommended == "40-48gb"  # (what the classes alone said)


def test_a_long_clip_that_fits_nothing_is_proposed_shorter_at_its_own_size_first():
    shape = TrainingShape(512, 768, 241)
    assert [(s.height, s.width, s.frames) for s in smaller_shapes(shape)][:5] == [
        (512, 768, 181), (512, 768, 121), (512, 768, 97), (512, 768, 81), (512, 768, 61)]
    assert all(s.tokens < shape.tokens for s in smaller_shapes(shape))
    assert smaller_shapes(TrainingShape())[0].frames == 49  # (a 61-frame clip: the guide's smaller shapes)
    proposal = propose(TEN_SECONDS, shape, 11.6, user=plan_from_config(shipped_example(model_flavour=TEN_SECONDS).train))
    assert (proposal.shape.height, proposal.shape.width) == (512, 768) and proposal.shape.frames < 241


@pytest.mark.parametrize("preset", [*LITE_PRESETS, *pro_presets(43, 2), *pro_presets(47.5, 2)],
                         ids=lambda p: f"{p.name}-{p.plan.offload_activations}")
def test_a_presets_config_keys_select_its_plan(preset):
    processes = preset.plan.fsdp_processes
    loaded = shipped_example(**preset.settings, num_processes=processes)
    assert plan_from_config(loaded.train, processes) == replace(
        preset.plan, modulation_fp32=False, attention=loaded.train.attention_backend)


def test_the_shipped_measurements_are_the_rows_of_the_results_files():
    """measurements.json (what `estimate --check` reads, installed wheels included) is a copy of the JSON
    rows of the benchmarks/results files the checks name; compared wherever a source checkout has them."""
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    if not results.is_dir():
        pytest.skip("no benchmarks/results here")
    for file in {c.source.file for c in CHECKS}:
        text = (results / file).read_text()
        rows = ([json.loads(line) for line in text.splitlines() if line.startswith("{")] if file.endswith(".jsonl")
                else [json.loads(text)])
        assert measured_rows(file) == rows, file
