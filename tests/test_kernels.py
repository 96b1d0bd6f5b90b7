"""The compiled C loops compute exactly what the TorchScript neurons and closed form compute."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stac import kernels
from stac.coding import _bitplane_levels, make_coding
from stac.neurons import BitPlaneNode, _bitplane_multistep, bitplane_spike_count

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"no kernels: {kernels.unavailable_reason()}")

finite = st.floats(-1e5, 1e5, allow_nan=False, width=32)


def _awkward(unit: torch.Tensor, max_level: int) -> torch.Tensor:
    """Inputs on and next to every rounding tie, at and past the clamp, zeros of both signs."""
    k = torch.arange(-6, 7, dtype=torch.float32)
    ties = (k + 0.5)[:, None] * unit
    near = torch.cat([torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1)])
    edge = torch.stack([unit * max_level, -unit * max_level, unit * (max_level + 0.5), unit * 1e6,
                        torch.zeros_like(unit), -torch.zeros_like(unit)])
    return torch.cat([ties, near, edge])


@pytest.mark.parametrize("timesteps", [1, 4, 10, 12])
def test_closed_form_kernel_equals_the_torchscript_closed_form_bit_for_bit(timesteps):
    coding = make_coding("signed_digit", timesteps)
    torch.manual_seed(timesteps)
    unit = coding.unit(torch.rand(48) * 3 + 0.01)
    x = torch.cat([torch.randn(200, 48) * unit * coding.max_level / 3, _awkward(unit, coding.max_level)])
    levels, scaled = kernels.bitplane_levels(x, unit, float(coding.max_level))
    expected = _bitplane_levels(x, unit, float(coding.max_level))
    assert torch.equal(levels, expected)
    assert torch.equal(scaled, expected * unit)
    assert torch.equal(levels.view(-1).view(torch.int32), expected.view(-1).view(torch.int32))  # signs of zero too


def test_closed_form_kernel_propagates_nan_like_torch():
    unit = torch.tensor([0.5, 0.25])
    x = torch.tensor([[float("nan"), 1.0], [float("inf"), -float("inf")]])
    levels, _ = kernels.bitplane_levels(x, unit, 1023.0)
    assert torch.equal(levels.isnan(), _bitplane_levels(x, unit, 1023.0).isnan())
    assert torch.equal(levels[1], torch.tensor([1023.0, -1023.0]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=2), st.integers(1, 70), st.integers(1, 90),
       st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_rows_linear_equals_the_linear_of_the_selected_rows(token_shape, inputs, outputs, share, seed):
    """Any subset of rows (none, some, all, in any order), inputs of any width (16-lane blocks and a tail)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*token_shape, inputs, generator=g)
    weight = torch.randn(outputs, inputs, generator=g)
    rows = torch.randperm(outputs, generator=g)[: round(share * outputs)]
    got = kernels.rows_linear(x, weight, rows)
    assert got.shape == (*token_shape, rows.numel())
    torch.testing.assert_close(got, torch.nn.functional.linear(x, weight[rows]), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.sampled_from([(1, 1), (4, 2), (6, 3)]), st.integers(1, 5), st.integers(1, 40),
       st.integers(1, 40), st.booleans(), st.integers(0, 2**31 - 1))
def test_attention_kernels_equal_the_matmuls_of_stac_attention(batch, heads_kv, new, context, head_dim, masked, seed):
    """Scores -> exp(s - max) and weights -> normalised values, grouped heads, with and without a mask, rows
    with no weight at all except their largest."""
    heads, kv = heads_kv
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, new, heads * head_dim, generator=g)
    k, v = torch.randn(batch, kv, context, head_dim, generator=g), torch.randn(batch, kv, context, head_dim, generator=g)
    mask = torch.where(torch.rand(1, 1, new, context, generator=g) < 0.3, torch.finfo(torch.float32).min, 0.0)
    mask[..., 0] = 0.0  # every row sees one key
    mask = mask if masked else None
    group = heads // kv
    grouped = q.view(batch, new, kv, group, head_dim).permute(0, 2, 3, 1, 4).reshape(batch, kv, group * new, head_dim)
    s = (grouped @ k.transpose(-1, -2)).view(batch, heads, new, context) * 0.3
    s = s if mask is None else s + mask
    expected = torch.exp(s - s.amax(-1, keepdim=True))
    w = kernels.attention_weights(q, k, mask, heads, 0.3)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-5)
    p = torch.where(torch.rand(w.shape, generator=g) < 0.5, w, torch.zeros_like(w))
    p = torch.maximum(p, (w == w.amax(-1, keepdim=True)).float())  # the largest weight is always coded
    out, norm = kernels.attention_values(p, v)
    reference = (p.view(batch, kv, group * new, context) @ v).view(batch, heads, new, head_dim) / p.sum(-1, keepdim=True)
    torch.testing.assert_close(out, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm, p.sum(-1), rtol=1e-6, atol=1e-6)


def test_attention_kernels_reject_shapes_they_cannot_take():
    with pytest.raises(ValueError, match="kv dividing heads"):
        kernels.attention_weights(torch.zeros(1, 1, 8), torch.zeros(1, 3, 5, 4), None, 2, 1.0)
    with pytest.raises(ValueError, match="kv dividing heads"):
        kernels.attention_values(torch.zeros(1, 2, 1, 5), torch.zeros(1, 2, 6, 4))
    with pytest.raises(ValueError, match="float32"):  # a key of another batch would be read past its end
        kernels.attention_weights(torch.zeros(2, 1, 8), torch.zeros(1, 2, 5, 4), None, 2, 1.0)
    with pytest.raises(ValueError, match="float32"):
        kernels.attention_weights(torch.zeros(1, 1, 8), torch.zeros(1, 2, 5, 4, dtype=torch.float16), None, 2, 1.0)
    with pytest.raises(ValueError, match="float32"):
        kernels.attention_values(torch.zeros(1, 2, 1, 5, dtype=torch.float64), torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="float32"):
        kernels.attention_values(torch.zeros(2, 2, 1, 5), torch.zeros(1, 2, 5, 4))


def test_rows_linear_rejects_bad_rows_and_weights():
    with pytest.raises(IndexError, match="row indices"):
        kernels.rows_linear(torch.zeros(1, 4), torch.zeros(3, 4), torch.tensor([3]))
    with pytest.raises(IndexError, match="row indices"):
        kernels.rows_linear(torch.zeros(1, 4), torch.zeros(3, 4), torch.tensor([-1]))
    with pytest.raises(ValueError, match="float32 weight"):
        kernels.rows_linear(torch.zeros(1, 4), torch.zeros(3, 5), torch.tensor([0]))
    with pytest.raises(ValueError, match="float32 weight"):
        kernels.rows_linear(torch.zeros(1, 4, dtype=torch.float64), torch.zeros(3, 4), torch.tensor([0]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.sampled_from([1.0, 0.75]), st.lists(finite, min_size=1, max_size=64))
def test_neuron_kernel_equals_the_torchscript_loop_spike_for_spike(timesteps, sparsity, values):
    node = BitPlaneNode(timesteps, sparsity)
    m = float(2**timesteps - 1)
    u = torch.tensor(values, dtype=torch.float32).clamp(-m, m)
    train, v = kernels.bitplane_run(u, *node.kernel_tables())
    ref_train, ref_v = _bitplane_multistep(u, node._float_weights, node.thresholds)
    assert torch.equal(train, ref_train)
    assert torch.equal(v, ref_v)


def test_neuron_kernel_keeps_the_input_shape_and_leaves_the_node_at_step_T():
    node = BitPlaneNode(6, 0.75)
    u = torch.linspace(-63, 63, 2 * 3 * 5).view(2, 3, 5)
    train = node.run_pulse(u)
    assert train.shape == (6, 2, 3, 5)
    assert node.t == 6
    weights = torch.tensor(node._float_weights)
    assert torch.equal(torch.tensordot(weights, train, dims=1), torch.floor(u + 0.5))


def test_kernels_are_skipped_where_they_cannot_apply():
    x = torch.randn(3, 4)
    assert kernels.applies(x)
    assert not kernels.applies(x.double())
    assert not kernels.applies(x.requires_grad_())
    with torch.no_grad():
        assert kernels.applies(x)


def test_without_kernels_the_encoder_gives_the_same_model_output(tmp_path):
    """STAC_KERNELS=0 (as on a machine with no C compiler) runs the TorchScript path: the same logits (bit for bit
    in the closed form), the same spikes."""
    script = (
        "import torch, stac, sys\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "torch.manual_seed(0)\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,"
        " num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)\n"
        "ann = LlamaForCausalLM(cfg).eval()\n"
        "ids = torch.randint(0, 64, (2, 12))\n"
        "snn = stac.convert(ann, stac.SpikingConfig(timesteps=8), calibration=list(ids))\n"
        "out = {}\n"
        "for engine in ('closed_form', 'time_stepped'):\n"
        "    snn.set_engine(engine)\n"
        "    with torch.no_grad(): out[engine] = snn(input_ids=ids).logits\n"
        "out['kernels'] = torch.tensor(stac.kernels.available())\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = {}
    for flag in ("1", "0"):
        path = tmp_path / f"out{flag}.pt"
        env = {**os.environ, "STAC_KERNELS": flag}
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=300)
        results[flag] = torch.load(path)
    assert bool(results["1"]["kernels"]) and not bool(results["0"]["kernels"])
    assert torch.equal(results["1"]["closed_form"], results["0"]["closed_form"])
    # The time-stepped synapses sum event by event with the kernels, per step without: same sum, other order.
    torch.testing.assert_close(results["1"]["time_stepped"], results["0"]["time_stepped"], rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.lists(st.integers(1, 3), min_size=1, max_size=2), st.integers(1, 40),
       st.integers(1, 150), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_spike_synapse_equals_the_dense_per_step_product(steps, token_shape, inputs, outputs, density, seed):
    """Event by event (tails of output tiles, no spikes at all, every neuron firing) = sum_t w_t (s_t * unit) W^T."""
    g = torch.Generator().manual_seed(seed)
    shape = (steps, *token_shape, inputs)
    r = torch.rand(shape, generator=g)
    train = torch.where(r < density / 2, 1.0, torch.where(r < density, -1.0, 0.0))
    unit = torch.rand(inputs, generator=g) + 0.01
    step_weights = torch.rand(steps, generator=g)
    weight = torch.randn(outputs, inputs, generator=g)
    expected = torch.tensordot(step_weights, torch.nn.functional.linear(train * unit, weight), dims=1)
    got = kernels.spike_synapse(train, unit, step_weights, weight.t().contiguous())
    assert got.shape == (*token_shape, outputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_spike_synapse_handles_prompts_longer_than_its_token_chunks():
    """Tokens go through in chunks of 64 (a bounded event buffer): 150 tokens = two chunks and a remainder."""
    g = torch.Generator().manual_seed(3)
    r = torch.rand(6, 150, 40, generator=g)
    train = torch.where(r < 0.1, 1.0, torch.where(r < 0.2, -1.0, 0.0))
    unit, step_weights, weight = torch.rand(40, generator=g), torch.rand(6, generator=g), torch.randn(70, 40, generator=g)
    expected = torch.tensordot(step_weights, torch.nn.functional.linear(train * unit, weight), dims=1)
    torch.testing.assert_close(kernels.spike_synapse(train, unit, step_weights, weight.t().contiguous()), expected,
                               rtol=1e-5, atol=1e-5)


def test_spike_synapse_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="weights"):
        kernels.spike_synapse(torch.zeros(2, 1, 4), torch.ones(4), torch.ones(2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="CPU"):
        kernels.spike_synapse(torch.zeros(2, 1, 4), torch.ones(4), torch.ones(2), torch.zeros(4, 3, device="meta"))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.sampled_from(["bitplane", "signed_digit"]), st.data())
def test_spike_count_kernel_equals_the_integer_count(timesteps, name, data):
    coding = make_coding(name, timesteps)
    m = coding.max_level
    values = data.draw(st.lists(st.integers(-m, m), min_size=1, max_size=64))
    levels = torch.tensor(values + [m, -m, 0], dtype=torch.float32).view(-1, 1)
    counts = coding.spike_count(levels)  # the kernel path: float32 on the CPU
    assert counts.dtype == torch.int64 and counts.shape == levels.shape
    assert torch.equal(counts, bitplane_spike_count(levels, timesteps, coding.sparsity))


def test_a_model_loaded_with_from_pretrained_runs_the_kernels(tmp_path):
    """from_pretrained builds modules on the meta device: the kernels' tables must still be real CPU memory
    (a plain tensor made in __init__ stayed on meta and crashed the process)."""
    from transformers import AutoModelForCausalLM

    import stac
    from tests.conftest import tiny_ann, tiny_calibration

    snn = stac.convert(tiny_ann("llama"), stac.SpikingConfig(timesteps=8), calibration=tiny_calibration())
    snn.save_pretrained(tmp_path / "snn")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "snn")
    ids = tiny_calibration(seed=5, n=1, length=10)[0][None]
    with torch.no_grad():
        for model in (snn, loaded):
            model.set_engine("time_stepped")
        assert torch.equal(loaded(input_ids=ids).logits, snn(input_ids=ids).logits)
    tables = [enc.node.kernel_tables() for enc in loaded.encoders.values()]
    assert all(t.device.type == "cpu" for pair in tables for t in pair)


def test_kernels_refuse_tensors_not_in_cpu_memory():
    meta = torch.empty(4, device="meta")
    with pytest.raises(ValueError, match="CPU"):
        kernels.bitplane_run(torch.zeros(4), meta, meta)
