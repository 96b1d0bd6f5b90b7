"""stac.benchmark measures without changing what it measures (no timing assertions)."""

import torch

import stac
from stac.benchmark import compare_speed, engine
from tests.conftest import tiny_ann, tiny_calibration


def test_compare_speed_reports_every_engine_and_restores_the_engine():
    ann = tiny_ann("llama")
    snn = stac.convert(ann, stac.SpikingConfig(timesteps=6), calibration=tiny_calibration())
    ids = tiny_calibration(seed=3, n=1, length=16)[0][None]
    rows = compare_speed(ann, snn, ids, new_tokens=4, repeats=1, rounds=3)
    assert set(rows) == {"ann", "closed_form", "time_stepped"}
    for name in ("closed_form", "time_stepped"):
        assert rows[name]["prefill_s"] > 0 and rows[name]["decode_tok_s"] > 0
        per_round = rows[name]["decode_ratio_rounds"]
        assert len(per_round) == 3 and all(r > 0 for r in per_round)
        assert rows[name]["decode_ratio"] == sorted(per_round)[1]  # the median round
    assert snn.config.spiking["engine"] == "closed_form"
    assert all(e.engine == "closed_form" for e in snn.encoders.values())


def test_engine_context_restores_after_an_error():
    snn = stac.convert(tiny_ann("gpt2"), stac.SpikingConfig(timesteps=6), calibration=tiny_calibration())
    try:
        with engine(snn, "time_stepped"):
            assert all(e.engine == "time_stepped" for e in snn.encoders.values())
            raise KeyError("boom")
    except KeyError:
        pass
    assert all(e.engine == "closed_form" for e in snn.encoders.values())
