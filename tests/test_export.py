"""stac.export and scripts/export.py: the exported SNN forward reloads and gives the eager model's logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stac
from stac import export as stac_export
from tests.conftest import tiny_ann, tiny_calibration

ROOT = Path(__file__).resolve().parent.parent
# Exported graphs run the same float32 ops as eager; on CPU they agree exactly, allow rounding elsewhere.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def snn(request):
    return stac.convert(tiny_ann(request.param), stac.SpikingConfig(), calibration=tiny_calibration())


def eager_logits(snn, ids):
    with torch.no_grad():
        return snn(ids).logits


def test_a_pt2_export_reloads_and_matches_eager_logits_for_any_batch_and_length(snn, tmp_path):
    path = stac_export.export(snn, tmp_path / "snn.pt2", seq_len=8)
    program = torch.export.load(path).module()
    for batch, length in ((1, 1), (1, 8), (3, 5), (2, 40)):
        ids = stac_export.example_input(snn, max(length, 2), batch, seed=length)[:, :length]
        with torch.no_grad():
            torch.testing.assert_close(program(ids), eager_logits(snn, ids), **TOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snn.pt2"], "no temporary file is left"


def test_a_torchscript_trace_reloads_and_matches_eager_logits_for_any_length(snn, tmp_path):
    path = stac_export.export(snn, tmp_path / "snn.pt", seq_len=8)
    traced = torch.jit.load(str(path))
    for length in (1, 8, 40):
        ids = stac_export.example_input(snn, max(length, 2), seed=length)[:, :length]
        with torch.no_grad():
            torch.testing.assert_close(traced(ids), eager_logits(snn, ids), **TOL)


def test_exporting_leaves_the_model_as_it_was(snn, tmp_path):
    snn.set_engine("time_stepped")
    try:
        ids = tiny_calibration(seed=7, n=1, length=9)[0][None]
        before = eager_logits(snn, ids)
        stac_export.export(snn, tmp_path / "snn.pt2", seq_len=4)
        assert snn.config.spiking_config.engine == "time_stepped"
        assert all(enc.engine == "time_stepped" for enc in snn.encoders.values())
        assert not any(enc._forward_hooks for enc in snn.encoders.values())
        assert all(not isinstance(enc.node.v, torch.Tensor) for enc in snn.encoders.values())
        assert torch.equal(eager_logits(snn, ids), before)
        # The closed-form export equals the time-stepped eager model (the two engines are the same sum).
        torch.testing.assert_close(stac_export.load(tmp_path / "snn.pt2")(ids), before, **TOL)
    finally:
        snn.set_engine("closed_form")


def test_the_export_carries_the_stac_config(snn, tmp_path):
    extra = {stac_export.CONFIG_FILE: ""}
    torch.export.load(stac_export.export(snn, tmp_path / "snn.pt2", seq_len=4), extra_files=extra)
    meta = json.loads(extra[stac_export.CONFIG_FILE])
    assert meta["stac_config"]["spiking"] == snn.config.spiking
    assert meta["engine"] == "closed_form" and meta["kv_cache"] is False


@pytest.mark.parametrize("bad", ["snn.onnx", "snn"])
def test_an_unknown_suffix_is_refused_before_any_work(snn, tmp_path, bad):
    with pytest.raises(ValueError, match="suffix"):
        stac_export.export(snn, tmp_path / bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seq_len", [0, 1, 10_000, 2.5])
def test_a_bad_trace_length_is_refused(snn, tmp_path, seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        stac_export.export(snn, tmp_path / "snn.pt2", seq_len=seq_len)


def test_export_refuses_a_model_that_is_not_a_stac_model(tmp_path):
    with pytest.raises(TypeError, match="StacForCausalLM"):
        with stac_export.exportable(tiny_ann("llama")):
            pass


def test_the_export_script_writes_a_file_that_runs_with_torch_alone(tmp_path):
    snn = stac.convert(tiny_ann("gpt2", seed=2), stac.SpikingConfig(timesteps=6), calibration=tiny_calibration())
    snn.save_pretrained(tmp_path / "snn")
    out = tmp_path / "snn.pt2"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), "--model", str(tmp_path / "snn"),
                           "--out", str(out), "--seq-len", "6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["format"] == "torch.export" and report["max_abs_logit_diff"] <= 1e-4
    ids = tiny_calibration(seed=11, n=2, length=13)
    ids = torch.stack(ids)
    torch.save(ids, tmp_path / "ids.pt")
    # A fresh interpreter that imports torch only: the program needs neither stac nor transformers.
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
            "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); "
            "assert not any(k.split('.')[0] in ('stac', 'transformers', 'spikingjelly') for k in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), eager_logits(snn, ids), **TOL)


def test_the_export_script_rejects_bad_arguments(tmp_path):
    script = str(ROOT / "scripts" / "export.py")
    proc = subprocess.run([sys.executable, script, "--model", str(tmp_path), "--out", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "suffix" in proc.stderr
    proc = subprocess.run([sys.executable, script, "--model", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "x.pt2")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "error" in proc.stderr
    assert not (tmp_path / "x.pt2").exists()
