"""The default's per-encoder budget, redistributed within each encoder by the Fisher instead of column norms.

stac.thresholds.weighted moves an encoder's thresholds toward 1 / norms, keeping their geometric mean and
the calibration-max floor. With norms = sqrt(F_c) (stac.sensitivity, per sequence) and alpha = 1 that is
the Fisher-optimal split of the encoder's steps (D_c ~ 1 / sqrt(F_c), one fan-out per encoder); the
default uses column norms with alpha 0.5. The default's T, margins and overrides are kept.

Usage: python docs/experiments/fisher_weighting.py ALPHA [ALPHA ...]   (env: MARGIN=5 NTOK=2048)
"""
import json
import os
import sys

import torch

import stac
from stac import thresholds
from stac.architectures import architecture_for
from stac.calibration import default_calibration
from stac.data import read_text
from stac.energy import measure_decode_step
from stac.frontier import calibrate, convert_calibrated, measure
from stac.sensitivity import fisher_diagonal

torch.set_num_threads(2)
MARGIN = float(os.environ.get("MARGIN", 5))
NTOK = int(os.environ.get("NTOK", 2048))
LOG = os.environ.get("LOG", "out/fisher_weighting.jsonl")

ann, tok = stac.load_base("embedded")
calib = default_calibration(tok)
stats = calibrate(ann, calib)
sens = fisher_diagonal(ann, architecture_for("llama"), calib)
text = read_text("lee_background")
energy_ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0, :257]
ann_step = measure_decode_step(ann, energy_ids, 256, "45nm_fp32")
config = stac.SpikingConfig(threshold_margin=MARGIN, threshold_weighting=0.0)

for alpha in map(float, sys.argv[1:]):
    snn = convert_calibrated(ann, config, stats)
    for name, enc in snn.encoders.items():
        key = name.removeprefix("model.")
        margin = config.for_encoder(key).threshold_margin
        enc.threshold.copy_(thresholds.weighted(enc.threshold, sens.fisher[key].sqrt(), alpha, margin))
    row = {"name": f"default-m{MARGIN:g}+fisherweight{alpha:g}", "alpha": alpha, "n_tokens": NTOK,
           **measure(ann, snn, tok, ann_step, energy_ids, "lee_background", NTOK, 256)}
    with open(LOG, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(row["name"], "ppl %.4f" % row["ppl_ratio"], "top1 %.4f" % row["top1_agreement"], "KL %.5f" % row["kl"],
          "ratio %.3f" % row["energy_ratio"], "synops %.1fM" % (row["synops_per_token"] / 1e6), flush=True)
