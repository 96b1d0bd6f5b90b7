"""Offline: the cheapest spike-weight schedule (steps per octave m, coarse top octaves) for each encoder
group, at the default's levels.

Every schedule codes every level exactly (stac.neurons.step_weights_bitplane), so the choice changes
spikes and steps, never the model's outputs. Per group: synaptic ops (spikes x fan-out, E_AC) plus step
ops (one membrane update per neuron and step, one accumulator step per output and step after the first,
E_elementwise), per token, priced like the energy meter. Levels: the default SNN's thresholds applied to
the ANN's encoder inputs on 1,024 tokens of lee_background, per group, as dense_schedule.py saves them in
out/level_hist.pt (run it first).

Usage: python docs/experiments/group_schedule.py
"""
import torch

import stac
from stac.coding import SignedDigitCoding
from stac.neurons import bitplane_spike_count, step_weights_bitplane

E_AC, E_EW = 0.9e-12, 4.6e-12
groups = torch.load("out/level_hist.pt")["groups"]


def cost(g, m, top):
    T = g["T"]
    c = SignedDigitCoding.SPARSITY_BY_STEPS_PER_OCTAVE[m]
    steps = len(step_weights_bitplane(T, m, top))
    synops = float((bitplane_spike_count(torch.arange(2 ** T), T, c, m, top).double() * g["hist"]).sum())
    step_ops = steps * g["neurons"] + (steps - 1) * g["outputs"]
    return synops * E_AC + step_ops * E_EW, synops, steps


def default_schedule(group):
    """(m, top) of stac.SpikingConfig() for an encoder of ``group`` (a Llama block's or the lm_head's)."""
    owner = "mlp" if group in ("encoder_gate_up", "encoder_down") else "self_attn"
    config = stac.SpikingConfig().for_encoder(group if group == "encoder_head" else f"model.layers.0.{owner}.{group}")
    return config.steps_per_octave, config.coarse_octaves


columns = {"m = 4, top 3": 0.0, "cheapest": 0.0, "m = 8, top 4": 0.0, "the default": 0.0}
print("| group (T) | " + " | ".join(columns) + " |")
for name, g in groups.items():
    rows = sorted(cost(g, m, top) + (m, top) for m in range(1, 9) for top in ([0] if m == 1 else range(g["T"])))
    best = rows[0]
    m, top = default_schedule(name)
    picks = {"m = 4, top 3": cost(g, 4, 3)[0], "cheapest": best[0], "m = 8, top 4": cost(g, 8, 4)[0],
             "the default": cost(g, m, top)[0]}
    for k, v in picks.items():
        columns[k] += v
    print(f"| {name} ({g['T']}) | {picks['m = 4, top 3'] * 1e6:.2f} | m = {best[3]}, top {best[4]}: {best[0] * 1e6:.2f} "
          f"| {picks['m = 8, top 4'] * 1e6:.2f} | {picks['the default'] * 1e6:.2f} (m = {m}, top {top}) |")
print("| all | " + " | ".join(f"{v * 1e6:.1f}" for v in columns.values()) + " |")
