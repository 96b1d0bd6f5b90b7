"""convert() returns a new spiking model close to the ANN and leaves the ANN as it was."""

import pytest
import torch

import stac
from stac.attention import PROBABILITY_ENCODER, QUERY_ENCODER
from tests.conftest import VOCAB, tiny_ann, tiny_calibration


def test_the_input_model_is_left_unchanged(kind):
    ann = tiny_ann(kind)
    before = {k: v.clone() for k, v in ann.state_dict().items()}
    modules_before = [type(m) for m in ann.modules()]
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    assert snn.model is not ann
    assert [type(m) for m in ann.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in ann.state_dict().items())
    assert not ann._forward_pre_hooks and all(not m._forward_pre_hooks for m in ann.modules())


@pytest.mark.parametrize("coding, timesteps, tol", [("bitplane", 16, 0.06), ("signed_digit", 12, 0.1),
                                                     ("rate", 64, 0.5)])
def test_snn_logits_approach_the_ann(kind, coding, timesteps, tol):
    ann = tiny_ann(kind)
    cfg = stac.SpikingConfig(coding=coding, timesteps=timesteps, threshold_margin=1.5)
    snn = stac.convert(ann, cfg, calibration=tiny_calibration())
    ids = tiny_calibration(seed=7, n=1, length=40)[0][None]
    with torch.no_grad():
        a, s = ann(ids).logits, snn(ids).logits
    assert (a - s).abs().max() < tol
    assert not torch.equal(a, s)  # really quantised by spikes


def test_fewer_timesteps_mean_a_coarser_snn(kind):
    ann = tiny_ann(kind)
    ids = tiny_calibration(seed=7, n=1, length=40)[0][None]
    errors = []
    for T in (3, 6, 12):
        snn = stac.convert(ann, stac.SpikingConfig(timesteps=T), calibration=tiny_calibration())
        with torch.no_grad():
            errors.append((ann(ids).logits - snn(ids).logits).abs().mean().item())
    assert errors[0] > errors[1] > errors[2]


def test_thresholds_are_margin_times_calibrated_channel_max(kind):
    ann = tiny_ann(kind)
    cal = tiny_calibration()
    snn2 = stac.convert(ann, stac.SpikingConfig(threshold_margin=2.0, threshold_weighting=0.0), calibration=cal)
    snn4 = stac.convert(ann, stac.SpikingConfig(threshold_margin=4.0, threshold_weighting=0.0), calibration=cal)
    for name, enc in snn2.encoders.items():
        assert (enc.threshold > 0).all()
        if name.endswith(PROBABILITY_ENCODER):  # the softmax weights' threshold is 1 whatever the margin
            assert torch.equal(enc.threshold, torch.ones(1)) and torch.equal(snn4.encoders[name].threshold, torch.ones(1))
            continue
        torch.testing.assert_close(snn4.encoders[name].threshold, enc.threshold * 2)


def test_convert_needs_calibration_or_a_tokenizer():
    with pytest.raises(ValueError, match="calibration"):
        stac.convert(tiny_ann("llama"), stac.SpikingConfig())
    with pytest.raises(ValueError, match="at least one"):
        stac.convert(tiny_ann("llama"), stac.SpikingConfig(), calibration=[])
    with pytest.raises(TypeError, match="SpikingConfig"):
        stac.convert(tiny_ann("llama"), {"timesteps": 4}, calibration=tiny_calibration())


def test_layer_overrides_reach_the_encoders_and_survive_save_and_load(kind, tmp_path):
    ann = tiny_ann(kind)
    # float attention: the softmax weights' encoder has no margin to override (threshold 1)
    cfg = stac.SpikingConfig(timesteps=8, threshold_margin=4.0, threshold_weighting=0.0, spiking_attention=False,
                             layer_overrides=[("*.1.*", {"timesteps": 10, "threshold_margin": 2.0})])
    plain = stac.convert(ann, stac.SpikingConfig(timesteps=8, threshold_margin=4.0, threshold_weighting=0.0,
                                                 spiking_attention=False, layer_overrides=()),
                         calibration=tiny_calibration())
    snn = stac.convert(ann, cfg, calibration=tiny_calibration())
    for name, enc in snn.encoders.items():
        second_block = ".1." in name
        assert enc.coding.timesteps == (10 if second_block else 8)
        expected = plain.encoders[name].threshold * (0.5 if second_block else 1.0)
        torch.testing.assert_close(enc.threshold, expected)
    snn.save_pretrained(tmp_path / "snn")
    again = stac.StacForCausalLM.from_pretrained(tmp_path / "snn")
    assert [e.coding.timesteps for e in again.encoders.values()] == [e.coding.timesteps for e in snn.encoders.values()]


def test_the_lm_head_encoder_gets_the_default_wider_margin(kind):
    ann, cal = tiny_ann(kind), tiny_calibration()
    default = stac.SpikingConfig(threshold_weighting=0.0)
    plain = default.replace(layer_overrides=tuple(o for o in default.layer_overrides if o[0] != "encoder_head"))
    wide, narrow = stac.convert(ann, default, calibration=cal), stac.convert(ann, plain, calibration=cal)
    for name, enc in wide.encoders.items():
        factor = 1.6 if name.endswith("encoder_head") else 1.0
        torch.testing.assert_close(enc.threshold, narrow.encoders[name].threshold * factor)


def test_a_denser_step_schedule_gives_the_same_outputs_with_fewer_spikes(kind, tmp_path):
    from stac.energy import EnergyMeter

    ann, cal = tiny_ann(kind), tiny_calibration()
    # the full readout: an early-stopping lm_head (stac.readout) decides on partial sums, which depend on
    # the spelling
    base = stac.SpikingConfig(steps_per_octave=1, head_prune=())
    plain = stac.convert(ann, base, calibration=cal)
    dense = stac.convert(ann, base.replace(steps_per_octave=3), calibration=cal)
    ids = tiny_calibration(seed=9, n=2, length=24)[0][None]

    def run(model):
        with EnergyMeter(model) as meter, torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        return logits, meter.report()

    (plain_logits, plain_report), (dense_logits, dense_report) = run(plain), run(dense)
    assert torch.equal(dense_logits, plain_logits)  # the same levels reach the same synapses
    assert dense_report.spikes < 0.9 * plain_report.spikes
    for name, enc in dense.encoders.items():
        if name.endswith((QUERY_ENCODER, PROBABILITY_ENCODER)):  # the default keeps one step per octave there
            assert enc.coding.steps == plain.encoders[name].coding.steps == enc.coding.timesteps
            continue
        assert enc.coding.steps > plain.encoders[name].coding.steps == enc.coding.timesteps
    dense.save_pretrained(tmp_path / "dense")
    again = stac.StacForCausalLM.from_pretrained(tmp_path / "dense")
    assert again.config.spiking_config.steps_per_octave == 3
    assert torch.equal(run(again)[0], plain_logits)
