import torch, math
from stac.coding import SignedDigitCoding
from stac import thresholds
d = torch.load("out/acts.pt")
n = "head"; zc, ze, G = d["cal"][n], d["ev"][n], d["gram"][n]
norms = G.diagonal().sqrt(); mx = zc.abs().amax(0)
def q(th, T):
    ml = 2**T - 1; unit = th / ml
    lv = torch.round((ze / unit).clamp(-ml, ml)); sp = SignedDigitCoding(T).spike_count(lv).float().mean().item()
    e = ze - lv * unit
    return sp, ((e @ G) * e).sum().item() / ((ze @ G) * ze).sum().item()
th = thresholds.weighted(thresholds.calibrated(mx, 5, 1e-4), norms, 0.5, 5)
print("default", q(th, 10))
for T in (10, 11, 12, 13):
    for m in (5, 8, 10, 16, 20, 32, 40, 64):
        for a in (0.5, 1.0):
            th = thresholds.weighted(thresholds.calibrated(mx, m, 1e-4), norms, a, m)
            sp, e = q(th, T)
            print(T, m, a, round(sp, 3), f"{e:.2e}")
