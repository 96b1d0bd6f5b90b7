"""stac.plots: the per-layer figures draw exactly the meter's numbers."""

import pytest

import stac
from stac import plots
from stac.energy import measure_decode_step

from conftest import tiny_ann, tiny_calibration


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def reports(request):
    ann = tiny_ann(request.param)
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    ids = tiny_calibration(seed=7, n=1, length=40)[0]
    return measure_decode_step(ann, ids, 32), measure_decode_step(snn, ids, 32), snn


def test_the_energy_split_by_block_adds_up_to_the_report(reports, tmp_path):
    ann, snn, model = reports
    drawn = plots.plot_energy_split(ann, snn, tmp_path / "split.png")
    assert (tmp_path / "split.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for report, split in ((snn, drawn["snn"]), (ann, drawn["ann"])):
        assert sum(map(sum, split.values())) == pytest.approx(report.energy_per_token_j, rel=1e-9)
        blocks = len(split["spiking"]) - 1
        assert blocks == model.config.text_config.num_hidden_layers
    assert not any(drawn["ann"]["spiking"]) and any(drawn["ann"]["dense"][:-1])  # the ANN: dense matmuls
    assert any(drawn["snn"]["spiking"][:-1]) and not any(drawn["snn"]["dense"])  # the SNN: none left dense
    assert all(drawn["snn"]["attention"][:-1])  # every block's (spike-coded) attention costs something
    assert drawn["snn"]["spiking"][-1] > 0  # the lm_head, outside the blocks


def test_firing_rates_are_those_of_every_encoder(reports, tmp_path):
    _, snn, model = reports
    rates = plots.plot_firing_rates(snn, tmp_path / "rates.png")
    assert (tmp_path / "rates.png").stat().st_size > 1000
    expected = {lay.name: lay.firing_rate for lay in snn.per_layer if lay.kind == "spiking"}
    assert sum(len(points) for points in rates.values()) == len(expected) == len(model.encoders)
    blocks = model.config.text_config.num_hidden_layers
    by_place = {(blocks if plots.block_of(n) is None else plots.block_of(n), n.rsplit(".", 1)[-1]): r
                for n, r in expected.items()}
    assert {(b, kind): r for kind, points in rates.items() for b, r in points} == by_place
    assert rates[plots.HEAD] == [(blocks, expected["model.encoder_head"])]
    assert all(0 < r < 1 for r in by_place.values())


def test_block_of_reads_llama_and_gpt2_names():
    assert plots.block_of("model.model.layers.12.mlp.encoder_down") == 12
    assert plots.block_of("model.transformer.h.3.attn:attention") == 3
    assert plots.block_of("model.model.layers.0:residual") == 0
    assert plots.block_of("model.lm_head") is None and plots.block_of("model.encoder_head") is None
