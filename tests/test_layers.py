"""Spiking layers: both engines compute the same synaptic sums from the same spikes."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from stac.layers import SpikeEncoder, SpikingLinear


def encoder_for(d, coding="signed_digit", T=12, engine="closed_form", octave=1):
    enc = SpikeEncoder(d, coding, T, engine, octave)
    enc.threshold.copy_(torch.rand(d) * 3 + 0.5)
    return enc


@pytest.mark.parametrize("base", [nn.Linear(32, 16), Conv1D(16, 32)], ids=["linear", "conv1d"])
@pytest.mark.parametrize("coding,octave", [("rate", 1), ("bitplane", 1), ("signed_digit", 1), ("signed_digit", 3)])
def test_time_stepped_and_closed_form_agree(base, coding, octave):
    torch.manual_seed(0)
    enc = encoder_for(32, coding, T=8, octave=octave)
    layer = SpikingLinear(base, enc)
    x = torch.randn(3, 5, 32)
    closed = layer(x)
    counts_closed = enc(x).spike_count()
    enc.engine = "time_stepped"
    stepped = layer(x)
    counts_stepped = enc(x).spike_count()
    assert stepped.shape == closed.shape == (3, 5, 16)
    torch.testing.assert_close(stepped, closed, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts_stepped, counts_closed)
    assert enc(x).train.shape == (enc.coding.steps, 3, 5, 32) and (enc.coding.steps > 8) == (octave > 1)


@pytest.mark.parametrize("base", [nn.Linear(70, 130), Conv1D(130, 70), nn.Linear(70, 130, bias=False)],
                         ids=["linear", "conv1d", "linear-no-bias"])
def test_event_driven_synapses_compute_the_dense_time_stepped_sum(base):
    """Without autograd the time-stepped synapses run event by event in the compiled kernel (where built):
    the dense per-step product, summed in another order, from the same spikes."""
    from stac import kernels

    torch.manual_seed(1)
    enc = encoder_for(70, T=10, engine="time_stepped")
    layer = SpikingLinear(base, enc)
    x = torch.randn(2, 3, 70)
    with torch.no_grad():
        events = layer(x)
        assert layer._event_driven(base, enc(x).train) == kernels.available()
        handle = base.register_forward_hook(lambda *args: None)  # a hook on base_layer: the dense path
        try:
            dense = layer(x)
            assert "_rows" not in layer.__dict__ or kernels.available()
        finally:
            handle.remove()
    torch.testing.assert_close(events, dense, rtol=1e-5, atol=1e-5)
    enc.engine = "closed_form"
    with torch.no_grad():
        torch.testing.assert_close(events, layer(x), rtol=1e-5, atol=1e-5)


def test_the_event_driven_weight_copy_follows_weight_updates_and_is_released():
    torch.manual_seed(2)
    base = nn.Linear(16, 8)
    enc = encoder_for(16, T=6, engine="time_stepped")
    layer = SpikingLinear(base, enc)
    x = torch.randn(4, 16)
    with torch.no_grad():
        before = layer(x)
        base.weight.mul_(2)  # in place: the cached [in, out] copy must not serve the old weights
        enc.forget()
        after = layer(x)
        torch.testing.assert_close(after - base.bias, 2 * (before - base.bias), rtol=1e-5, atol=1e-5)
    layer.release()
    assert "_rows" not in layer.__dict__


def test_spiking_linear_computes_the_base_layer_on_the_decoded_input():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    enc = encoder_for(32)
    x = torch.randn(4, 32)
    torch.testing.assert_close(SpikingLinear(base, enc)(x), base(enc(x).decoded()))


def test_high_resolution_spikes_approximate_the_ann():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    enc = SpikeEncoder(32, "bitplane", 16)
    x = torch.randn(10, 32)
    enc.threshold.copy_(x.abs().amax(0) * 1.01)
    torch.testing.assert_close(SpikingLinear(base, enc)(x), base(x), rtol=0, atol=1e-3)


def test_shared_encoder_spikes_once_per_input_and_never_serves_a_stale_code():
    enc = encoder_for(8)
    x = torch.randn(2, 8)
    assert enc(x) is enc(x)
    x.mul_(2)  # in-place change bumps the version: a new code
    code = enc(x)
    assert torch.equal(code.decoded(), enc(x.clone()).decoded())
    y = torch.randn(2, 8)
    assert enc(y) is not code


def test_unsupported_layer_type_is_refused():
    with pytest.raises(TypeError, match="Conv2d"):
        SpikingLinear(nn.Conv2d(3, 3, 1), encoder_for(3))
