"""Offline: how many accumulator (Horner) steps an event-driven synapse would skip if a step in which no
input neuron of a layer fired were folded into the next step's ratio. The default SNN's thresholds on
the ANN's encoder inputs, positions 256-511 of one 512-token window of lee_background; prints the
accumulator steps per token (M) with every step, with active steps only, and the energy saved at 4.6 pJ.

Usage: python docs/experiments/active_steps.py
"""
import torch
from _setup import collect, default_pair
from stac.data import read_text, token_windows
from stac.neurons import bitplane_digits
torch.set_num_threads(2)
ann, tok, arch, snn, enc_by_key, fan = default_pair()
acts, _ = collect(ann, arch, token_windows(tok, read_text("lee_background"), 512, 512)[:1])
tot = dict(full=0., active=0., first=0., spikes_syn=0.)
grp = {}
for k, xs in acts.items():
    x = xs[256:]  # positions after 256 of context
    enc = enc_by_key[k]; c = enc.coding
    unit = c.unit(enc.threshold.float())
    L = (x / unit).clamp(-c.max_level, c.max_level).round()
    d = bitplane_digits(L, c.timesteps, c.sparsity, c.steps_per_octave, c.coarse_octaves)  # [S, P, D]
    act = (d != 0).any(-1)  # [S, P]
    S = d.shape[0]
    na = act.sum(0).float()
    first = torch.where(act.any(0), act.float().argmax(0), torch.full_like(na, S - 1).long())
    f = fan[enc]
    full = (S - 1) * f; a = (na - 1).clamp(min=0).mean() * f; fi = (S - 1 - first).float().mean() * f
    g = k.rsplit(".", 1)[-1]
    gg = grp.setdefault(g, dict(full=0., active=0., first=0., S=S, na=[]))
    gg["full"] += full; gg["active"] += float(a); gg["first"] += float(fi); gg["na"].append(float(na.mean()))
    tot["full"] += full; tot["active"] += float(a); tot["first"] += float(fi)
for g, v in grp.items():
    print(g, "steps", v["S"], "mean active", round(sum(v["na"]) / len(v["na"]), 1), {n: round(v[n] / 1e6, 3) for n in ("full", "active", "first")})
print({n: round(v / 1e6, 3) for n, v in tot.items()}, "uJ saved (active):", (tot["full"] - tot["active"]) * 4.6e-6)
