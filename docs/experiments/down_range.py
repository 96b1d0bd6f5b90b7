import torch
from stac.sources import load_base
from stac.data import read_text, token_windows
from stac import thresholds
model, tok = load_base("embedded")
m = model.model
sites = []
for i, L in enumerate(m.layers):
    sites.append((f"{i}.o", L.self_attn.o_proj)); sites.append((f"{i}.down", L.mlp.down_proj))
store = {n: [] for n, _ in sites}
for n, lin in sites:
    lin.register_forward_pre_hook(lambda mod, a, n=n: store[n].append(a[0].detach().reshape(-1, a[0].shape[-1]).float()))
def run(corpus, k):
    for v in store.values(): v.clear()
    with torch.no_grad():
        for ids in token_windows(tok, read_text(corpus), k, 512): model(input_ids=ids[None], use_cache=False)
    return {n: torch.cat(v) for n, v in store.items()}
cal = run("lee", 4096); ev = run("lee_background", 2048)

from stac.coding import SignedDigitCoding
agg = {}
for n, lin in sites:
    W = lin.weight.detach().float(); G = W.T @ W
    zc, ze = cal[n], ev[n]
    norms = G.diagonal().sqrt(); mx = zc.abs().amax(0)
    den = ((ze @ G) * ze).sum().item()
    base_T = 12 if "down" in n else 10
    for dT, f in ((0, 1), (1, 2), (2, 4), (0, 1.25), (1, 2.5)):
        T = base_T + dT; ml = 2**T - 1; m = 5 * f
        th = thresholds.weighted(thresholds.calibrated(mx, m, 1e-4), norms, 0.5, m)
        unit = th / ml
        lv = torch.round((ze / unit).clamp(-ml, ml)); e = ze - lv * unit
        err = ((e @ G) * e).sum().item() / den
        sp = SignedDigitCoding(T).spike_count(lv).float().mean().item()
        key = (n.split(".")[1], dT, f)
        a = agg.setdefault(key, [0, 0, 0]); a[0] += err; a[1] += sp; a[2] += 1
for k, (e, sp, c) in sorted(agg.items()):
    print(k, f"mean rel err {e/c:.3e} spikes/neuron {sp/c:.3f}")
