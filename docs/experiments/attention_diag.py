import torch, stac
from stac.calibration import default_calibration
from stac.frontier import calibrate, convert_calibrated
from stac.evaluation import compare_on_text
from stac.config import SpikingConfig
torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
base = SpikingConfig()
for name, cfg in [("default", base),
                  ("attn q20 p20", base.replace(spiking_attention=True, layer_overrides=base.layer_overrides + (("*.encoder_q", {"timesteps": 20}), ("*.encoder_p", {"timesteps": 20})))),
                  ("attn q20 p10", base.replace(spiking_attention=True, layer_overrides=base.layer_overrides + (("*.encoder_q", {"timesteps": 20}),))),
                  ("attn q10 p20", base.replace(spiking_attention=True, layer_overrides=base.layer_overrides + (("*.encoder_p", {"timesteps": 20}),)))]:
    snn = convert_calibrated(ann, cfg, stats)
    with torch.no_grad():
        r = compare_on_text(ann, snn, tok, n_tokens=1024)
    print(name, {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}, flush=True)
