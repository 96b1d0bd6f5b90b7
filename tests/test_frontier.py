"""The quality/energy frontier: Pareto front on hand-made points, config names, and the sweep end to end."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import stac
from stac.energy import measure_decode_step
from stac.frontier import (
    PRESETS, SWEEP, calibrate, config_name, config_spec, convert_calibrated, frontier_markdown, group_overrides,
    measure, pareto_front, parse_config, select_configs, sweep_command,
)
from tests.conftest import tiny_ann, tiny_calibration
from tests.test_energy import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


# ----- Pareto front ------------------------------------------------------------------------------------
def test_the_pareto_front_keeps_exactly_the_undominated_points():
    points = [
        (1.000, 1.0),  # best quality                                  front
        (1.001, 1.5),  #                                                front
        (1.002, 1.4),  # dominated by (1.001, 1.5)
        (1.010, 2.0),  #                                                front
        (1.010, 1.9),  # same PPL, less energy saved: dominated
        (1.500, 2.0),  # same energy, worse PPL: dominated
        (2.000, 8.0),  # worst quality, most energy saved              front
    ]
    assert pareto_front(points) == [True, True, False, True, False, False, True]


def test_identical_points_share_their_fate_and_a_single_point_is_the_front():
    assert pareto_front([(1.0, 2.0), (1.0, 2.0), (1.1, 1.0)]) == [True, True, False]
    assert pareto_front([(1.0, 2.0), (1.0, 2.0), (0.9, 2.0)]) == [False, False, True]
    assert pareto_front([(3.0, 0.5)]) == [True]
    assert pareto_front([]) == []


# ----- configs -----------------------------------------------------------------------------------------
def test_every_preset_is_named_by_its_config_and_round_trips_through_its_spec():
    assert len(PRESETS) == len(SWEEP)  # no two sweep configs share a name
    for name, config in PRESETS.items():
        assert config_name(config) == name
        assert parse_config(config_spec(config)) == config
    assert config_name(parse_config("signed_digit:12:4:down=8,o=6")) == "sd-T12-m4+down8+o6+head"
    assert config_name(parse_config("signed_digit:12:4:down=8,head=0")) == "sd-T12-m4+down8"
    with pytest.raises(ValueError, match="head=0"):
        parse_config("signed_digit:12:4:head=2")
    weighted = parse_config("signed_digit:10:6:down=12,w=0.5")
    assert weighted.threshold_weighting == 0.5 and config_name(weighted) == "sd-T10-m6+down12+head+w0.5"
    assert parse_config(config_spec(weighted)) == weighted
    assert config_name(stac.SpikingConfig(coding="bitplane", timesteps=10, threshold_margin=2.5,
                                          layer_overrides=())) == "bp-T10-m2.5+head+attn+prune5.4@16/6.75@10+w0.5"


def test_configs_are_selected_by_name_glob_or_spec_and_unknown_names_raise():
    assert list(select_configs(["sd-T12-m4"])) == ["sd-T12-m4"]
    assert set(select_configs(["sd-T10-m?"])) == {"sd-T10-m2", "sd-T10-m3", "sd-T10-m4", "sd-T10-m6"}
    assert select_configs(["rate:16:2"]) == {"rate-T16-m2+head": stac.SpikingConfig(coding="rate", timesteps=16,
                                                                               threshold_margin=2.0,
                                                                               threshold_weighting=0.0,
                                                                               spiking_attention=False,
                                                                               layer_overrides=())}
    assert select_configs(None) == PRESETS
    assert config_name(stac.SpikingConfig()) == (
        "sd-T10-m5+down+2top+2+proj+2top+2+gate_up-1+fc-1+headmx1.6+qoct1+2+poct1+2+head+attn+oct8top4"
        "+prune5.4@16/6.75@10+w0.5")
    assert config_name(stac.SpikingConfig(spiking_head=False, steps_per_octave=1)) == (
        "sd-T10-m5+down+2top+2+proj+2top+2+gate_up-1+fc-1+headmx1.6+qoct1+2+poct1+2+attn+w0.5")
    dense = parse_config("signed_digit:10:5:down=12,oct=4,top=3")
    assert (dense.steps_per_octave, dense.coarse_octaves) == (4, 3) and parse_config(config_spec(dense)) == dense
    assert parse_config("signed_digit:10:5").steps_per_octave == 1  # specs name their schedule
    mixed = parse_config("signed_digit:10:5:attn=1,oct=3,poct=1")
    assert mixed.for_encoder("model.layers.0.self_attn.encoder_p").steps_per_octave == 1
    assert mixed.for_encoder("model.layers.0.self_attn.encoder_q").steps_per_octave == 3
    assert parse_config(config_spec(mixed)) == mixed and config_name(mixed).endswith("+poct1+head+attn+oct3")
    with pytest.raises(ValueError, match="no preset matches"):
        select_configs(["sd-T99-*"])
    with pytest.raises(ValueError, match="unknown encoder group"):
        group_overrides(lm_head=4)
    wide = parse_config("signed_digit:10:5:down=13,downm=4,headm=1.6")
    down, head = wide.for_encoder("model.layers.2.mlp.encoder_down"), wide.for_encoder("encoder_head")
    assert (down.timesteps, down.threshold_margin, head.threshold_margin) == (13, 20.0, 8.0)
    assert parse_config(config_spec(wide)) == wide
    with pytest.raises(ValueError, match="unknown encoder group"):
        parse_config("signed_digit:10:5:lm_headm=2")
    grouped = parse_config("signed_digit:10:5:down=12,oct=8,top=4,downoct=4,downtop=5")
    down = grouped.for_encoder("model.layers.1.mlp.encoder_down")
    up = grouped.for_encoder("model.layers.1.mlp.encoder_gate_up")
    assert (down.timesteps, down.steps_per_octave, down.coarse_octaves) == (12, 4, 5)
    assert (up.steps_per_octave, up.coarse_octaves) == (8, 4)
    assert parse_config(config_spec(grouped)) == grouped and "+downoct4+downtop5+" in config_name(grouped)


def test_group_overrides_give_each_group_of_every_block_its_own_timesteps():
    config = parse_config("signed_digit:12:4:down=8,qkv=10")
    snn = stac.convert(tiny_ann("llama"), config, calibration=tiny_calibration())
    expected = {"encoder_qkv": 10, "encoder_o": 12, "encoder_gate_up": 12, "encoder_down": 8, "encoder_head": 12}
    for name, encoder in snn.encoders.items():
        assert encoder.coding.timesteps == expected[name.rsplit(".", 1)[-1]], name


def test_converting_from_statistics_gathered_once_equals_converting_from_the_calibration_text():
    ann, calibration = tiny_ann("llama"), tiny_calibration()
    stats = calibrate(ann, calibration)
    ids = tiny_calibration(seed=9, n=1, length=40)[0][None]
    for config in (parse_config("signed_digit:8:3:down=6"), stac.SpikingConfig(coding="rate", timesteps=16),
                   parse_config("signed_digit:8:3:q=6,attn=1")):
        reference = stac.convert(ann, config, calibration=calibration)
        fast = convert_calibrated(ann, config, stats)
        assert reference.config.to_dict() == fast.config.to_dict()
        for name, encoder in reference.encoders.items():
            assert torch.equal(encoder.threshold, fast.encoders[name].threshold), name
        with torch.no_grad():
            assert torch.equal(reference(input_ids=ids).logits, fast(input_ids=ids).logits)


# ----- measuring ---------------------------------------------------------------------------------------
def test_a_measured_row_splits_the_snn_energy_exactly_and_bounds_the_ratio():
    ann, tok = tiny_ann("llama"), tiny_tokenizer()
    # float attention: its QK^T and AV are the row's attention energy (spike-coded: the next test)
    snn = stac.convert(ann, stac.SpikingConfig(timesteps=8, spiking_attention=False), calibration=tiny_calibration())
    ids = tiny_calibration(seed=7, n=1, length=300)[0]
    ann_step = measure_decode_step(ann, ids, 256)
    row = measure(ann, snn, tok, ann_step, ids, "lee_background", n_tokens=600, context=256)
    assert row["energy_per_token_snn_j"] == measure_decode_step(snn, ids, 256).energy_per_token_j
    assert row["energy_ratio"] == ann_step.energy_per_token_j / row["energy_per_token_snn_j"]
    parts = sum(row[f"energy_{k}_j"] for k in ("spiking", "dense", "attention", "elementwise"))
    assert parts == pytest.approx(row["energy_per_token_snn_j"], rel=1e-12)
    assert 0 < row["energy_synops_j"] < row["energy_spiking_j"]
    assert row["energy_ratio"] < row["ratio_if_synops_free"] < row["ratio_if_spiking_free"]
    assert sum(row["spiking_j_by_group_text_avg"].values()) > 0
    assert set(row["spiking_j_by_group_text_avg"]) == {"encoder_qkv", "encoder_o", "encoder_gate_up",
                                                        "encoder_down", "encoder_head"}
    assert 0 < row["spikes_per_neuron_text_avg"] <= 8 and row["top1_agreement"] > 0.9


def test_with_spiking_attention_its_encoders_count_as_attention_not_as_block_spiking_layers():
    ann, tok = tiny_ann("llama"), tiny_tokenizer()
    snn = stac.convert(ann, stac.SpikingConfig(timesteps=8, spiking_attention=True), calibration=tiny_calibration())
    ids = tiny_calibration(seed=7, n=1, length=300)[0]
    ann_step = measure_decode_step(ann, ids, 256)
    row = measure(ann, snn, tok, ann_step, ids, "lee_background", n_tokens=600, context=256)
    step = measure_decode_step(snn, ids, 256)
    attention = [l for l in step.per_layer if l.name.endswith((":attention", ".encoder_q", ".encoder_p"))]
    assert len(attention) == 3 * ann.config.num_hidden_layers
    assert row["energy_attention_j"] == pytest.approx(sum(l.energy_j for l in attention) / step.tokens, rel=1e-12)
    spiking = sum(l.energy_j for l in step.per_layer if l.kind == "spiking" and l not in attention)
    assert row["energy_spiking_j"] == pytest.approx(spiking / step.tokens, rel=1e-12)
    # the weight matmuls' synops per MAC, as without spiking attention
    block_macs = sum(l.macs for l in ann_step.per_layer
                     if l.kind == "dense" and not l.name.endswith(":attention") and "lm_head" not in l.name)
    block_synops = sum(l.synops for l in step.per_layer
                       if l.kind == "spiking" and l not in attention and not l.name.endswith("encoder_head"))
    assert row["synops_per_block_mac"] == pytest.approx(block_synops / block_macs, rel=1e-12)
    assert 0 < row["spikes_per_neuron_text_avg"] <= 8


# ----- the script, end to end --------------------------------------------------------------------------
def frontier_script():
    spec = importlib.util.spec_from_file_location("frontier_script", ROOT / "scripts" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_writes_rows_incrementally_a_marked_table_and_a_plot_and_resumes(tmp_path):
    tiny_ann("llama").save_pretrained(tmp_path / "ann")
    tiny_tokenizer().save_pretrained(tmp_path / "ann")
    out = {k: tmp_path / "out" / k for k in ("log.jsonl", "front.md", "front.png", "rows.json")}
    argv = ["--model", str(tmp_path / "ann"), "--configs", "sd-T8-m4", "rate:4:2", "--tokens", "600",
            "--calibration-tokens", "512", "--log", str(out["log.jsonl"]), "--markdown", str(out["front.md"]),
            "--plot", str(out["front.png"]), "--json", str(out["rows.json"])]
    rows = frontier_script().main(argv)

    assert [r["name"] for r in rows] == ["sd-T8-m4", "rate-T4-m2+head"]
    logged = [json.loads(line) for line in out["log.jsonl"].read_text().splitlines()]
    assert [r["name"] for r in logged] == ["sd-T8-m4", "rate-T4-m2+head"]
    assert json.loads(out["rows.json"].read_text()) == rows
    assert [r["on_front"] for r in rows] == pareto_front([(r["ppl_ratio"], r["energy_ratio"]) for r in rows])
    for r in rows:
        assert r["tokens"] == 598 and r["energy_context"] == 256 and r["energy_model"] == "45nm_fp32"
        assert r["energy_ratio"] > 0 and r["spikes_per_token"] > 0 and torch.isfinite(torch.tensor(r["kl"]))
    table = out["front.md"].read_text()
    assert sweep_command(rows) in table and "--configs sd-T8-m4 rate:4:2" in table
    assert "`sd-T8-m4`" in table and "`rate-T4-m2+head`" in table
    assert out["front.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun finds both rows in the log and measures nothing; --report-only redraws from the log alone.
    again = frontier_script().main(argv)
    assert again == rows and len(out["log.jsonl"].read_text().splitlines()) == 2
    assert frontier_script().main(argv + ["--report-only"]) == rows


def test_the_markdown_marks_front_and_quality_bar_rows():
    base = dict(tokens=100, energy_context=256, energy_model="45nm_fp32", ppl_ann=10.0, kl=0.0,
                energy_per_token_ann_j=1e-4, energy_per_token_snn_j=5e-5, energy_ratio_text_avg=2.0,
                spikes_per_token=1.0, spikes_per_neuron_text_avg=1.0, synops_per_block_mac=1.0,
                ratio_if_synops_free=3.0, model="tiny")
    rows = [dict(base, name="good", ppl_ratio=1.005, top1_agreement=0.98, energy_ratio=2.0),
            dict(base, name="cheap", ppl_ratio=1.5, top1_agreement=0.5, energy_ratio=4.0),
            dict(base, name="bad", ppl_ratio=1.6, top1_agreement=0.5, energy_ratio=1.0)]
    lines = {line.split("`")[1]: line for line in frontier_markdown(rows, "cmd", "2026-01-01").splitlines()
             if line.startswith("| ") and "`" in line}
    assert lines["good"].startswith("| FQ |") and lines["cheap"].startswith("| F |")
    assert lines["bad"].startswith("|  |")
