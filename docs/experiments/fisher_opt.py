"""Prototype 2: per-channel steps chosen by measured spike and error curves, weighted by the Fisher diagonal.

For every encoder channel c and a grid of steps D (margin >= FLOOR at T = TSTEPS), calibration activations
give the mean spikes s_c(D) and mean squared error e_c(D) of signed-digit coding (rounding to zero and
clipping included). With F_c from fisher_alloc.py (out/fisher_diag.pt), the predicted KL is
1/2 sum_c F_c e_c(D_c) per position and the synaptic ops sum_c fanout_c s_c(D_c). For a multiplier lam,
each channel independently takes argmin_D fanout_c s_c(D) + lam F_c e_c(D): the cheapest synops for the KL.
The default config's thresholds are priced the same way for comparison. Then chosen lams are measured.

Usage: python docs/experiments/fisher_opt.py [LAM ...]   (env: FLOOR=4 TSTEPS=12 NTOK=2048 NCAL=1024)
"""
import json
import os
import sys

import torch

import stac
from stac.architectures import architecture_for, blocks_of, encoder_name, group_consumers, head_encoder_name
from stac.architectures import synapse_weights
from stac.calibration import default_calibration
from stac.coding import make_coding
from stac.data import read_text
from stac.energy import measure_decode_step
from stac.frontier import calibrate, convert_calibrated, measure

torch.set_num_threads(2)
FLOOR = float(os.environ.get("FLOOR", 4))
TSTEPS = int(os.environ.get("TSTEPS", 12))
NTOK = int(os.environ.get("NTOK", 2048))
NCAL = int(os.environ.get("NCAL", 1024))
LOG = os.environ.get("LOG", "out/fisher.jsonl")
GRID = [FLOOR * 2 ** (g / 4) for g in range(0, 4 * 14)]  # margins at T=TSTEPS: step = margin*max/levels

ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
calib = default_calibration(tok)
F = torch.load("out/fisher_diag.pt")
stats = calibrate(ann, calib)
coding = make_coding("signed_digit", TSTEPS)
levels_max = coding.max_level

# activation samples: the last NCAL tokens of the calibration text (lee windows)
acts = {}
handles = []


def pre(key):
    def hook(module, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        acts.setdefault(key, []).append(x)
    return hook


for i, block in enumerate(blocks_of(ann, arch)):
    for group in arch.groups:
        handles.append(group_consumers(block, group)[0].register_forward_pre_hook(pre(encoder_name(arch, i, group))))
handles.append(group_consumers(ann, arch.head)[0].register_forward_pre_hook(pre(head_encoder_name(arch))))
with torch.no_grad():
    n = 0
    for ids in reversed(calib):
        ann(input_ids=ids.reshape(1, -1), use_cache=False)
        n += ids.numel()
        if n >= NCAL:
            break
for h in handles:
    h.remove()
acts = {k: torch.cat(v)[:NCAL] for k, v in acts.items()}

base = stac.SpikingConfig(layer_overrides=(), timesteps=TSTEPS, threshold_weighting=0.0)
snn = convert_calibrated(ann, base, stats)
fan_by_enc = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}
fanout = {name.removeprefix("model."): fan_by_enc[enc] for name, enc in snn.encoders.items()}


def curves(x, unit, t_coding):
    lv = (x / unit).clamp(-t_coding.max_level, t_coding.max_level).round()
    s = t_coding.spike_count(lv).float().mean(0)
    e = ((lv * unit - x) ** 2).mean(0)
    return s, e


# spike and error curves on the grid, [G, C] per encoder
S, E = {}, {}
for key, x in acts.items():
    mx = stats[key].float().clamp_min(1e-6)
    ss, ee = [], []
    for m in GRID:
        s, e = curves(x, m * mx / levels_max, coding)
        ss.append(s)
        ee.append(e)
    S[key], E[key] = torch.stack(ss), torch.stack(ee)
print("curves done", flush=True)

# the default config priced on the same samples
default = convert_calibrated(ann, stac.SpikingConfig(), stats)
d_syn = d_kl = 0.0
for name, enc in default.encoders.items():
    key = name.removeprefix("model.")
    s, e = curves(acts[key], enc.coding.unit(enc.threshold.float()), enc.coding)
    d_syn += fanout[key] * float(s.sum())
    d_kl += 0.5 * float((F[key] * e).sum())
print(f"default: predicted synops {d_syn / 1e6:.1f}M  KL {d_kl:.5f}", flush=True)
del default


def choose(lam):
    syn = kl = 0.0
    pick = {}
    for key in acts:
        cost = fanout[key] * S[key] + lam * F[key] * E[key]
        j = cost.argmin(0)
        pick[key] = j
        syn += fanout[key] * float(S[key].gather(0, j[None])[0].sum())
        kl += 0.5 * float((F[key] * E[key].gather(0, j[None])[0]).sum())
    return syn, kl, pick


for lam in [10 ** (e / 4) for e in range(16, 45)]:
    syn, kl, _ = choose(lam)
    print(f"lam {lam:.3g}: predicted synops {syn / 1e6:.1f}M  KL {kl:.5f}")

text = read_text("lee_background")
energy_ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :257]
ann_step = measure_decode_step(ann, energy_ids, 256, "45nm_fp32") if sys.argv[1:] else None
grid = torch.tensor(GRID)
for lam in map(float, sys.argv[1:]):
    syn, kl, pick = choose(lam)
    for name, enc in snn.encoders.items():
        key = name.removeprefix("model.")
        enc.threshold.copy_((grid[pick[key]] * stats[key].float()).clamp_min(1e-4))
    row = {"name": f"fisheropt-lam{lam:g}-T{TSTEPS}-floor{FLOOR:g}", "lam": lam, "predicted_kl": kl,
           "predicted_synops": syn, "n_tokens": NTOK,
           **measure(ann, snn, tok, ann_step, energy_ids, "lee_background", NTOK, 256)}
    with open(LOG, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(row["name"], "pred KL %.4f" % kl, "pred synops %.1fM" % (syn / 1e6), "ppl %.4f" % row["ppl_ratio"],
          "top1 %.4f" % row["top1_agreement"], "KL %.4f" % row["kl"], "ratio %.3f" % row["energy_ratio"],
          "synops %.1fM" % (row["synops_per_token"] / 1e6), flush=True)
