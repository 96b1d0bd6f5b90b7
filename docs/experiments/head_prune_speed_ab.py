"""Ad hoc: closed-form decode speed with the lm_head's early-stopping readout (stac.readout), interleaved
A/B against the ANN and the default on one calibration: 3 rounds of 64 decoded tokens after 256 tokens of
lee_background; prints tokens per second and the median ratio to the ANN.

Usage: python docs/experiments/head_prune_speed_ab.py
"""
import statistics

import torch

import stac
from stac.benchmark import decode_tokens_per_second
from stac.calibration import default_calibration
from stac.data import read_text
from stac.frontier import calibrate, convert_calibrated

torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
base = stac.SpikingConfig()
models = {"ann": ann}
for name, prune in (("snn", ()), ("snn+prune6.5@10", ((6.5, 10.0),)),
                    ("snn+prune5.4@16/6.75@10", ((5.4, 16.0), (6.75, 10.0)))):
    models[name] = convert_calibrated(ann, base.replace(head_prune=prune), stats)
ids = tok(read_text("lee_background"), return_tensors="pt")["input_ids"][:, :256]
rates = {k: [] for k in models}
for _ in range(3):
    for k, m in models.items():
        rates[k].append(decode_tokens_per_second(m, ids, 64))
print({k: [round(x, 1) for x in v] for k, v in rates.items()})
print({k: round(statistics.median(x / y for x, y in zip(v, rates["ann"])), 3) for k, v in rates.items() if k != "ann"})
