"""Offline: energy of denser spike weights against powers of two on randomly initialised one-block models
of several widths (the trade-off tests/test_energy.py checks in direction only).

For each width: convert with steps_per_octave 1 and with the default schedule (stac.SpikingConfig(): 8 steps
per octave below the top 4 octaves, the top 6 at the MLP output projection's input), run 32 tokens, and
print the meter's energy and spikes and the ratio dense / binary.

Usage: python docs/experiments/width_tradeoff.py   (from the repository root)
"""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import stac  # noqa: E402
from stac.energy import EnergyMeter  # noqa: E402
from tests.conftest import VOCAB, tiny_calibration  # noqa: E402

for kind, width in [("gpt2", 64), ("llama", 256), ("llama", 576), ("gpt2", 768)]:
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=width, n_layer=1, n_head=4, n_positions=512)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=int(width * 8 / 3),
                          num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512)
    ann = AutoModelForCausalLM.from_config(cfg).eval()
    ids = tiny_calibration(seed=5, n=1, length=32)[0][None]
    reports = {}
    for octave in (1, None):
        snn = stac.convert(ann, stac.SpikingConfig(steps_per_octave=octave), calibration=tiny_calibration())
        with EnergyMeter(snn) as meter, torch.no_grad():
            snn(input_ids=ids, use_cache=False)
        reports[octave] = meter.report()
    b, d = reports[1], reports[None]
    print(f"{kind} width {width}: powers of two {b.energy_j * 1e6:.2f} uJ, {b.spikes} spikes; default schedule "
          f"{d.energy_j * 1e6:.2f} uJ, {d.spikes} spikes; energy ratio dense/binary {d.energy_j / b.energy_j:.3f}")
