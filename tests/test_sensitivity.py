"""The Fisher-diagonal sensitivity pass and the thresholds it sets (threshold_rule="sensitivity")."""

import pytest
import torch

import stac
from stac import thresholds
from stac.architectures import architecture_for, synapse_weights
from stac.calibration import channel_max
from stac.hub import model_card
from stac.frontier import config_name, config_spec, parse_config
from stac.sensitivity import fisher_diagonal
from tests.conftest import tiny_ann, tiny_calibration


def _kl(p_logits, q_logits):
    p = torch.log_softmax(p_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1).mean()


def test_the_pass_covers_every_encoder_input_and_leaves_the_ann_as_it_was(kind):
    ann = tiny_ann(kind)
    arch = architecture_for(ann.config.model_type)
    calibration = tiny_calibration()
    ann.lm_head.weight.requires_grad_(True)
    before = ann(input_ids=calibration[0][None]).logits.detach()
    flags = {n: p.requires_grad for n, p in ann.named_parameters()}
    s = fisher_diagonal(ann, arch, calibration)
    maxima = {k: v for k, v in channel_max(ann, arch, calibration).items()
              if not k.endswith(".encoder_q")}  # the attention's queries drive keys: margin rule
    assert set(s.fisher) == set(s.mean_square) == set(maxima)
    for key in maxima:
        assert s.fisher[key].shape == s.mean_square[key].shape == maxima[key].shape
        assert torch.isfinite(s.fisher[key]).all() and (s.fisher[key] >= 0).all() and s.fisher[key].sum() > 0
        assert (s.mean_square[key] <= maxima[key].float() ** 2 + 1e-6).all()
    assert s.tokens == sum(x.numel() for x in calibration)
    assert {n: p.requires_grad for n, p in ann.named_parameters()} == flags
    assert all(p.grad is None for p in ann.parameters())
    assert not ann.training
    assert torch.equal(ann(input_ids=calibration[0][None]).logits.detach(), before)
    again = fisher_diagonal(ann, arch, calibration)  # seeded: the same samples, the same estimate
    assert all(torch.equal(again.fisher[k], s.fisher[k]) for k in s.fisher)
    with pytest.raises(ValueError, match="at least one"):
        fisher_diagonal(ann, arch, [])


def test_every_sequence_weighs_the_same_whatever_its_length():
    ann = tiny_ann("llama")
    arch = architecture_for("llama")
    calibration = [tiny_calibration(n=1, length=64)[0], tiny_calibration(seed=2, n=1, length=8)[0]]
    seen = []
    h = ann.lm_head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for ids in calibration:
            ann(input_ids=ids[None])
    h.remove()
    s = fisher_diagonal(ann, arch, calibration)
    per_sequence = (seen[0].pow(2).mean(0) + seen[1].pow(2).mean(0)) / 2
    assert torch.allclose(s.mean_square["encoder_head"], per_sequence, rtol=1e-5)
    assert not torch.allclose(s.mean_square["encoder_head"], torch.cat(seen).pow(2).mean(0), rtol=1e-3)
    assert s.tokens == 72


def test_the_fisher_predicts_the_kl_that_noise_at_an_encoder_input_causes(kind):
    """KL(p || p with Gaussian noise of variance v on one encoder's input) ~ v/2 sum_c F_c per position."""
    ann = tiny_ann(kind)
    arch = architecture_for(ann.config.model_type)
    calibration = tiny_calibration(n=8)
    s = fisher_diagonal(ann, arch, calibration)
    key = "encoder_head"
    layer = ann.lm_head
    variance = 1e-4 * float(s.mean_square[key].mean())
    g = torch.Generator().manual_seed(5)
    noisy = [False]

    def add_noise(module, args):
        if noisy[0]:
            return (args[0] + torch.randn(args[0].shape, generator=g) * variance ** 0.5,)

    handle = layer.register_forward_pre_hook(add_noise)
    kls = []
    with torch.no_grad():
        for ids in calibration:
            noisy[0] = False
            clean_logits = ann(input_ids=ids[None]).logits[0]
            noisy[0] = True
            for _ in range(4):
                kls.append(_kl(clean_logits, ann(input_ids=ids[None]).logits[0]))
    handle.remove()
    measured = float(torch.stack(kls).mean())
    predicted = 0.5 * variance * float(s.fisher[key].sum())
    assert 0.6 < measured / predicted < 1.6, (measured, predicted)


def test_predicted_kl_is_half_the_fisher_weighted_noise_capped_by_the_signal():
    f = torch.tensor([2.0, 1.0, 4.0])
    msq = torch.tensor([1.0, 1.0, 1e-3])
    step = torch.tensor([0.6, 1.2, 1.2])
    noise = [0.36 / 12, 1.44 / 12, 1e-3]  # the last channel rounds to 0: its noise is its mean square
    expected = 0.5 * sum(a * b for a, b in zip(f.tolist(), noise))
    assert thresholds.predicted_kl(f, msq, step) == pytest.approx(expected, rel=1e-6)  # float32 inputs


def _problem():
    torch.manual_seed(0)
    fisher = {"a": torch.rand(40) + 0.01, "b": torch.rand(30) * 10 + 0.01}
    square = {"a": torch.full((40,), 100.0), "b": torch.full((30,), 100.0)}
    fanout = {"a": 300, "b": 50}
    floor = {"a": torch.full((40,), 1e-3), "b": torch.full((30,), 1e-3)}
    levels = {"a": 1023, "b": 4095}
    return fisher, square, fanout, floor, levels


def test_sensitivity_steps_follow_sqrt_fanout_over_fisher_and_meet_the_budget():
    fisher, square, fanout, floor, levels = _problem()
    th, kl = thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=1e-3)
    assert kl == pytest.approx(1e-3, rel=1e-4)
    got = sum(thresholds.predicted_kl(fisher[n], square[n], th[n] / levels[n]) for n in th)
    assert got == pytest.approx(1e-3, rel=1e-4)
    k = [th[n] / levels[n] / torch.sqrt(fanout[n] / fisher[n]) for n in th]  # one k for every channel
    k = torch.cat(k)
    assert torch.allclose(k, k[0].expand_as(k), rtol=1e-4)
    looser, kl2 = thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=4e-3)
    assert all((looser[n] > th[n]).all() for n in th)  # a larger budget: coarser steps everywhere
    assert all(torch.allclose(looser[n], 2 * th[n], rtol=1e-4) for n in th)  # KL ~ step^2


def test_sensitivity_thresholds_keep_their_floor_and_reject_budgets_out_of_reach():
    fisher, square, fanout, floor, levels = _problem()
    floor = {n: torch.full_like(f, 5.0) for n, f in floor.items()}
    th, kl = thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=1e-4)
    assert all((th[n] >= floor[n]).all() for n in th)
    assert kl <= 1e-4 * (1 + 1e-6)
    finest = sum(thresholds.predicted_kl(fisher[n], square[n], floor[n] / levels[n]) for n in th)
    with pytest.raises(ValueError, match="kl_budget .* below the smallest predicted KL"):
        thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=finest / 2)
    with pytest.raises(ValueError, match="every encoder could stay silent"):
        thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=1e9)
    with pytest.raises(ValueError, match="positive"):
        thresholds.sensitivity_thresholds(fisher, square, fanout, floor, levels, kl_budget=0.0)


def test_convert_by_sensitivity_sets_the_budgeted_thresholds_and_keeps_the_floor(kind):
    ann = tiny_ann(kind)
    arch = architecture_for(ann.config.model_type)
    calibration = tiny_calibration()
    config = stac.SpikingConfig(timesteps=12, threshold_margin=4.0, layer_overrides=(), spiking_attention=False,
                                threshold_rule="sensitivity", kl_budget=0.01)
    snn = stac.convert(ann, config, calibration=calibration)
    maxima = channel_max(ann, arch, calibration)
    s = fisher_diagonal(ann, arch, calibration)
    predicted = 0.0
    for name, encoder in snn.encoders.items():
        key = name.removeprefix("model.")
        assert (encoder.threshold >= 4.0 * maxima[key] * (1 - 1e-6)).all(), key
        predicted += thresholds.predicted_kl(s.fisher[key], s.mean_square[key],
                                             encoder.threshold / encoder.coding.max_level)
    assert predicted == pytest.approx(0.01, rel=1e-3)
    # the given statistics give the same model as the calibration text
    again = stac.convert(ann, config, stats=maxima, sensitivity=s)
    assert all(torch.equal(a.threshold, b.threshold) for a, b in zip(snn.encoders.values(), again.encoders.values()))
    # a tighter budget gives a closer model
    tight = stac.convert(ann, config.replace(kl_budget=0.001), stats=maxima, sensitivity=s)
    ids = calibration[0][None]
    with torch.no_grad():
        ref = ann(input_ids=ids).logits[0]
        assert _kl(ref, tight(input_ids=ids).logits[0]) < _kl(ref, snn(input_ids=ids).logits[0])
    with pytest.raises(ValueError, match="kl_budget"):
        stac.convert(ann, config.replace(kl_budget=1e-30), stats=maxima, sensitivity=s)


def test_a_model_converted_by_sensitivity_saves_and_loads_with_its_thresholds(tmp_path):
    ann = tiny_ann("llama")
    config = stac.SpikingConfig(threshold_rule="sensitivity", kl_budget=0.02)
    snn = stac.convert(ann, config, calibration=tiny_calibration())
    snn.save_pretrained(tmp_path)
    loaded = stac.StacForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.spiking_config.threshold_rule == "sensitivity"
    assert loaded.config.spiking_config.kl_budget == 0.02
    card = model_card(loaded.config, "alice/tiny-snn").text
    assert "| thresholds by measured sensitivity, predicted KL budget | `0.02` |" in card
    assert "predicted KL budget" not in model_card(stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration()).config, "a/b").text
    ids = tiny_calibration()[0][None]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, snn(input_ids=ids).logits)


def test_the_rule_and_budget_are_validated_specced_and_absent_in_old_configs():
    with pytest.raises(ValueError, match="unknown threshold rule 'fisher'"):
        stac.SpikingConfig(threshold_rule="fisher")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kl_budget"):
            stac.SpikingConfig(kl_budget=bad)
    d = stac.SpikingConfig().to_dict()
    del d["threshold_rule"], d["kl_budget"]
    assert stac.SpikingConfig.from_dict(d).threshold_rule == "margin"
    c = parse_config("signed_digit:12:4:kl=0.002")
    assert (c.threshold_rule, c.kl_budget, c.timesteps, c.threshold_margin) == ("sensitivity", 0.002, 12, 4.0)
    assert parse_config(config_spec(c)) == c
    assert config_name(c).endswith("+kl0.002")
