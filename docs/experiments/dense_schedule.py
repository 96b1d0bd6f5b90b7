"""Offline: spikes of the default config's levels under denser step schedules (more steps per octave).

The default codes each level L (an integer, |L| <= 2^B - 1) with signed spikes weighted 2^(B-1), ..., 2, 1:
one step per octave. With m steps per octave the weights are the distinct integers round(2^(i/m)),
i = 0 .. m*(B - top) - 1, and the powers of two above them (the top ``top`` octaves at one step each),
largest first (m = 2, top 0: ..., 16, 11, 8, 6, 4, 3, 2, 1; stac.neurons.step_weights_bitplane), and
the same greedy signed rule
fires +1 if r >= ceil(c*w_t), -1 if r <= -ceil(c*w_t), r -= s*w_t. Every level stays exactly
representable, so the decoded values, and the model's outputs, are the same; only the spikes change.
More steps cost more neuron updates (one per neuron and step) and accumulator steps (one per output and
step after the first), priced at E_elementwise like the meter does.

Levels: the default SNN's thresholds applied to the ANN's encoder inputs on NEVAL tokens of lee_background.

Usage: python docs/experiments/dense_schedule.py   (env: NEVAL=1024)
"""
import math
import os

import torch

import stac
from stac.architectures import architecture_for, encoder_inputs, synapse_weights
from stac.calibration import default_calibration
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated
from stac.neurons import step_weights_bitplane

torch.set_num_threads(int(os.environ.get("THREADS", 1)))
NEVAL = int(os.environ.get("NEVAL", 1024))
E_AC, E_EW = 0.9e-12, 4.6e-12

ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
stats = calibrate(ann, default_calibration(tok))
snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
enc_by_key = {name.removeprefix("model."): enc for name, enc in snn.encoders.items()}
fan = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}


def count(levels, weights, c):
    r = levels.to(torch.int64)
    n = torch.zeros_like(r)
    for w in weights:
        k = math.ceil(c * w)
        s = (r >= k).to(torch.int64) - (r <= -k).to(torch.int64)
        r = r - s * w
        n += s.abs()
    assert bool((r == 0).all())
    return n


acts = {}


def keep(key):
    return lambda module, args: acts.setdefault(key, []).append(args[0].detach().float().reshape(-1, args[0].shape[-1]))


handles = [layer.register_forward_pre_hook(keep(key)) for key, layer in encoder_inputs(ann, arch)]
with torch.no_grad():
    for ids in token_windows(tok, read_text("lee_background"), NEVAL, 512):
        ann(input_ids=ids.reshape(1, -1), use_cache=False)
for h in handles:
    h.remove()

# Spikes depend on |level| alone: per resolution B, a histogram of |level| weighted by fan-out, and the
# neurons and outputs that pay for each step.
# The same per encoder group (its T, histogram, neurons and outputs), for group_schedule.py.
hist, cost, groups = {}, {}, {}
for k, xs in acts.items():
    x = torch.cat(xs)
    enc = enc_by_key[k]
    co = enc.coding
    L = (x / co.unit(enc.threshold.float())).clamp(-co.max_level, co.max_level).round().abs().to(torch.int64)
    bits = co.timesteps
    h = torch.bincount(L.flatten(), minlength=2 ** bits).double() * fan[enc] / x.shape[0]
    hist[bits] = hist.get(bits, 0) + h
    n, o = cost.get(bits, (0, 0))
    cost[bits] = (n + enc.channels, o + fan[enc])
    g = groups.setdefault(k.rsplit(".", 1)[-1], {"T": bits, "hist": 0, "neurons": 0, "outputs": 0})
    g["hist"] = g["hist"] + h
    g["neurons"] += enc.channels
    g["outputs"] += fan[enc]
    xs.clear()
torch.save({"hist": hist, "cost": cost, "groups": groups}, "out/level_hist.pt")


def measure(m, c, top=0):
    syn = steps = 0.0
    for bits, h in hist.items():
        w = step_weights_bitplane(bits, m, top)
        syn += float((count(torch.arange(2 ** bits), w, c).double() * h).sum())
        n, o = cost[bits]
        steps += len(w) * n + (len(w) - 1) * o
    return syn, steps


base_syn, base_steps = measure(1, 0.75)
base = base_syn * E_AC + base_steps * E_EW
variants = [(m, c, 0) for m in (1, 2, 3, 4, 5, 6, 8) for c in (0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)]
variants += [(m, c, top) for m, c in ((3, 0.9), (4, 0.93), (5, 0.93), (6, 0.95)) for top in (1, 2, 3, 4, 5)]
for m, c, top in variants:
    syn, steps = measure(m, c, top)
    e = syn * E_AC + steps * E_EW
    print(f"m={m} c={c:.2f} top={top}: synops/token {syn / 1e6:6.1f}M ({syn / base_syn:.3f}), step ops {steps / 1e6:5.2f}M, "
          f"spiking-layer energy change {(e - base) * 1e6:+6.1f} uJ")
