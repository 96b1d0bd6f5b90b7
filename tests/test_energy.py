"""Energy meter: exact counts against hand counts and SpikingJelly's op counters, and the evaluate script."""

import dataclasses
import importlib.util
import json
import math
import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from tokenizers import Tokenizer, decoders, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import stac
from stac.architectures import architecture_for, blocks_of, group_consumers
from stac.energy import (
    ENERGY_MODELS, EnergyMeter, EnergyModel, EnergyReport, LayerEnergy, energy_per_token_at_context,
    measure_decode_step,
)
from stac.layers import SYNAPSES, SpikingLinear
from tests.conftest import VOCAB, tiny_ann, tiny_calibration, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def ids_of(length, seed=5, batch=1):
    return torch.stack([tiny_calibration(seed=seed + b, n=1, length=length)[0] for b in range(batch)])


def layer(report, name):
    return next(lay for lay in report.per_layer if lay.name == name)


def out_features(module):
    return SYNAPSES[type(module)](module).shape[0]


def hand_spike_counts(snn, ids):
    """Spikes and synaptic ops per encoder, counted independently of the meter.

    The input of each encoder group is captured before its first matmul; spikes are recounted afterwards
    by encoding that input again (the encoding is deterministic) and synops = spikes x sum of fan-outs.
    """
    arch = architecture_for(snn.config.text_config.model_type)
    names = {m: n for n, m in snn.named_modules()}
    inputs, handles, groups = {}, [], {}
    sites = [(block, group) for block in blocks_of(snn.model, arch) for group in arch.groups]
    if snn.config.spiking_config.spiking_head:
        sites.append((snn.model, arch.head))
    for owner, group in sites:
        consumers = group_consumers(owner, group)
        encoder = consumers[0].encoder
        groups[names[encoder]] = (encoder, sum(out_features(c.base_layer) for c in consumers))
        handles.append(consumers[0].register_forward_pre_hook(
            lambda m, args, name=names[encoder]: inputs.setdefault(name, []).append(args[0].clone())))
    try:
        with torch.no_grad():
            snn(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    counts = {}
    with torch.no_grad():
        for name, (encoder, fan_out) in groups.items():
            spikes = sum(int(encoder(x).spike_count().sum()) for x in inputs[name])
            encoder.reset()
            counts[name] = (spikes, spikes * fan_out, sum(x.numel() for x in inputs[name]))
    return counts


# ----- exact counts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["closed_form", "time_stepped"])
@pytest.mark.parametrize("octave", [1, 3])
def test_spikes_and_synaptic_ops_equal_the_hand_count_exactly(kind, engine, octave):
    ann = tiny_ann(kind)
    # the block and head encoders (the attention's own: tests/test_attention.py)
    snn = stac.convert(ann, stac.SpikingConfig(engine=engine, steps_per_octave=octave, spiking_attention=False),
                       calibration=tiny_calibration())
    ids = ids_of(24, batch=2)
    expected = hand_spike_counts(snn, ids)
    with EnergyMeter(snn) as meter, torch.no_grad():
        snn(input_ids=ids, use_cache=False)
    report = meter.report()
    spiking = [lay for lay in report.per_layer if lay.kind == "spiking"]
    assert {lay.name for lay in spiking} == set(expected)
    for lay in spiking:
        spikes, synops, neurons = expected[lay.name]
        assert (lay.spikes, lay.synops, lay.neurons) == (spikes, synops, neurons)
        coding = snn.encoders[lay.name].coding  # T 9, 10 or 12: the default allocates T by layer
        steps = len(coding.step_weights())  # T, or about 3T with 3 steps per octave
        assert lay.timesteps == steps and (steps > coding.timesteps) == (octave > 1)
        assert lay.firing_rate == spikes / (neurons * steps)
        # neuron work (normalise 3, one update per step, one reset per spike), the outputs' Horner steps
        # (one per step after the first) and, in GPT-2's blocks, one bias add per output
        fan_out = synops // spikes if spikes else None
        if fan_out is not None:
            positions = neurons // snn.encoders[lay.name].channels
            bias = kind == "gpt2" and not lay.name.endswith("encoder_head")  # GPT-2's lm_head has none
            horner = positions * fan_out * (steps - 1 + bias)
            # the default's lm_head stops trailing outputs early (stac.readout): on these tiny models every
            # logit lies within its margin, so every output runs, and each decision costs a max and a
            # compare per output
            head = snn.model.lm_head if lay.name.endswith("encoder_head") else None
            decisions = len(getattr(head, "stages", ()))
            if decisions:
                assert all(bool((kept == fan_out).all()) for kept in head.last_kept)
            assert lay.elementwise_ops == neurons * (3 + steps) + spikes + horner + 2 * decisions * positions * fan_out
    assert report.spikes == sum(s for s, _, _ in expected.values()) > 0
    assert report.synops == sum(s for _, s, _ in expected.values())
    assert report.tokens == ids.numel()
    assert report.spikes_per_token == report.spikes / ids.numel()


def test_a_dense_linear_costs_tokens_times_in_times_out_macs(kind):
    ann = tiny_ann(kind)
    ids = ids_of(10, batch=2)
    with EnergyMeter(ann) as meter, torch.no_grad():
        ann(input_ids=ids, use_cache=False)
    report = meter.report()
    dense = {n: m for n, m in ann.named_modules() if type(m) in SYNAPSES}
    assert "lm_head" in dense and len(dense) == 1 + 4 * 2 + (3 if kind == "llama" else 0) * 2
    for name, module in dense.items():
        out, inp = SYNAPSES[type(module)](module).shape
        assert layer(report, name).macs == ids.numel() * inp * out, name


def attention_shape(model):
    cfg = model.config if not isinstance(model, stac.StacForCausalLM) else model.config.text_config
    heads = cfg.num_attention_heads
    return heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads


def test_attention_macs_follow_the_kv_cache_length(kind):
    ann = tiny_ann(kind)
    ids = ids_of(41)
    heads, head_dim = attention_shape(ann)
    attention = [n + ":attention" for n, m in ann.named_modules() if type(m).__name__.endswith("Attention")]
    assert len(attention) == 2
    with EnergyMeter(ann) as meter, torch.no_grad():
        ann(input_ids=ids[:, :40], use_cache=False)  # prefill without a cache: 40 x 40 scores per head
    for name in attention:
        assert layer(meter.report(), name).macs == 2 * heads * 40 * 40 * head_dim
    with torch.no_grad():
        cache = ann(input_ids=ids[:, :40], use_cache=True).past_key_values
        with EnergyMeter(ann) as meter:
            ann(input_ids=ids[:, 40:], past_key_values=cache, use_cache=True)  # one token sees 41 keys
    for name in attention:
        assert layer(meter.report(), name).macs == 2 * heads * 1 * 41 * head_dim
    assert meter.report().tokens == 1
    short = measure_decode_step(ann, ids_of(300), context=16)
    long = measure_decode_step(ann, ids_of(300), context=256)
    assert long.energy_per_token_j > short.energy_per_token_j
    assert long.macs - short.macs == 2 * 2 * heads * (257 - 17) * head_dim


@pytest.mark.parametrize("spiking_attention", [True, False], ids=["spiking-attention", "float-attention"])
@pytest.mark.parametrize("spiking_head", [True, False], ids=["spiking-head", "float-head"])
def test_the_ann_has_no_spikes_and_the_snn_keeps_only_float_attention_and_a_float_head_dense(kind, spiking_head,
                                                                                             spiking_attention):
    ann = tiny_ann(kind)
    snn = stac.convert(ann, stac.SpikingConfig(spiking_head=spiking_head, spiking_attention=spiking_attention),
                       calibration=tiny_calibration())
    ids = ids_of(16)
    reports = {}
    for model in (ann, snn):
        with EnergyMeter(model) as meter, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        reports[model] = meter.report()
    assert reports[ann].spikes == reports[ann].synops == 0 and reports[ann].firing_rate == 0.0
    assert not any(lay.kind == "spiking" for lay in reports[ann].per_layer)
    snn_dense = {lay.name: lay.macs for lay in reports[snn].per_layer if lay.macs}
    ann_dense = {lay.name: lay.macs for lay in reports[ann].per_layer if lay.macs}
    assert snn_dense == {"model." + n: m for n, m in ann_dense.items()
                         if (n == "lm_head" and not spiking_head) or (n.endswith(":attention") and not spiking_attention)}
    assert reports[snn].tokens == reports[ann].tokens == ids.numel()


def test_the_meter_changes_no_output(kind):
    ann = tiny_ann(kind)
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    ids = ids_of(12)
    for model in (ann, snn):
        with torch.no_grad():
            plain = model(input_ids=ids).logits
            gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
            with EnergyMeter(model) as meter:
                observed = model(input_ids=ids).logits
                gen_observed = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                              eos_token_id=None)
        assert torch.equal(plain, observed)
        assert torch.equal(gen, gen_observed)
        # one prefill of 12 positions and 5 decode steps of one, plus the 12 of the plain pass
        assert meter.report().tokens == 12 + 12 + 5
    with torch.no_grad():
        after = snn(input_ids=ids).logits
    assert torch.equal(after, plain)  # hooks are gone


def test_an_snn_at_the_default_config_costs_less_than_its_ann_and_a_long_rate_code_more(kind):
    ann = tiny_ann(kind)
    ids = ids_of(16)

    def energy(model):
        with EnergyMeter(model) as meter, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        return meter.report().energy_j

    # one step per octave: at this toy width (64) the default's 3 steps per octave cost more in steps than
    # they save in synaptic ops (see the next test)
    default = stac.convert(ann, stac.SpikingConfig(steps_per_octave=1), calibration=tiny_calibration())
    long_rate = stac.convert(ann, stac.SpikingConfig(coding="rate", timesteps=256, threshold_margin=1.0),
                             calibration=tiny_calibration())
    assert energy(default) < energy(ann) < energy(long_rate)


@pytest.mark.parametrize("width, cheaper", [(64, False), (768, True)])
def test_denser_spike_weights_pay_off_only_where_fan_out_outweighs_the_extra_steps(width, cheaper):
    # Each step costs every neuron an update and every output a Horner step; each spike saved saves its
    # fan-out in synaptic ops. At width 64 the steps win, at GPT-2's 768 the spikes do.
    torch.manual_seed(0)
    config = tiny_config("gpt2")
    config.n_embd, config.n_layer = width, 1
    ann = AutoModelForCausalLM.from_config(config).eval()
    ids = ids_of(32)
    reports = {}
    for octave in (1, 3):  # the block encoders' schedule (the attention's keep one step per octave)
        snn = stac.convert(ann, stac.SpikingConfig(steps_per_octave=octave, spiking_attention=False),
                           calibration=tiny_calibration())
        with EnergyMeter(snn) as meter, torch.no_grad():
            snn(input_ids=ids, use_cache=False)
        reports[octave] = meter.report()
    assert reports[3].spikes < 0.85 * reports[1].spikes  # fewer spikes at any width
    assert reports[3].synops < reports[1].synops
    assert (reports[3].energy_j < reports[1].energy_j) == cheaper


# ----- against SpikingJelly's op counters --------------------------------------------------------------
def test_synaptic_ops_agree_with_spikingjelly_synop_counter():
    ann = tiny_ann("gpt2")
    snn = stac.convert(ann, stac.SpikingConfig(engine="time_stepped"), calibration=tiny_calibration())
    trains = {}
    names = {m: n for n, m in snn.named_modules()}
    consumers = {m.encoder: m for m in snn.modules() if isinstance(m, SpikingLinear)}  # GPT-2: one each

    def keep_train(encoder, args, code):
        trains.setdefault(encoder, code.train)

    handles = [enc.register_forward_hook(keep_train) for enc in consumers]
    ids = ids_of(20)
    try:
        with EnergyMeter(snn) as meter, torch.no_grad():
            snn(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert len(trains) == 8 + 1  # 4 per block, and the lm_head's
    report = meter.report()
    for encoder, train in trains.items():
        module = consumers[encoder]
        weight = SYNAPSES[type(module.base_layer)](module.base_layer)
        counter = SynOpCounter()
        with DispatchCounterMode([counter]), torch.no_grad():
            # SpikingJelly counts binary spikes: feed +1 and -1 spikes as two binary trains.
            for part in ((train > 0), (train < 0)):
                F.linear(part.float().reshape(-1, weight.shape[1]), weight)
        assert layer(report, names[module.encoder]).synops == counter.get_total() > 0


def test_macs_agree_with_spikingjelly_mac_counter_on_an_eager_attention_ann():
    torch.manual_seed(0)
    ann = AutoModelForCausalLM.from_config(tiny_config("gpt2"), attn_implementation="eager").eval()
    ids = ids_of(20, batch=2)
    counter = MACCounter()
    with EnergyMeter(ann) as meter, DispatchCounterMode([counter]), torch.no_grad():
        ann(input_ids=ids, use_cache=False)
    assert meter.report().macs == counter.get_total() > 0


# ----- energy models and reports ------------------------------------------------------------------------
def test_energy_models_are_frozen_documented_presets():
    assert {"45nm_fp32", "45nm_fp16", "45nm_int8", "45nm_fp32_sram"} <= set(ENERGY_MODELS)
    fp32, fp16, int8 = (ENERGY_MODELS[k] for k in ("45nm_fp32", "45nm_fp16", "45nm_int8"))
    assert (fp32.e_mac_pj, fp32.e_ac_pj) == (4.6, 0.9)
    assert (fp16.e_mac_pj, fp16.e_ac_pj) == (1.1 + 0.4, 0.4)
    assert (int8.e_mac_pj, int8.e_ac_pj) == (0.2 + 0.03, 0.03)
    assert all("Horowitz" in m.source for m in ENERGY_MODELS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        fp32.e_mac_pj = 1.0
    with pytest.raises(ValueError, match="45nm_fp32"):
        EnergyMeter(tiny_ann("gpt2"), energy_model="7nm_magic")
    with pytest.raises(ValueError):
        EnergyModel("bad", -1.0, 0.9, 4.6)


def test_the_memory_aware_model_adds_exactly_its_byte_traffic():
    ann = tiny_ann("llama")
    snn = stac.convert(ann, stac.SpikingConfig(), calibration=tiny_calibration())
    ids = ids_of(16)
    reports = {}
    for name in ("45nm_fp32", "45nm_fp32_sram"):
        with EnergyMeter(snn, energy_model=name) as meter, torch.no_grad():
            snn(input_ids=ids, use_cache=False)
        reports[name] = meter.report()
    compute, memory = reports["45nm_fp32"], reports["45nm_fp32_sram"]
    neuron_steps = sum(lay.neurons * lay.timesteps for lay in memory.per_layer)
    assert memory.memory_bytes == (memory.macs + memory.synops) * 4 + neuron_steps * 2 * 4
    assert compute.energy_memory_j == 0.0
    assert math.isclose(memory.energy_j - compute.energy_j, memory.memory_bytes * 12.5e-12, rel_tol=1e-9)


def test_a_report_is_json_and_reset_zeroes_it():
    ann = tiny_ann("llama")
    meter = EnergyMeter(ann, energy_model=ENERGY_MODELS["45nm_int8"])
    with meter, torch.no_grad():
        ann(input_ids=ids_of(8))
    report = meter.report()
    assert isinstance(report, EnergyReport) and isinstance(report.per_layer[0], LayerEnergy)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["tokens"] == 8 and d["energy_model"] == "45nm_int8" and d["per_layer"][0]["kind"] in (
        "spiking", "dense", "elementwise")
    total = report.energy_mac_j + report.energy_ac_j + report.energy_elementwise_j + report.energy_memory_j
    assert math.isclose(report.energy_j, total, rel_tol=1e-12)
    assert math.isclose(report.energy_j, sum(lay.energy_j for lay in report.per_layer), rel_tol=1e-12)
    meter.reset()
    empty = meter.report()
    assert (empty.tokens, empty.energy_j, empty.per_layer, empty.energy_per_token_j) == (0, 0.0, [], 0.0)


def test_energy_per_token_at_context_is_one_metered_decode_step_after_the_context():
    ann = tiny_ann("llama")
    ids = ids_of(300)
    with torch.no_grad():
        cache = ann(input_ids=ids[:, :256], use_cache=True).past_key_values
        with EnergyMeter(ann) as meter:
            ann(input_ids=ids[:, 256:257], past_key_values=cache, use_cache=True)
    assert energy_per_token_at_context(ann, ids, context=256) == meter.report().energy_j
    with pytest.raises(ValueError, match="257"):
        energy_per_token_at_context(ann, ids[:, :100], context=256)


# ----- scripts/evaluate.py --------------------------------------------------------------------------------
def tiny_tokenizer():
    """A character-level tokenizer over the tiny models' vocabulary, with a plain chat template."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = list(string.ascii_letters + string.digits + " .,;:!?'\"-()\n")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    return tok


def evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KEYS = {"ppl_ann", "ppl_snn", "top1_agreement", "kl", "energy_ratio", "spikes_per_token",
        "chat_turns_identical", "energy_per_token_ann_j", "energy_per_token_snn_j"}


def test_evaluate_script_converts_an_ann_and_reports_one_json_object(tmp_path, capsys):
    ann = tiny_ann("llama")
    ann.save_pretrained(tmp_path / "ann")
    tiny_tokenizer().save_pretrained(tmp_path / "ann")
    chats = tmp_path / "chats.json"
    chats.write_text(json.dumps([["Hello there!", "How are you?"], ["Name a colour."]]))
    result = evaluate_script().main([
        "--model", str(tmp_path / "ann"), "--tokens", "600", "--chat-file", str(chats),
        "--max-new-tokens", "4", "--timesteps", "10", "--json", str(tmp_path / "out" / "eval.json"),
        "--plots", str(tmp_path / "plots"),
    ])
    for figure in ("firing_rates.png", "energy_split.png"):
        assert (tmp_path / "plots" / figure).read_bytes()[:4] == b"\x89PNG"
    printed = json.loads(capsys.readouterr().out)
    assert printed == result == json.loads((tmp_path / "out" / "eval.json").read_text())
    assert KEYS <= set(result)
    assert result["spiking"]["timesteps"] == 10
    assert result["chat_turns"] == 3 and result["chat_turns_identical"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert 0.9 < result["ppl_snn"] / result["ppl_ann"] < 1.1 and result["top1_agreement"] > 0.9
    assert result["energy_ratio"] == result["energy_per_token_ann_j"] / result["energy_per_token_snn_j"] > 0
    assert result["spikes_per_token"] > 0 and result["energy_context"] == 256


def test_evaluate_script_reads_a_stac_checkpoint_with_its_base(tmp_path, capsys):
    ann = tiny_ann("gpt2")
    ann.save_pretrained(tmp_path / "ann")
    tiny_tokenizer().save_pretrained(tmp_path / "ann")
    snn = stac.convert(ann, stac.SpikingConfig(coding="bitplane", timesteps=8), calibration=tiny_calibration())
    snn.save_pretrained(tmp_path / "snn")
    script = evaluate_script()
    with pytest.raises(ValueError, match="--base"):
        script.main(["--model", str(tmp_path / "snn")])
    result = script.main(["--model", str(tmp_path / "snn"), "--base", str(tmp_path / "ann"), "--tokens", "300",
                          "--max-new-tokens", "3", "--energy-model", "45nm_fp16"])
    assert result["spiking"]["coding"] == "bitplane" and result["energy_model"] == "45nm_fp16"
    assert result["chat_turns"] == 9  # the shipped stac/chat_eval.json: 3 conversations of 3 turns
    assert KEYS <= set(json.loads(capsys.readouterr().out))
