"""Offline: spikes of the default config's encoders if each neuron coded its level minus a reference.

With the default thresholds (SpikingConfig()), for every encoder channel:
- absolute: spikes of L_t = round(x_t / step) (what the package does);
- centred: spikes of L_t - m_c, m_c the rounded calibration mean level (m_c * step folded into a bias:
  the same decoded values, so the same outputs);
- delta: spikes of L_t - L_{t-1} (the previous token's levels; the synapses' sums carried across tokens);
- best of absolute / centred per channel.
Spikes are weighted by fan-out (synaptic ops). Means come from the calibration text (lee + chats), counts
from NEVAL tokens of lee_background.

Usage: python docs/experiments/offset_codes.py   (env: NEVAL=1024)
"""
import os

import torch

import stac
from _setup import collect
from stac.architectures import architecture_for
from stac.architectures import synapse_weights
from stac.calibration import default_calibration
from stac.coding import make_coding
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated

torch.set_num_threads(int(os.environ.get("THREADS", 1)))
NEVAL = int(os.environ.get("NEVAL", 1024))

ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
calib = default_calibration(tok)
stats = calibrate(ann, calib)
snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
enc_by_key = {name.removeprefix("model."): enc for name, enc in snn.encoders.items()}
fan = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}


def levels(enc, x):
    unit = enc.coding.unit(enc.threshold.float())
    return (x / unit).clamp(-enc.coding.max_level, enc.coding.max_level).round()


# calibration means, in levels, accumulated window by window (memory)
mean_levels = {}
count = 0
for ids in calib:
    acts, n = collect(ann, arch, [ids], None)
    for k, x in acts.items():
        mean_levels[k] = mean_levels.get(k, 0) + levels(enc_by_key[k], x).sum(0)
    count += n
mean_levels = {k: (v / count).round() for k, v in mean_levels.items()}

evals = token_windows(tok, read_text("lee_background"), NEVAL, 512)
acts, _ = collect(ann, arch, evals, None)
tot = {"absolute": 0.0, "centred": 0.0, "delta": 0.0, "best_abs_centred": 0.0}
by_group = {}
for k, x in acts.items():
    enc = enc_by_key[k]
    c = enc.coding
    L = levels(enc, x)
    f = fan[enc]
    a = c.spike_count(L).float().mean(0)
    ce = c.spike_count(L - mean_levels[k]).float().mean(0)
    d = torch.cat([L[:1], L[1:] - L[:-1]])  # window boundaries ignored (2 of 1024)
    de = make_coding(c.name, c.timesteps + 1).spike_count(d).float().mean(0)  # one more step: |d| <= 2 max
    parts = {"absolute": a, "centred": ce, "delta": de, "best_abs_centred": torch.minimum(a, ce)}
    g = k.rsplit(".", 1)[-1]
    for name, v in parts.items():
        tot[name] += f * float(v.sum())
        by_group.setdefault(g, {}).setdefault(name, 0.0)
        by_group[g][name] += f * float(v.sum())
for name, v in tot.items():
    print(f"{name:18s} synops/token {v / 1e6:7.1f}M  ({v / tot['absolute']:.3f})")
for g, parts in by_group.items():
    print(g, {n: round(v / parts["absolute"], 3) for n, v in parts.items()}, f"{parts['absolute'] / 1e6:.1f}M")
