"""Thresholds from calibration statistics, and their optional weighting by the synapses' column norms."""

import math

import pytest
import torch

import stac
from stac import thresholds
from stac.architectures import synapse_weights
from tests.conftest import tiny_ann, tiny_calibration


def test_calibrated_is_margin_times_max_with_a_floor():
    got = thresholds.calibrated(torch.tensor([0.0, 0.5, 2.0]), 4.0, 1e-3)
    assert torch.equal(got, torch.tensor([1e-3, 2.0, 8.0]))


def test_column_norms_sum_over_consumers():
    a = torch.tensor([[3.0, 0.0], [4.0, 1.0]])  # [out, in]: column norms 5, 1
    b = torch.tensor([[0.0, 2.0]])
    assert torch.allclose(thresholds.column_norms([a]), torch.tensor([5.0, 1.0]))
    assert torch.allclose(thresholds.column_norms([a, b]), torch.tensor([5.0, math.sqrt(5.0)]))
    with pytest.raises(ValueError, match="at least one"):
        thresholds.column_norms([])


def test_no_weighting_changes_nothing():
    th = torch.rand(16) + 0.1
    assert thresholds.weighted(th, torch.rand(16), 0.0, 4.0) is th


def test_full_weighting_equalises_threshold_times_norm_and_keeps_the_geometric_mean():
    torch.manual_seed(0)
    th = torch.rand(32) + 0.5
    norms = torch.rand(32) + 0.5
    got = thresholds.weighted(th, norms, 1.0, margin=1e3)  # a margin this large never lets the floor bind
    product = got * norms
    assert torch.allclose(product, product.mean().expand_as(product), rtol=1e-4)
    assert torch.allclose(got.log().mean(), th.log().mean(), atol=1e-5)
    half = thresholds.weighted(th, norms, 0.5, margin=1e3)  # part of the way: the spread of th*norm shrinks
    assert (half * norms).log().std() < (th * norms).log().std()
    assert (half * norms).log().std() > product.log().std()


def test_weighting_never_clips_a_calibrated_value():
    torch.manual_seed(1)
    th = torch.rand(64) * 4 + 0.1
    norms = torch.rand(64) ** 4 + 1e-3  # a wide spread: many channels would go below their maximum
    got = thresholds.weighted(th, norms, 1.0, margin=4.0)
    assert (got >= th / 4.0).all()
    with pytest.raises(ValueError, match="column norms"):
        thresholds.weighted(th, norms[:3], 1.0, 4.0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_convert_weights_thresholds_by_the_driven_columns(kind):
    ann = tiny_ann(kind)
    calibration = tiny_calibration()
    # the encoders that drive weight matrices (the attention's queries drive keys: margin rule only)
    plain = stac.convert(ann, stac.SpikingConfig(timesteps=8, spiking_attention=False), calibration=calibration)
    weighted = stac.convert(ann, stac.SpikingConfig(timesteps=8, threshold_weighting=1.0, spiking_attention=False),
                            calibration=calibration)
    margin = 4.0
    consumers = synapse_weights(weighted)
    moved = 0
    for (name, p), w in zip(plain.encoders.items(), weighted.encoders.values()):
        assert (w.threshold >= p.threshold / margin - 1e-6).all(), name
        expected = thresholds.weighted(p.threshold, thresholds.column_norms(consumers[w]), 1.0, margin)
        assert torch.allclose(w.threshold, expected), name
        moved += int((w.threshold != p.threshold).sum())
    assert moved > 0
    assert weighted.config.spiking_config.threshold_weighting == 1.0
    ids = calibration[0][None]
    with torch.no_grad():
        assert torch.isfinite(weighted(input_ids=ids).logits).all()


def test_threshold_weighting_is_validated_and_old_configs_read_as_unweighted():
    for bad, err in ((-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0.5", TypeError),
                     (True, TypeError)):
        with pytest.raises(err, match="threshold_weighting"):
            stac.SpikingConfig(threshold_weighting=bad)
    d = stac.SpikingConfig(threshold_weighting=0.5).to_dict()
    assert stac.SpikingConfig.from_dict(d).threshold_weighting == 0.5
    del d["threshold_weighting"]
    assert stac.SpikingConfig.from_dict(d).threshold_weighting == 0.0
