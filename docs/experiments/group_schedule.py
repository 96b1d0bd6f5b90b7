"""Offline: the cheapest spike-weight schedule (steps per octave m, coarse top octaves) for each encoder
group, at the default's levels.

Every schedule codes every level exactly (stac.neurons.step_weights_bitplane), so the choice changes
spikes and steps, never the model's outputs. Per group: synaptic ops (spikes x fan-out, E_AC) plus step
ops (one membrane update per neuron and step, one accumulator step per output and step after the first,
E_elementwise), per token, priced like the energy meter. Levels: the default SNN's thresholds applied to
the ANN's encoder inputs on NEVAL tokens of lee_background (as in dense_schedule.py).

Usage: python docs/experiments/group_schedule.py   (env: NEVAL=1024)
"""
import os

import torch

import stac
from stac.architectures import architecture_for, encoder_inputs, synapse_weights
from stac.calibration import default_calibration
from stac.coding import SignedDigitCoding
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated
from stac.neurons import bitplane_spike_count, step_weights_bitplane

torch.set_num_threads(int(os.environ.get("THREADS", 1)))
NEVAL = int(os.environ.get("NEVAL", 1024))
E_AC, E_EW = 0.9e-12, 4.6e-12

ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
stats = calibrate(ann, default_calibration(tok))
snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
enc_by_key = {name.removeprefix("model."): enc for name, enc in snn.encoders.items()}
fan = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}

acts = {}
handles = [layer.register_forward_pre_hook(
    lambda module, args, key=key: acts.setdefault(key, []).append(args[0].detach().float().reshape(-1, args[0].shape[-1])))
    for key, layer in encoder_inputs(ann, arch)]
with torch.no_grad():
    for ids in token_windows(tok, read_text("lee_background"), NEVAL, 512):
        ann(input_ids=ids.reshape(1, -1), use_cache=False)
for h in handles:
    h.remove()

# per group: T, a histogram of |level| weighted by fan-out per token, neurons and outputs per token
groups = {}
for key, xs in acts.items():
    x = torch.cat(xs)
    xs.clear()
    enc = enc_by_key[key]
    co = enc.coding
    level = (x / co.unit(enc.threshold.float())).clamp(-co.max_level, co.max_level).round().abs().to(torch.int64)
    g = groups.setdefault(key.rsplit(".", 1)[-1], {"T": co.timesteps, "hist": 0, "neurons": 0, "outputs": 0})
    assert g["T"] == co.timesteps
    g["hist"] = g["hist"] + torch.bincount(level.flatten(), minlength=2 ** co.timesteps).double() * fan[enc] / x.shape[0]
    g["neurons"] += enc.channels
    g["outputs"] += fan[enc]


def cost(g, m, top):
    T = g["T"]
    c = SignedDigitCoding.SPARSITY_BY_STEPS_PER_OCTAVE[m]
    steps = len(step_weights_bitplane(T, m, top))
    synops = float((bitplane_spike_count(torch.arange(2 ** T), T, c, m, top).double() * g["hist"]).sum())
    step_ops = steps * g["neurons"] + (steps - 1) * g["outputs"]
    return synops * E_AC + step_ops * E_EW, synops, steps


total_default = total_best = 0.0
for name, g in groups.items():
    rows = []
    for m in range(1, 7):
        for top in ([0] if m == 1 else range(0, g["T"])):
            e, syn, steps = cost(g, m, top)
            rows.append((e, m, top, syn, steps))
    rows.sort()
    default = next(r for r in rows if (r[1], r[2]) == (4, 3))
    total_default += default[0]
    total_best += rows[0][0]
    print(f"{name} (T={g['T']}): default m=4 top 3 {default[0] * 1e6:.2f} uJ ({default[4]} steps); best: "
          + "; ".join(f"m={m} top {top} {e * 1e6:.2f} uJ ({steps} steps, {syn / 1e6:.1f} M synops)"
                      for e, m, top, syn, steps in rows[:4]))
print(f"spiking layers: default schedule {total_default * 1e6:.1f} uJ per token, best per group {total_best * 1e6:.1f} uJ "
      f"({(total_best - total_default) * 1e6:+.1f} uJ)")
