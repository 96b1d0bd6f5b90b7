"""Ad hoc: how far greedy decoding with the KV cache moves the logits from a forward over the whole sequence
without it, for the default SNN, the same with a full readout, and with float attention (the previous
default's attention): the largest difference per step among the logits within 5 nats of the best, 12
greedy tokens of the reply to "Hi, who are you?".
Usage: python docs/experiments/cache_noise.py
"""
import torch

import stac
from stac.calibration import default_calibration
from stac.frontier import calibrate, convert_calibrated

torch.set_num_threads(2)
ann, tok = stac.load_base("embedded")
stats = calibrate(ann, default_calibration(tok))
enc = tok.apply_chat_template([{"role": "user", "content": "Hi, who are you?"}], add_generation_prompt=True,
                              return_dict=True, return_tensors="pt")
n = enc["input_ids"].shape[1]
for name, config in (("default", stac.SpikingConfig()), ("full readout", stac.SpikingConfig(head_prune=())),
                     ("float attention", stac.SpikingConfig(spiking_attention=False))):
    snn = convert_calibrated(ann, config, stats)
    out = snn.generate(**enc, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        full = snn(input_ids=out.sequences, use_cache=False).logits[0, n - 1:-1]
    cached = torch.cat(out.logits)
    near = full >= full.amax(-1, keepdim=True) - 5
    print(name, [round(float(d), 3) for d in ((full - cached).abs() * near).max(-1).values])
