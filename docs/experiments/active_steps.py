"""Offline: how many accumulator (Horner) steps an event-driven synapse would skip if a step in which no
input neuron of a layer fired were folded into the next step's ratio. The default SNN's thresholds on
the ANN's encoder inputs, positions 256-511 of one 512-token window of lee_background; prints the
accumulator steps per token (M) with every step, with active steps only, and the energy saved at 4.6 pJ.

Usage: python docs/experiments/active_steps.py
"""
import os, torch, stac
from stac.architectures import architecture_for, blocks_of, encoder_name, group_consumers, head_encoder_name, synapse_weights
from stac.calibration import default_calibration
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated
from stac.neurons import bitplane_digits
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
stats = calibrate(ann, default_calibration(tok))
snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
enc_by_key = {name.removeprefix("model."): enc for name, enc in snn.encoders.items()}
fan = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}
acts, handles = {}, []
def pre(key):
    def hook(module, args):
        acts.setdefault(key, []).append(args[0].detach().float().reshape(-1, args[0].shape[-1]))
    return hook
for i, block in enumerate(blocks_of(ann, arch)):
    for group in arch.groups:
        handles.append(group_consumers(block, group)[0].register_forward_pre_hook(pre(encoder_name(arch, i, group))))
handles.append(group_consumers(ann, arch.head)[0].register_forward_pre_hook(pre(head_encoder_name(arch))))
ids = token_windows(tok, read_text("lee_background"), 512, 512)[0]
with torch.no_grad(): ann(input_ids=ids.reshape(1,-1), use_cache=False)
tot = dict(full=0., active=0., first=0., spikes_syn=0.)
grp = {}
for k, xs in acts.items():
    x = torch.cat(xs)[256:]  # positions after 256 of context
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
