"""Ad hoc: milliseconds per decode step (one token through the model with the KV cache, after 256 tokens of
lee_background), interleaved over 4 rounds of 8 steps: the ANN, the default SNN and the default with one
decision in the lm_head and float attention (the previous default), on one calibration.
Usage: python docs/experiments/decode_step_ab.py [time_stepped]
"""
import statistics
import sys
import time

import torch

import stac
from stac.calibration import default_calibration
from stac.data import read_text
from stac.frontier import calibrate, convert_calibrated

torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
default = stac.SpikingConfig()
models = {"ann": ann, "default": convert_calibrated(ann, default, stats),
          "previous default": convert_calibrated(ann, default.replace(spiking_attention=False,
                                                                      head_prune=((6.5, 10.0),)), stats)}
for name, model in models.items():
    if name != "ann" and len(sys.argv) > 1:
        model.set_engine(sys.argv[1])
ids = tok(read_text("lee_background"), return_tensors="pt")["input_ids"][:, :256]
state = {}
with torch.no_grad():
    for name, model in models.items():
        out = model(input_ids=ids, use_cache=True)
        state[name] = (out.past_key_values, out.logits[:, -1:].argmax(-1))

    def steps(name, n):
        model, (cache, token) = models[name], state[name]
        t = time.perf_counter()
        for _ in range(n):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        state[name] = (cache, token)
        return (time.perf_counter() - t) / n * 1e3

    for name in models:
        steps(name, 3)
    times = {name: [] for name in models}
    for _ in range(4):
        for name in models:
            times[name].append(steps(name, 8))
print({k: round(statistics.median(v), 1) for k, v in times.items()}, "ms per step")
print({k: round(statistics.median(a / b for a, b in zip(times["ann"], v)), 3) for k, v in times.items()}, "speed vs ANN")
