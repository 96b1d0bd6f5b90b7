"""Offline: per-step firing thresholds for the default schedule (4 steps per octave, top 3 octaves coarse).

Starting from k_t = ceil(0.93 w_t), coordinate descent over every step's integer threshold in [w_t / 2, w_t],
keeping every level exactly representable, minimising fan-out-weighted spikes on the histogram of the
default's levels that dense_schedule.py saves in out/level_hist.pt (run that first).

Usage: python docs/experiments/dense_thresholds.py
"""
import torch, math
from stac.neurons import step_weights_bitplane
d = torch.load("out/level_hist.pt"); hist, cost = d["hist"], d["cost"]
def spikes(bits, w, k):
    L = torch.arange(2 ** bits); r = L.clone(); n = torch.zeros_like(r)
    for x, kk in zip(w, k):
        s = (r >= kk).long() - (r <= -kk).long(); r -= s * x; n += s.abs()
    return n, bool((r == 0).all())
tot0 = tot1 = 0.0
for bits, h in hist.items():
    w = step_weights_bitplane(bits, 4, 3)
    k = [math.ceil(0.93 * x) for x in w]
    n, ok = spikes(bits, w, k); base = float((n.double() * h).sum()); assert ok
    best = base
    for sweep in range(2):
        for t in range(len(w)):
            for cand in range(max(1, (w[t] + 1) // 2), w[t] + 1):
                k2 = list(k); k2[t] = cand
                n2, ok2 = spikes(bits, w, k2)
                if ok2:
                    v = float((n2.double() * h).sum())
                    if v < best - 1e-6: best, k = v, k2
    print(bits, f"{base/1e6:.1f}M -> {best/1e6:.1f}M ({best/base:.3f})", flush=True)
    tot0 += base; tot1 += best
print(f"total {tot0/1e6:.1f}M -> {tot1/1e6:.1f}M ({tot1/tot0:.3f})")
