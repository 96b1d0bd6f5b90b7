import torch, stac, statistics
from stac.calibration import default_calibration
from stac.frontier import calibrate, convert_calibrated
from stac.benchmark import decode_tokens_per_second
from stac.data import read_text
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
base = stac.SpikingConfig()
a = convert_calibrated(ann, base, stats)
b = convert_calibrated(ann, base.replace(spiking_attention=True), stats)
ids = tok(read_text("lee_background"), return_tensors="pt")["input_ids"][:, :256]
r = {"ann": [], "snn": [], "snn+attn": []}
for _ in range(3):
    for k, m in (("ann", ann), ("snn", a), ("snn+attn", b)):
        r[k].append(decode_tokens_per_second(m, ids, 64))
print({k: [round(x, 1) for x in v] for k, v in r.items()})
print("snn/ann", round(statistics.median(x/y for x, y in zip(r["snn"], r["ann"])), 3),
      "snn+attn/ann", round(statistics.median(x/y for x, y in zip(r["snn+attn"], r["ann"])), 3))
