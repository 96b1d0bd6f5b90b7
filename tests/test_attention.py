"""stac.attention: spike-coded queries and attention probabilities (SpikingConfig.spiking_attention)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import stac
from stac import architectures, attention, kernels
from stac.architectures import UnsupportedArchitectureError, attention_modules
from stac.attention import ATTENTION_NAME, PROBABILITY_ENCODER, QUERY_ENCODER, observe_queries
from stac.calibration import channel_max
from stac.energy import EnergyMeter

from conftest import VOCAB, tiny_ann, tiny_calibration

ATTN = stac.SpikingConfig(spiking_attention=True)


def _ids(n=24, seed=5):
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _attentions(model):
    base = model.model if isinstance(model, stac.StacForCausalLM) else model
    return list(attention_modules(base, architectures.architecture_for(base.config.model_type)).values())


def test_every_attention_gets_a_query_and_a_probability_encoder_and_the_registered_implementation(kind):
    snn = stac.convert(tiny_ann(kind), ATTN, calibration=tiny_calibration())
    config = snn.model.config
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    for attention in _attentions(snn):
        assert attention.get_submodule(QUERY_ENCODER).channels == heads * dim
        assert attention.get_submodule(PROBABILITY_ENCODER).channels == 1
        assert torch.equal(attention.get_submodule(PROBABILITY_ENCODER).threshold, torch.ones(1))
        assert attention.config._attn_implementation == ATTENTION_NAME
    float_attention = stac.SpikingConfig(spiking_attention=False)
    assert len(snn.encoders) == len(stac.convert(tiny_ann(kind), float_attention, calibration=tiny_calibration()).encoders) + 2 * config.num_hidden_layers
    assert "attention scores QK^T, softmax and the attention-weighted sum AV" not in snn.config.spiking["float_operations"]


def test_fine_spike_codes_reproduce_float_attention(kind):
    """At T=20 and a tight margin the spike-coded attention is the float one up to the codes' rounding,
    and far closer to it than a coarse code: the spikes carry the computation."""
    ann = tiny_ann(kind)
    ids = _ids()
    fine = dict(timesteps=20, threshold_margin=1.2, layer_overrides=())
    with torch.no_grad():
        reference = stac.convert(ann, stac.SpikingConfig(**fine), calibration=tiny_calibration())(ids).logits
        spiking = stac.convert(ann, stac.SpikingConfig(**fine, spiking_attention=True),
                               calibration=tiny_calibration())(ids).logits
        coarse = stac.convert(ann, stac.SpikingConfig(**fine, spiking_attention=True).replace(
            layer_overrides=(("*.encoder_q", {"timesteps": 3}), ("*.encoder_p", {"timesteps": 3}))),
            calibration=tiny_calibration())(ids).logits
    fine_error = (spiking - reference).abs().max()
    assert fine_error < 1e-3
    assert (coarse - reference).abs().max() > 20 * fine_error


def test_the_attention_output_is_the_values_weighted_by_the_decoded_spikes_and_normalised():
    """One attention call, recomputed by hand from the codes its encoders emitted."""
    snn = stac.convert(tiny_ann("llama"), ATTN, calibration=tiny_calibration())
    attention = _attentions(snn)[0]
    seen = {}
    attention.get_submodule(QUERY_ENCODER).register_forward_hook(lambda m, a, out: seen.update(q=(a[0], out)))
    attention.get_submodule(PROBABILITY_ENCODER).register_forward_hook(lambda m, a, out: seen.update(p=(a[0], out)))
    attention.o_proj.register_forward_pre_hook(lambda m, a: seen.update(out=a[0]))
    values = {}
    attention.v_proj.register_forward_hook(lambda m, a, out: values.update(v=out))
    ids = _ids(10)
    with torch.no_grad():
        snn(ids)
    q_in, q_code = seen["q"]
    w_in, w_code = seen["p"]
    q_hat = q_code.levels * q_code.unit
    assert torch.equal(q_code.levels, torch.round(q_code.levels))  # integer levels, the closed form
    assert (q_hat - q_in).abs().max() <= q_code.unit.max() / 2 + 1e-6  # rounding, no clipping here
    w, w_hat = w_in.squeeze(-1), w_code.decoded().squeeze(-1)  # [1, heads, 10, 10]
    # exp(score - row max): every row's largest weight is exactly 1, the largest level
    assert torch.equal(w.amax(-1), torch.ones_like(w.amax(-1)))
    assert torch.equal(w_code.levels.squeeze(-1).amax(-1), torch.full_like(w.amax(-1), w_code.coding.max_level))
    # causal: a query never attends to a later key, so those weights are 0 and never fire
    assert torch.all(w_code.levels.squeeze(-1).triu(1) == 0)
    assert (w_hat - w).abs().max() <= 0.5 / w_code.coding.max_level + 1e-7
    # the output: sum_k w_hat[k] v[k] / sum_k w_hat[k], heads sharing their key/value head
    heads = w.shape[1]
    v = values["v"].view(1, 10, -1, attention.head_dim).transpose(1, 2)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    expected = (w_hat @ v) / w_hat.sum(-1, keepdim=True)
    assert torch.allclose(seen["out"], expected.transpose(1, 2).reshape(1, 10, -1), atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("octave, atol", [(1, 1e-4), (None, 1e-2)])
def test_both_engines_give_the_same_logits_and_generation(kind, octave, atol):
    snn = stac.convert(tiny_ann(kind), ATTN.replace(steps_per_octave=octave), calibration=tiny_calibration())
    ids = _ids()
    with torch.no_grad():
        closed = snn(ids).logits
        tokens = snn.generate(ids, max_new_tokens=6, do_sample=False)
        snn.set_engine("time_stepped")
        stepped = snn(ids).logits
        stepped_tokens = snn.generate(ids, max_new_tokens=6, do_sample=False)
    # The same sums in another order. With powers of two every event's product is exact. With the
    # default's denser spike weights a spike's weight is not a power of two, so each product rounds: now
    # and then an input downstream lands on the other side of a rounding edge and moves one level (4e-3
    # in the logits of tiny GPT-2 at 3 steps per octave).
    assert torch.allclose(closed, stepped, atol=atol, rtol=0)
    assert torch.equal(tokens, stepped_tokens)


@pytest.mark.skipif(not kernels.available(), reason="no compiled kernels")
@pytest.mark.parametrize("engine, compiled", [("closed_form", "attention_values"), ("time_stepped", "spike_synapse")])
def test_decode_steps_through_the_compiled_loops_match_the_matmul_path(monkeypatch, engine, compiled):
    """One new position at a time with the cache: the compiled attention loops (closed form) or the
    event-driven synapses (time-stepped) give the logits of the tensor path (same sums, other order)."""
    snn = stac.convert(tiny_ann("llama"), ATTN.replace(engine=engine), calibration=tiny_calibration())
    ids = _ids(12)

    def decode():
        with torch.no_grad():
            out = snn(input_ids=ids[:, :8], use_cache=True)
            cache, logits = out.past_key_values, []
            for i in range(8, 12):
                out = snn(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits.append(out.logits)
        return torch.cat(logits, 1)

    calls = []
    monkeypatch.setattr(attention.kernels, compiled, lambda *a, f=getattr(kernels, compiled): calls.append(1) or f(*a))
    through_loops = decode()
    # the 8-token prompt and 4 steps, in every layer (time-stepped: queries and weights per key/value head)
    per_call = 1 if engine == "closed_form" else 2 * snn.config.text_config.num_key_value_heads
    assert len(calls) == 5 * snn.config.text_config.num_hidden_layers * per_call
    monkeypatch.setattr(attention, "_KERNEL_POSITIONS", 0)
    torch.testing.assert_close(through_loops, decode(), rtol=1e-4, atol=1e-4)


def test_a_mask_per_head_takes_the_tensor_path():
    """The compiled loops take one mask for all heads; a [b, heads, n, context] mask goes the tensor way."""
    snn = stac.convert(tiny_ann("llama"), ATTN, calibration=tiny_calibration())
    module = _attentions(snn)[0]
    config = snn.config.text_config
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 1 if n == heads else 7, dim, generator=g) for n in (heads, kv, kv))
    mask = torch.zeros(1, heads, 1, 7)
    mask[:, 0, :, 3] = torch.finfo(torch.float32).min
    with torch.no_grad():
        out, probs = attention.spiking_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5)
    assert out.shape == (1, 1, heads, dim) and probs.shape == (1, heads, 1, 7)
    assert probs[0, 0, 0, 3] == 0 and torch.allclose(probs.sum(-1), torch.ones(1, heads, 1))


def test_generation_with_the_kv_cache_matches_full_recomputation():
    snn = stac.convert(tiny_ann("llama"), ATTN, calibration=tiny_calibration())
    ids = _ids(12)
    with torch.no_grad():
        out = snn.generate(ids, max_new_tokens=5, do_sample=False)
        full = snn(out).logits
    # every generated token is the argmax of the full (cache-free) forward at its position
    assert torch.equal(full[0, ids.shape[1] - 1:-1].argmax(-1), out[0, ids.shape[1]:])


def test_a_saved_model_loads_with_spiking_attention_and_the_same_logits(tmp_path, kind):
    snn = stac.convert(tiny_ann(kind), ATTN, calibration=tiny_calibration())
    snn.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.config.spiking_config.spiking_attention
    assert all(a.config._attn_implementation == ATTENTION_NAME for a in _attentions(loaded))
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, snn(ids).logits)


def test_checkpoints_without_the_key_read_as_float_attention():
    d = stac.SpikingConfig().to_dict()
    del d["spiking_attention"]
    assert stac.SpikingConfig.from_dict(d).spiking_attention is False
    with pytest.raises(TypeError, match="spiking_attention"):
        stac.SpikingConfig(spiking_attention=1)


def test_calibration_records_the_queries_after_rope_and_leaves_the_model_as_it_was():
    ann = tiny_ann("llama")
    arch = architectures.architecture_for("llama")
    ids = _ids(16)
    with torch.no_grad():
        before = ann(ids).logits
    stats = channel_max(ann, arch, [ids[0]])
    assert ann.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(ann(ids).logits, before)
    # by hand: layer 0's queries after RoPE
    layer = ann.model.layers[0]
    with torch.no_grad():
        hidden = layer.input_layernorm(ann.model.embed_tokens(ids))
        position_ids = torch.arange(ids.shape[1])[None]
        cos, sin = ann.model.rotary_emb(hidden, position_ids)
        q = layer.self_attn.q_proj(hidden).view(1, ids.shape[1], -1, layer.self_attn.head_dim).transpose(1, 2)
        k = layer.self_attn.k_proj(hidden).view(1, ids.shape[1], -1, layer.self_attn.head_dim).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, k, cos, sin)
    expected = q.abs().transpose(1, 2).reshape(ids.shape[1], -1).amax(0)
    assert torch.allclose(stats[f"model.layers.0.self_attn.{QUERY_ENCODER}"], expected, atol=1e-6)


def test_observing_queries_restores_the_implementation_when_the_forward_fails():
    ann = tiny_ann("llama")
    modules = attention_modules(ann, architectures.architecture_for("llama"))
    with pytest.raises(IndexError):
        with observe_queries(ann, modules):
            ann(torch.tensor([[VOCAB + 5]]))  # out of the vocabulary
    assert ann.config._attn_implementation == "sdpa"
    assert not any("_stac_observe" in m.__dict__ for m in modules.values())


def test_the_spiking_implementation_refuses_a_model_without_its_encoders():
    ann = tiny_ann("llama")
    ann.config._attn_implementation = ATTENTION_NAME
    with pytest.raises(RuntimeError, match="spiking_attention=True"):
        ann(_ids(4))


def test_an_architecture_without_an_attention_entry_refuses_spiking_attention(monkeypatch):
    layout = architectures.ARCHITECTURES["llama"]
    monkeypatch.setitem(architectures.ARCHITECTURES, "llama", dataclasses.replace(layout, attention=None))
    ann = tiny_ann("llama")
    with pytest.raises(UnsupportedArchitectureError, match="spiking attention"):
        stac.convert(ann, ATTN, calibration=tiny_calibration())
    assert ann.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_the_meter_counts_attention_synops_by_hand_and_no_attention_macs(kind, engine):
    snn = stac.convert(tiny_ann(kind), ATTN.replace(engine=engine), calibration=tiny_calibration())
    config = snn.model.config
    heads, dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    ids = _ids(9)
    codes = {}
    for attention in _attentions(snn):
        for name in (QUERY_ENCODER, PROBABILITY_ENCODER):
            attention.get_submodule(name).register_forward_hook(
                lambda m, a, out, key=(attention, name): codes.setdefault(key, []).append(out.spike_count().sum()))
    with torch.no_grad():
        cache = snn(ids[:, :8], use_cache=True).past_key_values
        codes.clear()
        with EnergyMeter(snn) as meter:
            snn(ids[:, 8:], past_key_values=cache, use_cache=True)  # one decode step, 9 keys
    report = meter.report()
    by_name = {layer.name: layer for layer in report.per_layer}
    names = {m: n for n, m in snn.named_modules()}
    for attention in _attentions(snn):
        assert by_name[f"{names[attention]}:attention"].macs == 0
        q_spikes = int(sum(codes[(attention, QUERY_ENCODER)]))
        p_spikes = int(sum(codes[(attention, PROBABILITY_ENCODER)]))
        assert q_spikes > 0 and p_spikes > 0
        assert by_name[f"{names[attention]}.{QUERY_ENCODER}"].synops == q_spikes * 9
        assert by_name[f"{names[attention]}.{PROBABILITY_ENCODER}"].synops == p_spikes * (dim + 1)
        assert by_name[f"{names[attention]}.{PROBABILITY_ENCODER}"].neurons == heads * 9


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_an_export_keeps_the_spiking_attention(tmp_path, suffix):
    from stac import export

    snn = stac.convert(tiny_ann("llama"), ATTN, calibration=tiny_calibration())
    float_attention = stac.convert(tiny_ann("llama"), stac.SpikingConfig(spiking_attention=False), calibration=tiny_calibration())
    path = export.export(snn, tmp_path / f"m{suffix}")
    ids = _ids(12)
    with torch.no_grad():
        logits = export.load(path)(ids)
        assert torch.allclose(logits, snn(ids).logits, atol=1e-5)
        assert not torch.allclose(logits, float_attention(ids).logits, atol=1e-5)
