"""stac.readout: the lm_head whose trailing outputs stop after a coarse first stage."""

import pytest
import torch

import stac
from stac import kernels, readout
from stac.energy import EnergyMeter
from stac.layers import SpikingLinear
from stac.neurons import bitplane_digits
from stac.readout import SpikingReadout

from conftest import tiny_ann, tiny_calibration

IDS = torch.tensor([[5, 17, 42, 8, 63, 21, 9, 77, 30, 14, 50, 3]])


def _pair(kind, bits=5.0, margin=1e9, stages=None, **changes):
    """(default SNN, the same SNN with a pruning readout) from one calibration: identical thresholds."""
    ann = tiny_ann(kind)
    calibration = tiny_calibration()
    full = stac.convert(ann, stac.SpikingConfig(head_prune=(), **changes), calibration=calibration)
    pruned = stac.convert(ann, stac.SpikingConfig(head_prune=stages or ((bits, margin),), **changes),
                          calibration=calibration)
    return full, pruned


def _margin_near(coarse, share):
    """A margin that stops about ``share`` of the outputs, midway between two neighbouring gaps to the best
    coarse logit (float differences between engines cannot move an output across it)."""
    gaps = (coarse.amax(-1, keepdim=True) - coarse).flatten().sort().values
    k = int((1 - share) * (gaps.numel() - 1))
    window = torch.arange(max(k - 20, 0), min(k + 20, gaps.numel() - 1))
    i = window[(gaps[window + 1] - gaps[window]).argmax()]
    return float((gaps[i] + gaps[i + 1]) / 2)


def _split(snn, bits=5.0):
    coding = snn.model.lm_head.encoder.coding
    return coding.steps_above(2.0 ** (coding.timesteps - bits))


@torch.no_grad()
def _head_levels(snn, ids=IDS):
    """The lm_head input's integer levels on ``ids`` and its spike train by stac.neurons.bitplane_digits,
    with the head's step weights, unit and weights: everything to recompute the readout here."""
    head = snn.model.lm_head
    seen = []
    handle = head.encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    snn(input_ids=ids)
    handle.remove()
    enc, c = head.encoder, head.encoder.coding
    levels = c.levels(c.normalise(seen[-1], enc.threshold.float()))
    digits = bitplane_digits(levels, c.timesteps, c.sparsity, c.steps_per_octave, c.coarse_octaves).float()
    return levels, digits, c.step_weights(), c.unit(enc.threshold.float()), head.base_layer.weight


@torch.no_grad()
def _coarse_and_full(snn, ids=IDS, bits=5.0):
    """The lm_head's coarse logits (first stage only) and full logits, computed here from the head's input
    on integers."""
    levels, digits, w, unit, weight = _head_levels(snn, ids)
    split = _split(snn, bits)
    coarse_levels = torch.tensordot(w[:split], digits[:split], dims=1)
    return (coarse_levels * unit) @ weight.t(), (levels * unit) @ weight.t(), digits


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_a_readout_that_keeps_every_output_computes_the_lm_head(kind, engine):
    full, pruned = _pair(kind)
    assert type(pruned.model.lm_head) is SpikingReadout and type(full.model.lm_head) is SpikingLinear
    full.set_engine(engine)
    pruned.set_engine(engine)
    with torch.no_grad():
        a, b = full(input_ids=IDS).logits, pruned(input_ids=IDS).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    assert bool((pruned.model.lm_head.last_kept[0] == a.shape[-1]).all())


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_trailing_outputs_keep_their_coarse_value_and_the_rest_are_exact(kind, engine):
    full, _ = _pair(kind)
    coarse, exact, _ = _coarse_and_full(full)
    gap = coarse.amax(-1, keepdim=True) - coarse
    margin = _margin_near(coarse, 0.5)
    _, pruned = _pair(kind, margin=margin)
    pruned.set_engine(engine)
    with torch.no_grad():
        out = pruned(input_ids=IDS).logits
    kept = gap <= margin
    assert 0 < int(kept.sum()) < kept.numel()
    torch.testing.assert_close(out[kept], exact[kept], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[~kept], coarse[~kept], rtol=1e-5, atol=1e-5)
    assert torch.equal(pruned.model.lm_head.last_kept[0], kept.sum(-1))


def test_the_two_engines_agree_when_outputs_stop(kind):
    full, _ = _pair(kind)
    coarse, _, _ = _coarse_and_full(full)
    margin = _margin_near(coarse, 0.8)
    _, pruned = _pair(kind, margin=margin)
    with torch.no_grad():
        a = pruned(input_ids=IDS).logits
        kept_a = pruned.model.lm_head.last_kept[0].clone()
        pruned.set_engine("time_stepped")
        b = pruned(input_ids=IDS).logits
    assert torch.equal(pruned.model.lm_head.last_kept[0], kept_a)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not kernels.available(), reason="no compiled kernels")
def test_the_row_kernel_computes_what_the_matmul_of_the_kept_rows_does(kind, monkeypatch):
    """Closed form at decode sizes reads the kept rows in place (stac.kernels.rows_linear); above the size
    limit it multiplies the gathered rows: same outputs kept, same logits up to float order."""
    full, _ = _pair(kind)
    coarse, _, _ = _coarse_and_full(full)
    _, pruned = _pair(kind, margin=_margin_near(coarse, 0.5))
    calls = []
    monkeypatch.setattr(readout, "_kernel_rows_linear", lambda *a: calls.append(1) or kernels.rows_linear(*a))
    with torch.no_grad():
        a = pruned(input_ids=IDS).logits
        kept_a = pruned.model.lm_head.last_kept[0].clone()
        assert len(calls) == 2  # the first segment through every output, the second through the kept ones
        monkeypatch.setattr(readout, "_ROW_KERNEL_POSITIONS", 0)
        b = pruned(input_ids=IDS).logits
    assert len(calls) == 2
    assert torch.equal(pruned.model.lm_head.last_kept[0], kept_a)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_margin_above_twice_the_remaining_contribution_keeps_the_argmax(kind):
    """An output that trails by more than twice the largest possible change of the later spikes (bounded by
    |W| times the neurons' remaining values) can never overtake: the argmax must match the full readout."""
    full, _ = _pair(kind)
    coarse, exact, _ = _coarse_and_full(full)
    bound = float((exact - coarse).abs().max())
    _, pruned = _pair(kind, margin=2 * bound + 1e-6)
    with torch.no_grad():
        out = pruned(input_ids=IDS).logits
    assert torch.equal(out.argmax(-1), exact.argmax(-1))
    assert int(pruned.model.lm_head.last_kept[0].min()) < exact.shape[-1] or bound == 0


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_the_meter_counts_only_the_synapses_a_later_spike_reaches(kind, engine):
    full, _ = _pair(kind)
    coarse, _, digits = _coarse_and_full(full)
    margin = _margin_near(coarse, 0.5)
    _, pruned = _pair(kind, margin=margin)
    pruned.set_engine(engine)
    head = pruned.model.lm_head
    with EnergyMeter(pruned) as meter, torch.no_grad():
        pruned(input_ids=IDS)
    layer = next(lay for lay in meter.report().per_layer if lay.name.endswith("encoder_head"))
    vocab, split, steps = coarse.shape[-1], head.splits[0], digits.shape[0]
    per_step = digits.abs().sum(-1)[:, 0]  # [steps, positions]
    kept = (coarse.amax(-1, keepdim=True) - coarse <= margin).sum(-1)[0]
    assert layer.synops == int(per_step[:split].sum()) * vocab + int((per_step[split:].sum(0) * kept).sum())
    positions = IDS.shape[1]
    neurons = positions * head.encoder.channels
    spikes = int(per_step.sum())
    normalise = stac.energy.NORMALISE_OPS
    assert layer.elementwise_ops == (neurons * (normalise + steps) + spikes  # the neurons
                                     + positions * vocab * (split - 1) + int(kept.sum()) * (steps - split)
                                     + 2 * positions * vocab)  # accumulators, then the decision
    with EnergyMeter(full) as meter, torch.no_grad():
        full(input_ids=IDS)
    dense = next(lay for lay in meter.report().per_layer if lay.name.endswith("encoder_head"))
    assert layer.synops < dense.synops


def test_partial_levels_are_the_first_steps_of_the_train():
    coding = stac.coding.make_coding("signed_digit", 10, 8, 4)
    levels = torch.arange(-1023, 1024, dtype=torch.float32)
    digits = bitplane_digits(levels, 10, coding.sparsity, 8, 4).float()
    w = coding.step_weights()
    for k in (0, 1, 5, 23, coding.steps):
        assert torch.equal(coding.partial_levels(levels, k), torch.tensordot(w[:k], digits[:k], dims=1))
        assert torch.equal(coding._partial_by_steps(levels, k), coding.partial_levels(levels, k))  # no table
    assert coding.steps_above(12) == int((w >= 12).sum()) and coding.steps_above(1024) == 0
    assert torch.equal(coding.spikes_per_step(levels[None]), digits.abs().sum(-1).to(torch.int64)[:, None])


def test_save_and_load_keep_the_readout(tmp_path, kind):
    _, pruned = _pair(kind, margin=0.01)
    with torch.no_grad():
        before = pruned(input_ids=IDS).logits
    pruned.save_pretrained(tmp_path)
    loaded = stac.StacForCausalLM.from_pretrained(tmp_path)
    assert type(loaded.model.lm_head) is SpikingReadout
    assert loaded.config.spiking_config.head_prune == ((5.0, 0.01),)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("changes, message", [
    (dict(head_prune=((5.0, 10.0),), spiking_head=False), "spiking_head"),
    (dict(head_prune=((10.0, 10.0),)), r"rise through \[1, T\)"),
    (dict(head_prune=((0.5, 10.0),)), r"rise through \[1, T\)"),
    (dict(head_prune=((6.0, 10.0), (5.0, 8.0))), "rise"),
    (dict(head_prune=((5.0, 0.0),)), "positive"),
    (dict(head_prune=(("5", 10.0),)), "numbers"),
    (dict(head_prune=5.0), "pairs"),
    (dict(head_prune=((5.0, 10.0),), layer_overrides=(("encoder_head", {"coding": "rate"}),)), "most significant"),
])
def test_bad_prune_settings_are_refused(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        stac.SpikingConfig(**changes)


def test_greedy_generation_with_the_cache_matches_without():
    _, pruned = _pair("llama", margin=0.01)
    prompt = IDS[:, :6]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def _staged_reference(snn, stages):
    """The logits of a readout with decisions at ``stages``, computed here from the head's input levels: each
    output adds every segment of steps while it runs and keeps its value when it stops."""
    _, digits, w, unit, weight = _head_levels(snn)
    bounds = [0] + [_split(snn, b) for b, _ in stages] + [digits.shape[0]]
    value, running, kept = 0, None, []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        part = (torch.tensordot(w[a:b], digits[a:b], dims=1) * unit) @ weight.t()
        value = part + value if running is None else torch.where(running, value + part, value)
        if i < len(stages):
            best = value if running is None else value.masked_fill(~running, -float("inf"))
            now = value >= best.amax(-1, keepdim=True) - stages[i][1]
            running = now if running is None else running & now
            kept.append(running.sum(-1))
    return value, kept, digits, bounds


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_several_decisions_stop_outputs_in_turn_and_are_counted(kind, engine):
    full, _ = _pair(kind)
    coarse, _, _ = _coarse_and_full(full, bits=5.0)
    first = _margin_near(coarse, 0.3)
    stages = ((5.0, first), (7.0, first / 3))
    reference, kept, digits, bounds = _staged_reference(full, stages)
    _, pruned = _pair(kind, stages=stages)
    pruned.set_engine(engine)
    with EnergyMeter(pruned) as meter, torch.no_grad():
        out = pruned(input_ids=IDS).logits
    head = pruned.model.lm_head
    assert [int(k.sum()) for k in head.last_kept] == [int(k.sum()) for k in kept]
    assert int(kept[0].sum()) > int(kept[1].sum()) > 0
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    layer = next(lay for lay in meter.report().per_layer if lay.name.endswith("encoder_head"))
    vocab = out.shape[-1]
    per_step = digits.abs().sum(-1)[:, 0]  # [steps, positions]
    running = [torch.full_like(kept[0][0], vocab)] + [k[0] for k in kept]
    synops = sum(int((per_step[a:b].sum(0) * r).sum()) for (a, b), r in zip(zip(bounds, bounds[1:]), running))
    assert layer.synops == synops
