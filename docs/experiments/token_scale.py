"""Per-token adaptive steps for the o_proj and down_proj inputs (not normalised, so their scale varies by token).

The default config, with the encoders of the inputs matching GROUPS seeing x / s_t and the synapses'
output multiplied by s_t (the same as scaling every threshold of that token by s_t), where
s_t = (rms(x_t) / mean calibration rms)^beta, at least FLOOR. beta = 0 is the default. The rms and the
rescale (a few ops per token and output) are not counted. Rows are measured like the frontier and
appended to $LOG (out/token_scale.jsonl).

Usage: python docs/experiments/token_scale.py BETA [BETA ...]   (env: GROUPS=o,down FLOOR=0.25 NTOK=2048)
"""
import json
import os
import sys

import torch

import stac
from stac.architectures import architecture_for, blocks_of, encoder_name, group_consumers
from stac.calibration import default_calibration
from stac.data import read_text
from stac.energy import measure_decode_step
from stac.frontier import calibrate, convert_calibrated, measure
from stac.layers import SpikingLinear

torch.set_num_threads(2)
GROUPS = os.environ.get("GROUPS", "o,down").split(",")
FLOOR = float(os.environ.get("FLOOR", 0.25))
NTOK = int(os.environ.get("NTOK", 2048))
LOG = os.environ.get("LOG", "out/token_scale.jsonl")

ann, tok = stac.load_base("embedded")
arch = architecture_for("llama")
calib = default_calibration(tok)
stats = calibrate(ann, calib)
groups = [g for g in arch.groups if g.name.removeprefix("encoder_") in GROUPS]

# mean per-token rms of each scaled encoder's input on the calibration text
rms_sum, count, handles = {}, {}, []
for i, block in enumerate(blocks_of(ann, arch)):
    for g in groups:
        key = encoder_name(arch, i, g)

        def hook(m, a, key=key):
            r = a[0].detach().float().pow(2).mean(-1).sqrt().reshape(-1)
            rms_sum[key] = rms_sum.get(key, 0.0) + float(r.sum())
            count[key] = count.get(key, 0) + r.numel()
        handles.append(group_consumers(block, g)[0].register_forward_pre_hook(hook))
with torch.no_grad():
    for ids in calib:
        ann(input_ids=ids.reshape(1, -1), use_cache=False)
for h in handles:
    h.remove()
rbar = {k: rms_sum[k] / count[k] for k in rms_sum}

text = read_text("lee_background")
energy_ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :257]
ann_step = measure_decode_step(ann, energy_ids, 256, "45nm_fp32")

for beta in map(float, sys.argv[1:]):
    snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
    base = snn.model  # the spiking copy of the ANN
    for i, block in enumerate(blocks_of(base, arch)):
        for g in groups:
            layer = group_consumers(block, g)[0]
            assert isinstance(layer, SpikingLinear)
            r0 = rbar[encoder_name(arch, i, g)]

            def forward(x, layer=layer, r0=r0, orig=layer.forward):
                s = (x.float().pow(2).mean(-1, keepdim=True).sqrt() / r0).pow(beta).clamp_min(FLOOR).to(x.dtype)
                return orig(x / s) * s
            layer.forward = forward
    row = {"name": f"default+tokenscale-{'+'.join(GROUPS)}-b{beta:g}-f{FLOOR:g}", "beta": beta, "n_tokens": NTOK,
           **measure(ann, snn, tok, ann_step, energy_ids, "lee_background", NTOK, 256)}
    with open(LOG, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(row["name"], "ppl %.4f" % row["ppl_ratio"], "top1 %.4f" % row["top1_agreement"], "KL %.5f" % row["kl"],
          "ratio %.3f" % row["energy_ratio"], "synops %.1fM" % (row["synops_per_token"] / 1e6), flush=True)
