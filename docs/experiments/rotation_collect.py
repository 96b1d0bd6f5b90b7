import torch, time
from stac.sources import load_base
from stac.data import read_text, token_windows
torch.manual_seed(0)
t0=time.time()
model, tok = load_base("embedded")
m = model.model
sites = []
for i, L in enumerate(m.layers):
    sites.append((f"{i}.qkv", L.input_layernorm, torch.cat([L.self_attn.q_proj.weight, L.self_attn.k_proj.weight, L.self_attn.v_proj.weight])))
    sites.append((f"{i}.gate_up", L.post_attention_layernorm, torch.cat([L.mlp.gate_proj.weight, L.mlp.up_proj.weight])))
sites.append(("head", m.norm, model.lm_head.weight))
store = {name: [] for name, _, _ in sites}
hs = []
for name, norm, W in sites:
    def hook(mod, args, name=name):
        store[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
    hs.append(norm.register_forward_pre_hook(hook))
def run(corpus, n):
    for k in store: store[k].clear()
    with torch.no_grad():
        for ids in token_windows(tok, read_text(corpus), n, 512):
            model(input_ids=ids[None], use_cache=False)
    out = {}
    for name, norm, W in sites:
        h = torch.cat(store[name])
        out[name] = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return out
cal = run("lee", 4096)
ev = run("lee_background", 2048)
data = {"cal": cal, "ev": ev,
        "gamma": {name: norm.weight.detach().float().clone() for name, norm, W in sites},
        "gram": {name: (W.detach().float() * norm.weight.detach().float()).T @ (W.detach().float() * norm.weight.detach().float()) for name, norm, W in sites},
        "fanout": {name: W.shape[0] for name, _, W in sites}}
torch.save(data, "out/acts.pt")
print("done", time.time()-t0)
