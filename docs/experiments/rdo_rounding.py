"""Offline: rounding each value to a cheaper nearby level (rate-distortion rounding) against a coarser
uniform step, on the default's level histograms (out/level_hist.pt from dense_schedule.py; the spelling
of 4 steps per octave below the top 3 octaves, the default when this ran).

Per value: uniform step s (error s^2/12 in units of the default step squared) against the level L that
minimises (R - L)^2 + lam * spikes(L) within +-8 levels. Synaptic ops (spikes x fan-out) and mean squared
error, both relative to the default's exact rounding (error 1/12).

Usage: python docs/experiments/rdo_rounding.py
"""
import math, torch
from stac.neurons import step_weights_bitplane, bitplane_spike_count
H = torch.load('out/level_hist.pt'); hist, cost = H['hist'], H['cost']
M, TOP, C = 4, 3, 0.93
def spk(L, bits):
    return bitplane_spike_count(L, bits, C, M, TOP)
def uniform(s):
    syn = err = 0.0
    for bits, h in hist.items():
        R = torch.arange(2 ** bits)
        L = torch.round(R / s).to(torch.int64).clamp(max=2 ** bits - 1)
        e = torch.full_like(R, s * s / 12, dtype=torch.float64)  # a uniform step s on continuous values: s^2 / 12
        syn += float((spk(L, bits).double() * h).sum()); err += float((e * h).sum())
    return syn, err
def rdo(lam, win=8):
    syn = err = 0.0
    for bits, h in hist.items():
        n = 2 ** bits
        R = torch.arange(n)
        cand = (R[:, None] + torch.arange(-win, win + 1)[None]).clamp(0, n - 1)
        sc = spk(cand, bits).double()
        cst = (R[:, None] - cand).double() ** 2 + lam * sc
        j = cst.argmin(1)
        L = cand[torch.arange(n), j]
        e = (R - L).double() ** 2 + 1 / 12
        syn += float((sc[torch.arange(n), j] * h).sum()); err += float((e * h).sum())
    return syn, err
s0, e0 = uniform(1.0)
print("base", s0 / 1e6, e0 / 1e6)
for k in range(0, 9):
    s = 2 ** (k / 8); a, b = uniform(s); print(f"uniform s={s:.3f}: synops {a/s0:.3f} err {b/e0:.2f}")
for lam in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2, 3, 5):
    a, b = rdo(lam); print(f"rdo lam={lam}: synops {a/s0:.3f} err {b/e0:.2f}")
