"""Offline, ANN only: zero SiLU(gate) values below a per-layer quantile of their magnitude on the
calibration text (lee), as contextual-sparsity methods (CATS) do to skip the matching up_proj rows, and
measure KL, top-1 agreement and PPL ratio against the unchanged ANN on 1,024 tokens of lee_background.

Usage: python docs/experiments/mlp_gate_sparsity.py
"""
import torch, stac
from stac.data import read_text, token_windows
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
mlps = [b.mlp for b in ann.model.layers]
# calibration: |SiLU(gate)| quantiles per layer on lee (calibration text)
cal = token_windows(tok, read_text("lee"), 1024, 512)
vals = {i: [] for i in range(len(mlps))}
hs = []
for i, m in enumerate(mlps):
    hs.append(m.act_fn.register_forward_hook(lambda mod, a, out, i=i: vals[i].append(out.detach().abs().flatten()[::7])))
with torch.no_grad():
    for ids in cal: ann(input_ids=ids.reshape(1, -1), use_cache=False)
for h in hs: h.remove()
vals = {i: torch.cat(v) for i, v in vals.items()}
ev = token_windows(tok, read_text("lee_background"), 1024, 512)
with torch.no_grad():
    ref = [ann(input_ids=ids.reshape(1, -1), use_cache=False).logits[0].log_softmax(-1) for ids in ev]
state = {"tau": None, "zeroed": 0, "total": 0}
def gate_hook(mod, a, out, i):
    t = state["tau"][i]
    mask = out.abs() < t
    state["zeroed"] += int(mask.sum()); state["total"] += mask.numel()
    return out.masked_fill(mask, 0.0)
for i, m in enumerate(mlps):
    m.act_fn.register_forward_hook(lambda mod, a, out, i=i: gate_hook(mod, a, out, i))
for q in (0.05, 0.1, 0.2, 0.3, 0.4):
    state.update(tau={i: torch.quantile(v.float()[:2_000_000], q) for i, v in vals.items()}, zeroed=0, total=0)
    kl = agree = n = 0; nll_a = nll_s = 0.0
    with torch.no_grad():
        for ids, r in zip(ev, ref):
            lp = ann(input_ids=ids.reshape(1, -1), use_cache=False).logits[0].log_softmax(-1)
            kl += float((r.exp() * (r - lp)).sum(-1)[:-1].sum()); agree += int((r.argmax(-1) == lp.argmax(-1))[:-1].sum())
            tgt = ids[1:]; nll_a += float(-r[:-1].gather(1, tgt[:, None]).sum()); nll_s += float(-lp[:-1].gather(1, tgt[:, None]).sum())
            n += len(tgt)
    import math
    print(f"q={q}: sparsity {state['zeroed']/state['total']:.3f} KL {kl/n:.5f} top1 {agree/n:.4f} ppl ratio {math.exp((nll_s-nll_a)/n):.4f}", flush=True)
