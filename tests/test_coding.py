"""Every coding's closed form predicts its neuron's spike train exactly."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stac.coding import CODINGS, make_coding

# Every coding, plus signed_digit's denser step schedules (steps_per_octave 2-4).
VARIANTS = [(name, 1) for name in sorted(CODINGS)] + [("signed_digit", m) for m in (2, 3, 4)]
VARIANTS += [("signed_digit", (4, 3)), ("signed_digit", (3, 1))]  # (m, top octaves at one step each)


def coding_of(name, timesteps, octave):
    m, top = octave if isinstance(octave, tuple) else (octave, 0)
    return make_coding(name, timesteps, m, top)


def simulate(coding, u):
    node = coding.make_node()
    node.reset()
    train = node(coding.input_sequence(u))
    node.reset()
    return train


@pytest.mark.parametrize("name,octave", VARIANTS)
@pytest.mark.parametrize("timesteps", [1, 2, 5, 12])
def test_train_sums_to_closed_form_levels_and_counts(name, octave, timesteps):
    coding = coding_of(name, timesteps, octave)
    torch.manual_seed(timesteps)
    threshold = torch.rand(32) + 0.05
    x = torch.randn(200, 32) * 0.5
    x[0] = (torch.arange(32) - 16) * coding.unit(threshold) * 0.5  # exact half levels: ties
    u = coding.normalise(x, threshold)
    train = simulate(coding, u)
    assert set(train.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert train.shape[0] == coding.steps == coding.step_weights().numel()
    levels = coding.levels(u)
    assert torch.equal((train * coding.step_weights().view(-1, 1, 1)).sum(0), levels)
    assert torch.equal(train.abs().sum(0).long(), coding.spike_count(levels))
    assert levels.abs().max() <= coding.max_level


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(VARIANTS), st.integers(1, 14),
       st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40),
       st.floats(1e-3, 50.0))
def test_closed_form_matches_neurons_for_any_input(variant, timesteps, values, threshold):
    coding = coding_of(variant[0], timesteps, variant[1])
    x = torch.tensor(values, dtype=torch.float32)
    th = torch.full_like(x, threshold)
    u = coding.normalise(x, th)
    train = simulate(coding, u)
    levels = coding.levels(u)
    assert torch.equal((train * coding.step_weights().view(-1, 1)).sum(0), levels)
    assert torch.equal(train.abs().sum(0).long(), coding.spike_count(levels))


@pytest.mark.parametrize("name", ["bitplane", "signed_digit"])
def test_bitplane_quantisation_error_is_at_most_half_a_level_inside_the_range(name):
    coding = make_coding(name, 10)
    threshold = torch.full((1000,), 2.0)
    x = (torch.rand(1000) * 2 - 1) * 2.0
    decoded = coding.levels(coding.normalise(x, threshold)) * coding.unit(threshold)
    assert (decoded - x).abs().max() <= coding.unit(threshold)[0] / 2 + 1e-6


def test_values_beyond_the_threshold_saturate():
    coding = make_coding("signed_digit", 6)
    th = torch.ones(2)
    levels = coding.levels(coding.normalise(torch.tensor([50.0, -50.0]), th))
    assert levels.tolist() == [63, -63]


def test_unknown_coding_and_bad_timesteps_are_refused():
    with pytest.raises(ValueError, match="known codings"):
        make_coding("morse", 4)
    with pytest.raises(ValueError, match="timesteps"):
        make_coding("bitplane", 0)
    with pytest.raises(ValueError, match="timesteps"):
        make_coding("bitplane", 64)
    with pytest.raises(TypeError):
        make_coding("rate", 2.5)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(VARIANTS), st.integers(1, 14),
       st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40))
def test_fused_multistep_run_equals_the_step_by_step_neuron(variant, timesteps, values):
    coding = coding_of(variant[0], timesteps, variant[1])
    u = coding.normalise(torch.tensor(values, dtype=torch.float32), torch.full((len(values),), 3.0))
    node = coding.make_node()
    node.reset()
    fused = coding.simulate(node, u)
    fused_v = node.v.clone()
    reference = simulate(coding, u)
    node.reset()
    node(coding.input_sequence(u))
    assert torch.equal(fused, reference)
    assert torch.equal(fused_v, node.v)


@pytest.mark.parametrize("name", sorted(CODINGS))
def test_fused_closed_form_equals_normalise_then_levels(name):
    coding = make_coding(name, 10)
    torch.manual_seed(1)
    threshold = torch.rand(64) + 0.05
    x = torch.randn(50, 64) * 2
    x[0] = (torch.arange(64) - 32) * coding.unit(threshold) * 0.5  # ties
    assert torch.equal(coding.closed_form(x, threshold, coding.unit(threshold)),
                       coding.levels(coding.normalise(x, threshold)))


@pytest.mark.parametrize("octave", [2, 3, 4, (4, 3)])
def test_denser_schedules_code_the_same_levels_with_fewer_spikes_over_more_steps(octave):
    base = make_coding("signed_digit", 10)
    dense = coding_of("signed_digit", 10, octave)
    torch.manual_seed(10)
    threshold = torch.rand(64) + 0.05
    x = torch.distributions.Laplace(0.0, 0.05).sample((400, 64))  # heavy-tailed, like encoder inputs
    unit = base.unit(threshold)
    assert torch.equal(dense.unit(threshold), unit) and dense.max_level == base.max_level
    levels = base.closed_form(x, threshold, unit)
    assert torch.equal(dense.closed_form(x, threshold, unit), levels)  # the same values reach the synapses
    every = torch.arange(-base.max_level, base.max_level + 1, dtype=torch.float32)
    train = dense.simulate(dense.make_node(), every)  # every level is exactly representable
    assert torch.equal((train * dense.step_weights().view(-1, 1)).sum(0), every)
    assert dense.steps > base.steps == 10
    assert dense.spike_count(levels).float().mean() < 0.9 * base.spike_count(levels).float().mean()


def test_denser_schedules_exist_for_signed_digit_only_and_in_range():
    assert make_coding("signed_digit", 4, 2).step_weights().tolist() == [11, 8, 6, 4, 3, 2, 1]
    # the top 3 octaves of 6 at one step each, 4 steps per octave below
    assert make_coding("signed_digit", 6, 4, 3).step_weights().tolist() == [32, 16, 8, 7, 6, 5, 4, 3, 2, 1]
    for name in ("rate", "bitplane"):
        with pytest.raises(ValueError, match="signed_digit only"):
            make_coding(name, 8, 2)
    with pytest.raises(ValueError, match="steps_per_octave"):
        make_coding("signed_digit", 8, 9)
    with pytest.raises(ValueError, match="steps_per_octave"):
        make_coding("signed_digit", 8, 0)
    with pytest.raises(TypeError, match="steps_per_octave"):
        make_coding("signed_digit", 8, 2.0)
