"""Prototype: thresholds from the output's sensitivity (Fisher diagonal) instead of the per-group T/margin.

1. One forward+backward pass of the ANN over the calibration text, with next tokens sampled from the
   ANN's own distribution, gives F[e][c] = mean over positions of (d log p(y) / d x_c)^2 at every
   encoder's input (the diagonal of the Fisher of the output distribution w.r.t. that activation).
2. Rounding with step D_c adds noise D_c^2 / 12 per value, so the KL to the ANN is predicted as
   1/2 * sum_e sum_c F[e][c] * D_c^2 / 12 per position. Spikes per value fall by about 1/3 per doubling of
   D_c, each spike costing the channel's fan-out, so the cheapest steps for a given KL are
   D_c = k * sqrt(fanout_e / F[e][c]) with one k for the whole model.
3. Thresholds: D_c * (2^T - 1), never below FLOOR x the calibration maximum (clipping), at T = TSTEPS.

Rows are measured like the frontier (stac.frontier.measure) and appended to $LOG (out/fisher.jsonl).
Usage: python docs/experiments/fisher_alloc.py K [K ...]   (env: FLOOR=4 TSTEPS=12 NTOK=2048)
"""
import json
import os
import sys

import torch

import stac
from stac.architectures import (architecture_for, blocks_of, encoder_name, group_consumers,
                                head_encoder_name, synapse_weights)
from stac.calibration import default_calibration
from stac.energy import measure_decode_step
from stac.frontier import calibrate, convert_calibrated, measure
from stac.data import read_text

torch.set_num_threads(2)
FLOOR = float(os.environ.get("FLOOR", 4))
TSTEPS = int(os.environ.get("TSTEPS", 12))
NTOK = int(os.environ.get("NTOK", 2048))
LOG = os.environ.get("LOG", "out/fisher.jsonl")
CACHE = "out/fisher_diag.pt"

ann, tok = stac.load_base("embedded")
arch = architecture_for(ann.config.model_type)
calib = default_calibration(tok)


def fisher_diag():
    if os.path.exists(CACHE):
        return torch.load(CACHE)
    sums, count = {}, [0]
    handles = []

    def pre(key):
        def hook(module, args):
            x = args[0]
            if x.requires_grad:
                def g(grad):
                    v = grad.detach().float().pow(2).reshape(-1, grad.shape[-1]).sum(0)
                    sums[key] = sums.get(key, 0) + v
                x.register_hook(g)
        return hook

    for i, block in enumerate(blocks_of(ann, arch)):
        for group in arch.groups:
            handles.append(group_consumers(block, group)[0].register_forward_pre_hook(
                pre(encoder_name(arch, i, group))))
    handles.append(group_consumers(ann, arch.head)[0].register_forward_pre_hook(pre(head_encoder_name(arch))))
    emb = ann.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda m, a, out: out.requires_grad_()))
    ann.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    for ids in calib:
        ids = ids.reshape(1, -1)
        logits = ann(input_ids=ids, use_cache=False).logits.float()[0]
        logp = torch.log_softmax(logits, -1)
        y = torch.multinomial(logp.detach().exp(), 1, generator=gen)[:, 0]
        logp.gather(1, y[:, None]).sum().backward()
        count[0] += ids.numel()
    for h in handles:
        h.remove()
    out = {k: v / count[0] for k, v in sums.items()}
    torch.save(out, CACHE)
    return out


F = fisher_diag()
stats = calibrate(ann, calib)
text = read_text("lee_background")
energy_ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :257]
ann_step = measure_decode_step(ann, energy_ids, 256, "45nm_fp32")

base = stac.SpikingConfig(layer_overrides=(), timesteps=TSTEPS, threshold_weighting=0.0)
snn = convert_calibrated(ann, base, stats)
fanout = {enc: sum(w.shape[0] for w in ws) for enc, ws in synapse_weights(snn).items()}
levels = 2 ** TSTEPS - 1

default = convert_calibrated(ann, stac.SpikingConfig(), stats)
pred_default = 0.0
for name, enc in default.encoders.items():
    key = name.removeprefix("model.")
    unit = enc.coding.unit(enc.threshold.float())
    pred_default += 0.5 * float((F[key] * unit ** 2 / 12).sum())
print("default config: predicted KL %.5f" % pred_default, flush=True)
del default

for k in map(float, sys.argv[1:]):
    predicted = 0.0
    floored = 0
    for name, enc in snn.encoders.items():
        key = name.removeprefix("model.")
        f = F[key].clamp_min(1e-30)
        step = k * torch.sqrt(fanout[enc] / f)
        theta = torch.maximum(step * levels, FLOOR * stats[key].float()).clamp_min(1e-4)
        floored += int((step * levels < FLOOR * stats[key].float()).sum())
        enc.threshold.copy_(theta)
        predicted += 0.5 * float((f * (theta / levels) ** 2 / 12).sum())
    row = {"name": f"fisher-k{k:g}-T{TSTEPS}-floor{FLOOR:g}", "k": k, "predicted_kl": predicted,
           "floored_channels": floored, "n_tokens": NTOK,
           **measure(ann, snn, tok, ann_step, energy_ids, "lee_background", NTOK, 256)}
    with open(LOG, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(row["name"], "pred KL %.4f" % predicted, "floored", floored, "ppl %.4f" % row["ppl_ratio"],
          "top1 %.4f" % row["top1_agreement"], "KL %.4f" % row["kl"], "ratio %.3f" % row["energy_ratio"],
          "synops %.1fM" % (row["synops_per_token"] / 1e6), flush=True)
