"""scripts/convert.py: command line conversion of a local model directory."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

import stac
import stac.frontier
from stac.cli import add_spiking_options, spiking_config
from tests.conftest import tiny_ann

ROOT = Path(__file__).resolve().parent.parent


def tiny_tokenizer():
    vocab = {f"w{i}": i for i in range(95)}
    vocab.update({"[UNK]": 95})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0", eos_token="w2")


def run_convert(tmp_path, *options, out="snn"):
    """scripts/convert.py on a tiny Llama saved with a word-level tokenizer under tmp_path/base."""
    base = tmp_path / "base"
    if not base.exists():
        tiny_ann("llama").save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
    # The default calibration reads gensim's lee.cor through the tokenizer; unknown words map to [UNK].
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--model", str(base), *options,
                           "--out", str(tmp_path / out)], capture_output=True, text=True, timeout=300)


def test_convert_script_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "snn"
    proc = run_convert(tmp_path, "--timesteps", "6")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # 4 per block, q and p per block (spiking attention, the default), and the lm_head's
    assert report["spiking"]["timesteps"] == 6 and report["encoders"] == 8 + 2 * 2 + 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, stac.StacForCausalLM)
    assert model.config.spiking_config.spiking_attention
    assert not bool((model.model.model.layers[0].self_attn.encoder_q.threshold == 1).all())  # calibrated
    assert (out / "tokenizer.json").is_file()


def test_convert_script_keeps_float_attention_on_request(tmp_path):
    out = tmp_path / "snn"
    proc = run_convert(tmp_path, "--no-spiking-attention")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert not report["spiking"]["spiking_attention"] and report["encoders"] == 8 + 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not model.config.spiking_config.spiking_attention
    assert not hasattr(model.model.model.layers[0].self_attn, "encoder_q")


def test_convert_script_sets_thresholds_by_sensitivity_under_a_kl_budget(tmp_path):
    out = tmp_path / "snn"
    proc = run_convert(tmp_path, "--kl-budget", "0.02")
    assert proc.returncode == 0, proc.stderr
    spiking = json.loads(proc.stdout)["spiking"]
    assert (spiking["threshold_rule"], spiking["kl_budget"], spiking["timesteps"], spiking["threshold_margin"],
            spiking["layer_overrides"]) == ("sensitivity", 0.02, 12, 2.0, [])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.spiking_config == stac.SpikingConfig.by_sensitivity(0.02)
    bad = run_convert(tmp_path, "--kl-budget", "-1", out="x")
    assert bad.returncode == 2 and "kl_budget" in bad.stderr and not (tmp_path / "x").exists()


def test_script_options_build_the_default_or_the_sensitivity_config():
    parser = argparse.ArgumentParser()
    add_spiking_options(parser)

    def from_options(*argv):
        return spiking_config(parser.parse_args(list(argv)))

    assert from_options() == stac.SpikingConfig()
    assert from_options("--timesteps", "8", "--margin", "3") == stac.SpikingConfig(timesteps=8, threshold_margin=3.0)
    c = from_options("--kl-budget", "0.002", "--margin", "4", "--spiking-attention")
    assert c == stac.SpikingConfig.by_sensitivity(0.002, threshold_margin=4.0, spiking_attention=True)
    assert (c.threshold_rule, c.timesteps, c.layer_overrides) == ("sensitivity", 12, ())
    assert from_options("--no-spiking-attention") == stac.SpikingConfig(spiking_attention=False)
    assert from_options("--steps-per-octave", "2").steps_per_octave == 2
    assert from_options("--kl-budget", "0.002", "--steps-per-octave", "1").steps_per_octave == 1
    assert from_options("--head-prune", "5.4@16/6.75@10").head_prune == ((5.4, 16.0), (6.75, 10.0))
    assert from_options("--head-prune", "none").head_prune == ()
    preset = "sd-T10-m5+down12+gate_up9+headmx1.6+downtop6+head+oct8top4+prune6.5@10+w0.5"
    assert from_options("--config", preset) == stac.frontier.PRESETS[preset]
    spec = "signed_digit:10:5:down=12,w=0.5,oct=8,top=4,prune=5.4@16/6.75@10"
    assert from_options("--config", spec) == stac.frontier.parse_config(spec)
    for argv, message in ((("--config", spec, "--margin", "3"), "drop --margin"),
                          (("--config", "sd-T1*"), "matches"), (("--head-prune", "6@"), "BITS@MARGIN")):
        with pytest.raises(ValueError, match=message):
            from_options(*argv)


def test_convert_script_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--model", "embedded",
                           "--timesteps", "0", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "timesteps" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--model", "embedded",
                           "--coding", "rate", "--steps-per-octave", "3", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "signed_digit only" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--model", str(tmp_path),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode != 0 and "config.json" in proc.stderr
    assert not (tmp_path / "x").exists()
