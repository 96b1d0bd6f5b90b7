"""StacForCausalLM as a transformers model: save/load, Auto classes, generation with a KV cache, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

import stac
from tests.conftest import VOCAB, tiny_ann, tiny_calibration


def test_save_writes_safetensors_and_a_self_describing_config(tiny_pair, tmp_path):
    _, snn = tiny_pair
    snn.save_pretrained(tmp_path / "snn")
    files = sorted(p.name for p in (tmp_path / "snn").iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    cfg = json.loads((tmp_path / "snn" / "config.json").read_text())
    assert cfg["model_type"] == "stac"
    assert cfg["text_config"]["model_type"] == snn.config.text_config.model_type
    assert cfg["spiking"] == stac.SpikingConfig().to_dict()
    assert cfg["spiking"]["layer_overrides"] and cfg["spiking"]["coding"] == "signed_digit"
    assert "quantization_config" not in cfg["text_config"]
    tensors = load_file(tmp_path / "snn" / "model.safetensors")
    thresholds = [k for k in tensors if k.endswith(".threshold")]
    assert len(thresholds) == len(snn.encoders)


def test_auto_classes_reload_identical_outputs(tiny_pair, tmp_path):
    _, snn = tiny_pair
    snn.save_pretrained(tmp_path / "snn")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "snn"), stac.StacConfig)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "snn")
    assert isinstance(again, stac.StacForCausalLM)
    ids = tiny_calibration(seed=3, n=1, length=30)[0][None]
    with torch.no_grad():
        assert torch.equal(snn(ids).logits, again(ids).logits)
    for (name, enc), (name2, enc2) in zip(snn.encoders.items(), again.encoders.items()):
        assert name == name2 and torch.equal(enc.threshold, enc2.threshold)


def greedy_chat(model, turns, use_cache):
    """Ten user turns of token ids; the model answers each greedily, keeping its KV cache across turns."""
    ids = torch.tensor([[1]])
    cache = DynamicCache(config=model.config) if use_cache else None
    replies = []
    for user in turns:
        ids = torch.cat([ids, user[None]], dim=1)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             use_cache=use_cache, past_key_values=cache, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
        replies.append(out.sequences[0, ids.shape[1]:].tolist())
        ids = out.sequences
        cache = out.past_key_values if use_cache else None
    return replies


def test_ten_turn_greedy_chat_is_identical_with_and_without_kv_cache(tiny_pair):
    _, snn = tiny_pair
    turns = tiny_calibration(seed=5, n=10, length=7)
    cached = greedy_chat(snn, turns, use_cache=True)
    uncached = greedy_chat(snn, turns, use_cache=False)
    assert cached == uncached
    assert len(cached) == 10 and all(len(r) == 6 for r in cached)


def test_left_padded_batch_matches_each_prompt_alone(tiny_pair):
    _, snn = tiny_pair
    a = tiny_calibration(seed=8, n=1, length=12)[0]
    b = tiny_calibration(seed=9, n=1, length=5)[0]
    batch = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros(2, 12, dtype=torch.long)
    batch[0], mask[0] = a, 1
    batch[1, 7:], mask[1, 7:] = b, 1
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    together = snn.generate(batch, attention_mask=mask, **kw)
    alone_a = snn.generate(a[None], attention_mask=torch.ones(1, 12, dtype=torch.long), **kw)
    alone_b = snn.generate(b[None], attention_mask=torch.ones(1, 5, dtype=torch.long), **kw)
    assert together[0, 12:].tolist() == alone_a[0, 12:].tolist()
    assert together[1, 12:].tolist() == alone_b[0, 5:].tolist()


def test_forward_accepts_the_cache_under_either_name(tiny_pair):
    _, snn = tiny_pair
    ids = tiny_calibration(seed=4, n=1, length=10)[0][None]
    with torch.no_grad():
        full = snn(ids).logits[:, -1]
        for name in ("past_key_values", "cache"):
            cache = DynamicCache(config=snn.config)
            snn(ids[:, :-1], **{name: cache}, use_cache=True)
            step = snn(ids[:, -1:], **{name: cache}, use_cache=True).logits[:, -1]
            torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="either"):
            snn(ids, cache=DynamicCache(config=snn.config), past_key_values=DynamicCache(config=snn.config))


def test_neuron_state_does_not_leak_between_calls(tiny_pair):
    _, snn = tiny_pair
    snn.set_engine("time_stepped")
    ids = tiny_calibration(seed=4, n=1, length=10)[0][None]
    with torch.no_grad():
        first = snn(ids).logits
        snn(tiny_calibration(seed=5, n=1, length=17)[0][None])
        again = snn(ids).logits
    assert torch.equal(first, again)
    assert all(not isinstance(e.node.v, torch.Tensor) for e in snn.encoders.values())


@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
def test_one_spike_code_is_held_at_a_time_and_each_input_is_encoded_once(tiny_pair, engine):
    """A memo lives only while its consumers run (q/k/v, gate/up), so a long prefill does not keep every
    encoder's spike trains until the forward ends; each encoder still encodes its input once."""
    _, snn = tiny_pair
    snn.set_engine(engine)
    encoders = list(snn.encoders.values())
    live, encoded = [], {}

    def hook(module, args, code):
        live.append(sum(e._memo is not None for e in encoders))
        if module._memo is not None and module._memo[3] is code:
            encoded.setdefault(id(module), set()).add(id(code))

    handles = [e.register_forward_hook(hook) for e in encoders]
    try:
        with torch.no_grad():
            snn(tiny_calibration(seed=4, n=1, length=12)[0][None])
    finally:
        for h in handles:
            h.remove()
        snn.set_engine("closed_form")
    assert live and max(live) == 1
    assert len(encoded) == len(encoders) and all(len(codes) == 1 for codes in encoded.values())
    assert all(e._memo is None for e in encoders)


# ----- bad checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    snn = stac.convert(tiny_ann("llama"), stac.SpikingConfig(), calibration=tiny_calibration())
    path = tmp_path / "snn"
    snn.save_pretrained(path)
    return path


def test_a_checkpoint_missing_a_threshold_is_refused(saved):
    tensors = load_file(saved / "model.safetensors")
    victim = next(k for k in tensors if k.endswith(".threshold"))
    del tensors[victim]
    save_file(tensors, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(stac.StacCheckpointError, match="missing"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_a_checkpoint_with_a_wrong_shape_is_refused(saved):
    tensors = load_file(saved / "model.safetensors")
    victim = next(k for k in tensors if k.endswith(".threshold"))
    tensors[victim] = torch.ones(3)
    save_file(tensors, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises((stac.StacCheckpointError, RuntimeError), match="(?i)size|shape|mismatch"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_a_truncated_checkpoint_is_refused(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(stac.StacCheckpointError, match="corrupt or truncated"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_a_config_that_is_not_json_is_refused(saved):
    (saved / "config.json").write_text("{ this is not json")
    with pytest.raises((OSError, ValueError), match="(?i)json|config"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_a_checkpoint_from_a_newer_format_is_refused(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["stac_format_version"] = stac.STAC_FORMAT_VERSION + 1
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(stac.StacFormatError, match="newer"):
        AutoModelForCausalLM.from_pretrained(saved)


def test_a_failed_save_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    snn = stac.convert(tiny_ann("llama", seed=3), stac.SpikingConfig(), calibration=tiny_calibration())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        snn.save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["snn"]


def test_the_time_stepped_weight_copies_share_one_buffer_that_closed_form_releases(tiny_pair):
    """The event-driven synapses' [in, out] weight copies are made in one allocation when the engine
    switches (one large block the allocator returns on release, not hundreds of heap-kept pieces), read
    the current weights, and are dropped with the closed form."""
    from stac import kernels
    from stac.layers import SpikingLinear

    _, snn = tiny_pair
    ids = tiny_calibration(seed=6, n=1, length=9)[0][None]
    synapses = [m for m in snn.modules() if isinstance(m, SpikingLinear) and m.needs_row_copy()]
    assert synapses  # Llama's nn.Linear layers; GPT-2's lm_head (its blocks' Conv1D are [in, out] already)
    with torch.no_grad():
        closed = snn(ids).logits
        snn.set_engine("time_stepped")
        try:
            rows = [m.__dict__.get("_rows") for m in synapses]
            if kernels.available():
                assert all(r is not None for r in rows)
                assert len({r[1].untyped_storage().data_ptr() for r in rows}) == 1
                for m, (_, r) in zip(synapses, rows):
                    assert torch.equal(r, m.base_layer.weight.t())
                snn.set_engine("time_stepped")  # already there: the same copies, not new ones
                assert all(m.__dict__["_rows"] is r for m, r in zip(synapses, rows))
            else:
                assert all(r is None for r in rows)
            torch.testing.assert_close(snn(ids).logits, closed, rtol=1e-4, atol=1e-4)
        finally:
            snn.set_engine("closed_form")
    assert all("_rows" not in m.__dict__ for m in synapses)


def test_packed_weight_copies_follow_in_place_weight_changes_and_models_built_time_stepped_pack_too(tiny_pair):
    """pack_synapse_rows (no kernel needed) lays the copies out in one buffer; an in-place weight change
    refreshes a copy where it lives; a model whose encoders are time-stepped before any set_engine call
    (built or loaded that way) prepares its copies on the first forward."""
    from stac import kernels
    from stac.layers import SpikingLinear, pack_synapse_rows

    _, snn = tiny_pair
    synapses = [m for m in snn.modules() if isinstance(m, SpikingLinear) and m.needs_row_copy()]
    try:
        size = pack_synapse_rows(synapses)
        assert size == 4 * sum(m.base_layer.weight.numel() for m in synapses)
        layer = synapses[0]
        storage = layer._synapse_rows(layer.base_layer).untyped_storage().data_ptr()
        with torch.no_grad():
            layer.base_layer.weight.mul_(2)  # exact, and undone exactly below (a shared fixture)
        rows = layer._synapse_rows(layer.base_layer)
        assert torch.equal(rows, layer.base_layer.weight.t()) and rows.untyped_storage().data_ptr() == storage
        with torch.no_grad():
            layer.base_layer.weight.div_(2)
        snn.set_engine("closed_form")
        assert all("_rows" not in m.__dict__ for m in synapses)
        for encoder in snn.encoders.values():
            encoder.engine = "time_stepped"  # as from_pretrained builds a model saved time-stepped
        snn.__dict__.pop("_synapses_prepared", None)
        with torch.no_grad():
            snn(tiny_calibration(seed=7, n=1, length=5)[0][None])
        if kernels.available():
            assert len({m.__dict__["_rows"][1].untyped_storage().data_ptr() for m in synapses}) == 1
    finally:
        snn.set_engine("closed_form")
