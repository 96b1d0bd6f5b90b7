"""Golden values of the neurons' dynamics, and their state handling."""

import pytest
import torch

from stac.neurons import BitPlaneNode, SignedIFNode, bitplane_digits, bitplane_spike_count, step_weights_bitplane


def run(node, x_seq):
    node.reset()
    out = node(torch.tensor(x_seq, dtype=torch.float32))
    return out


def test_signed_if_rate_codes_a_constant_current_with_soft_reset():
    # u = 0.3 for 5 steps, v starts at 0.5: v = 0.8, 1.1->0.1 (spike), 0.4, 0.7, 1.0->0.0 (spike)
    node = SignedIFNode()
    out = run(node, [[0.3]] * 5)
    assert out[:, 0].tolist() == [0, 1, 0, 0, 1]
    assert node.v.item() == pytest.approx(0.0, abs=1e-6)


def test_signed_if_fires_negative_spikes_for_negative_input():
    node = SignedIFNode()
    out = run(node, [[-0.5]] * 4)  # v: 0.0, -0.5 -> +0.5 (spike -1), 0.0, -0.5 -> 0.5 (spike -1)
    assert out[:, 0].tolist() == [0, -1, 0, -1]


def test_signed_if_reset_restores_half_threshold_membrane():
    node = SignedIFNode()
    run(node, [[0.9]] * 3)
    node.reset()
    assert node.v == 0.5


def test_bitplane_binary_digits_of_11_over_four_steps():
    # T=4 weights 8,4,2,1; thresholds 7.5,3.5,1.5,0.5: 11 -> 1,0,1,1
    node = BitPlaneNode(4, sparsity=1.0)
    out = run(node, [[11.0], [0.0], [0.0], [0.0]])
    assert out[:, 0].tolist() == [1, 0, 1, 1]
    assert node.v.item() == 0.0


def test_bitplane_signed_digit_answers_7_with_plus_8_minus_1():
    # c=3/4: thresholds ceil(6)-.5, ceil(3)-.5, ceil(1.5)-.5, ceil(.75)-.5 = 5.5, 2.5, 1.5, 0.5
    node = BitPlaneNode(4, sparsity=0.75)
    out = run(node, [[7.0], [0.0], [0.0], [0.0]])
    assert out[:, 0].tolist() == [1, 0, 0, -1]
    binary = run(BitPlaneNode(4, sparsity=1.0), [[7.0], [0.0], [0.0], [0.0]])
    assert binary[:, 0].tolist() == [0, 1, 1, 1]


def test_bitplane_rounds_half_up_and_saturates():
    node = BitPlaneNode(3, sparsity=1.0)
    out = run(node, [[2.5, -2.5, 2.49, 100.0, -100.0], [0] * 5, [0] * 5])
    weights = torch.tensor([4.0, 2.0, 1.0]).view(3, 1)
    assert (out * weights).sum(0).tolist() == [3, -2, 2, 7, -7]


def test_bitplane_refuses_to_run_past_its_timesteps():
    node = BitPlaneNode(2)
    node.reset()
    node(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="reset"):
        node(torch.zeros(1, 3))


def test_integer_digits_mirror_the_neuron():
    values = torch.arange(-15, 16)
    for sparsity in (1.0, 0.75):
        node = BitPlaneNode(4, sparsity)
        node.reset()
        seq = torch.zeros(4, values.numel())
        seq[0] = values.float()
        train = node(seq)
        assert torch.equal(train.to(torch.int8), bitplane_digits(values, 4, sparsity))
        assert torch.equal(train.abs().sum(0).long(), bitplane_spike_count(values, 4, sparsity))


def test_signed_digit_never_needs_more_spikes_than_binary_on_average():
    values = torch.arange(-4095, 4096)
    binary = bitplane_spike_count(values, 12, 1.0).float().mean()
    signed = bitplane_spike_count(values, 12, 0.75).float().mean()
    assert signed < 0.9 * binary


def test_three_steps_per_octave_answer_3_and_6_with_one_spike_each():
    # m=2, T=3: weights round(2^(i/2)) for i < 6 = 6, 4, 3, 2, 1 (distinct, largest first)
    node = BitPlaneNode(3, sparsity=0.85, steps_per_octave=2)
    assert node.step_weights == [6, 4, 3, 2, 1] and node.steps == 5
    out = run(node, [[3.0, 6.0, 7.0, -5.0]] + [[0.0] * 4] * 4)
    assert out.abs().sum(0).tolist() == [1, 1, 2, 2]  # plain signed digits: 4-1, 8-2, 8-1, -4-1 (2 each)
    weights = torch.tensor(node.step_weights, dtype=torch.float32).view(-1, 1)
    assert (out * weights).sum(0).tolist() == [3, 6, 7, -5]
    assert bitplane_spike_count(torch.tensor([3, 6]), 3, 1.0).tolist() == [2, 2]


def test_a_dense_schedule_needs_a_firing_fraction_below_one():
    with pytest.raises(ValueError, match="sparsity < 1"):
        BitPlaneNode(6, sparsity=1.0, steps_per_octave=3)


@pytest.mark.parametrize("octave,sparsity", [(2, 0.85), (3, 0.9), (4, 0.93), (3, 0.6), (7, 0.93), (8, 0.95)])
def test_integer_digits_mirror_the_neuron_on_dense_schedules(octave, sparsity):
    values = torch.arange(-255, 256)
    node = BitPlaneNode(8, sparsity, steps_per_octave=octave)
    train = node.run_pulse(values.float())
    assert torch.equal(train.to(torch.int8), bitplane_digits(values, 8, sparsity, octave))
    assert torch.equal(train.abs().sum(0).long(), bitplane_spike_count(values, 8, sparsity, octave))
    weights = torch.tensor(node.step_weights, dtype=torch.float32).view(-1, 1)
    assert torch.equal((train * weights).sum(0), values.float())


@pytest.mark.parametrize("octave", [1, 2, 3, 4, 5, 6, 7, 8])
def test_every_schedule_codes_every_level_exactly(octave):
    from stac.coding import SignedDigitCoding

    sparsity = SignedDigitCoding.SPARSITY_BY_STEPS_PER_OCTAVE[octave]
    for timesteps in range(1, 13):  # the default runs T = 9-12
        values = torch.arange(-(2 ** timesteps - 1), 2 ** timesteps)
        for coarse in range(timesteps + 2):
            digits = bitplane_digits(values, timesteps, sparsity, octave, coarse)
            weights = torch.tensor(step_weights_bitplane(timesteps, octave, coarse)).view(-1, 1)
            assert torch.equal((digits.long() * weights).sum(0), values), (timesteps, coarse)
