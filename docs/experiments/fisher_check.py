"""Check the Fisher-diagonal KL prediction on the real model, one encoder group at a time.

For each group (and all groups together), the ANN is run with (a) Gaussian noise of variance step^2/12 and
(b) the default config's actual rounding (x -> unit * levels) at that group's encoder inputs only, and the
KL to the clean ANN is measured on NEVAL tokens of lee_background; the prediction is 1/2 sum F_c step_c^2/12
(capped by the mean square) with F from stac.sensitivity on the calibration text.
Usage: python docs/experiments/fisher_check.py   (env: NEVAL=1024)
"""
import os
import torch
import stac
from stac import thresholds
from stac.architectures import architecture_for, blocks_of, encoder_name, group_consumers, head_encoder_name
from stac.data import read_text, token_windows
from stac.frontier import calibrate, convert_calibrated
from stac.sensitivity import fisher_diagonal

torch.set_num_threads(2)
NEVAL = int(os.environ.get("NEVAL", 1024))
ann, tok = stac.load_base("embedded")
arch = architecture_for("llama")
cal = stac.default_calibration(tok)
stats = calibrate(ann, cal)
s = fisher_diagonal(ann, arch, cal)
snn = convert_calibrated(ann, stac.SpikingConfig(), stats)
enc = {n.removeprefix("model."): e for n, e in snn.encoders.items()}
sites = {encoder_name(arch, i, g): group_consumers(b, g)[0] for i, b in enumerate(blocks_of(ann, arch)) for g in arch.groups}
sites[head_encoder_name(arch)] = ann.lm_head
evals = token_windows(tok, read_text("lee_background"), NEVAL, 512)
with torch.no_grad():
    clean = [torch.log_softmax(ann(input_ids=ids[None]).logits[0].double(), -1) for ids in evals]


def run(keys, mode):
    g = torch.Generator().manual_seed(0)
    hs = []
    for k in keys:
        e = enc[k]
        unit = e.coding.unit(e.threshold.float())
        def hook(m, a, e=e, unit=unit):
            x = a[0]
            if mode == "noise":
                return (x + torch.randn(x.shape, generator=g) * unit / 12 ** 0.5,)
            lv = (x / unit).clamp(-e.coding.max_level, e.coding.max_level).round()
            return (lv * unit,)
        hs.append(sites[k].register_forward_pre_hook(hook))
    kls = []
    with torch.no_grad():
        for ids, p in zip(evals, clean):
            q = torch.log_softmax(ann(input_ids=ids[None]).logits[0].double(), -1)
            kls.append((p.exp() * (p - q)).sum(-1))
    for h in hs:
        h.remove()
    return float(torch.cat(kls).mean())


groups = {g: [k for k in enc if k.endswith(g)] for g in ("encoder_qkv", "encoder_o", "encoder_gate_up", "encoder_down", "encoder_head")}
groups["massive (down 11, 28)"] = ["model.layers.11.mlp.encoder_down", "model.layers.28.mlp.encoder_down"]
groups["all"] = list(enc)
for name, keys in groups.items():
    pred = sum(thresholds.predicted_kl(s.fisher[k], s.mean_square[k], enc[k].coding.unit(enc[k].threshold.float())) for k in keys)
    print(f"{name:24s} predicted {pred:.2e}  noise {run(keys, 'noise'):.2e}  rounding {run(keys, 'round'):.2e}", flush=True)
