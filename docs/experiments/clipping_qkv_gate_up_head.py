import torch
from stac import thresholds
d = torch.load("out/acts.pt")
tot = {}
for n in d["cal"]:
    zc, ze, G = d["cal"][n], d["ev"][n], d["gram"][n]
    norms = G.diagonal().sqrt(); mx = zc.abs().amax(0)
    den = ((ze @ G) * ze).sum().item()
    T = 9 if "gate_up" in n else 10
    ml = 2**T - 1
    th = thresholds.weighted(thresholds.calibrated(mx, 5, 1e-4), norms, 0.5, 5)
    unit = th / ml
    u = ze / unit
    r = []
    for clip in (True, False):
        lv = torch.round(u.clamp(-ml, ml) if clip else u)
        e = ze - lv * unit
        r.append(((e @ G) * e).sum().item() / den)
    floor = (th <= mx * 1.0001).float().mean().item()
    if n.endswith(("0.qkv", "0.gate_up", "head")) or r[0] > 1.3 * r[1]:
        print(n, f"floor {floor:.3f} err clip {r[0]:.2e} noclip {r[1]:.2e}")
