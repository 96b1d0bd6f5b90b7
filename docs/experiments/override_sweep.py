import sys, json, os, torch, stac
from stac.frontier import config_name, run_sweep
from stac.calibration import default_calibration
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
base = stac.SpikingConfig()
configs = {}
for spec in sys.argv[1:]:
    extra = tuple((p, s) for p, s in json.loads(spec))
    c = base.replace(layer_overrides=base.layer_overrides + extra)
    configs[config_name(c)] = c
def on_row(r):
    with open(os.environ.get("LOG", "out/adhoc.jsonl"), "a") as f: f.write(json.dumps(r) + "\n")
    print(r["name"], round(r["ppl_ratio"], 4), round(r["top1_agreement"], 4), round(r["kl"], 4), round(r["energy_ratio"], 3), r["synops_per_token"], flush=True)
run_sweep(ann, tok, configs, default_calibration(tok), n_tokens=int(os.environ.get("NTOK", 2048)), context=256, energy_model="45nm_fp32", on_row=on_row)
